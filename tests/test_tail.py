"""The coordinator's fused tail (service/core/tail.py): the compiled kernel gives the numpy passes' bits.

Which path ran is invisible in the bits, so the tests watch `tail._kernel`, the module
attribute holding the compiled kernel: a `KernelSpy` records each call before running
the real kernel, or, given none, fails the test (the numpy path was expected).
"""
from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from dptrain.core import tail
from dptrain.core.optim import OptimizerSpec, make_optimizer
from dptrain.core.tail import BLOCK, mean_grad, n_blocks

SIZES = [1, 2, 7, 8, 9, 15, 16, 17, 127, 128, 129, 130, 255, 256, 1000, 4099,
         BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 9, 669_706]
NO_KERNEL = "service/core/_tail.c was not built (no C compiler at install): there is no kernel to compare with numpy"


class KernelSpy:
    """Stands in for a compiled module (`dptrain.core._tail`, `dptrain.engine._kernels`): records
    each call by name, then runs `real`; with no `real`, a call fails the test instead."""

    def __init__(self, real: object | None = None) -> None:
        self.real, self.calls = real, []

    def __getattr__(self, name: str):
        def call(*args):
            self.calls.append(name)
            if self.real is None:
                raise AssertionError(f"the compiled kernel's {name} ran where the numpy path was expected")
            return getattr(self.real, name)(*args)
        return call


@pytest.fixture
def kernel(monkeypatch) -> KernelSpy:
    """The compiled kernel, spied on; skips where it was not built (numpy vs numpy proves nothing)."""
    if not tail.compiled():
        pytest.skip(NO_KERNEL)
    spy = KernelSpy(tail._kernel)
    monkeypatch.setattr(tail, "_kernel", spy)
    return spy


@pytest.fixture
def tripwire(monkeypatch) -> KernelSpy:
    """A kernel that fails the test if called, present whether or not the real one was built."""
    spy = KernelSpy()
    monkeypatch.setattr(tail, "_kernel", spy)
    return spy


def numpy_passes(left, right, count):
    """What the trainer did before the kernel: add, divide, then the optimizer's blocked norm."""
    g = left.copy() if right is None else np.add(left, right)
    np.divide(g, count, out=g)
    sums = np.array([np.add.reduce(np.square(g[a:a + BLOCK], dtype=np.float64)) for a in range(0, g.size, BLOCK)])
    return g, sums


def both(kernel, left, right, count):
    """mean_grad by the kernel, then by the numpy passes (`use_kernel=False`), each checked to have run."""
    out = []
    for use_kernel in (True, False):
        g, sums = np.empty_like(left), np.empty(n_blocks(left.size))
        before = len(kernel.calls)
        mean_grad(left, right, count, g, sums, use_kernel=use_kernel)
        ran = kernel.calls[before:]
        assert ran == (["mean_grad"] if use_kernel else []), f"use_kernel={use_kernel}, n={left.size}: ran {ran}"
        out.append((g, sums))
    return out


def test_the_kernel_is_built_where_a_compiler_is():
    """A silently skipped build would make the other tests here vacuous: fail instead."""
    have_headers = Path(sysconfig.get_paths()["include"], "Python.h").exists()
    if not (shutil.which("cc") or shutil.which("gcc")) or not have_headers:
        pytest.skip("no C compiler or Python headers on this machine")
    assert tail.compiled()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("two", [True, False])
def test_kernel_equals_numpy_passes_bitwise(kernel, dtype, two):
    rng = np.random.default_rng(7)
    for n in SIZES:
        scale = 10.0 ** rng.uniform(-8, 8)
        left = (rng.standard_normal(n) * scale).astype(dtype)
        right = (rng.standard_normal(n) * scale).astype(dtype) if two else None
        count = int(rng.integers(1, 5000))
        want = numpy_passes(left, right, count)
        for g, sums in both(kernel, left, right, count):
            assert g.tobytes() == want[0].tobytes(), n
            assert sums.tobytes() == want[1].tobytes(), n


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_special_values_bitwise(kernel, dtype):
    info = np.finfo(dtype)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, info.tiny, info.tiny / 4, info.max, -info.max,
                         info.eps, 1.0, -1.0], dtype=dtype)
    rng = np.random.default_rng(3)
    left = rng.choice(specials, 999).astype(dtype)
    right = rng.choice(specials, 999).astype(dtype)
    with np.errstate(all="ignore"):  # overflow and inf - inf are the point here
        (g1, s1), (g2, s2) = both(kernel, left, right, 3)
    assert g1.tobytes() == g2.tobytes()
    np.testing.assert_array_equal(s1, s2)  # NaN payloads aside, the same values


def test_out_may_alias_an_input(kernel):
    rng = np.random.default_rng(5)
    left, right = (rng.standard_normal(3000).astype(np.float32) for _ in range(2))
    want = numpy_passes(left, right, 1024)
    sums = np.empty(1)
    mean_grad(left, right, 1024, left, sums)
    assert kernel.calls == ["mean_grad"]
    assert left.tobytes() == want[0].tobytes() and sums.tobytes() == want[1].tobytes()


def test_unsuitable_arguments_take_the_numpy_path(tripwire):
    """Strided views, mixed dtypes or huge counts are computed by numpy, same arithmetic;
    the tripwire kernel proves no call reached the compiled one."""
    rng = np.random.default_rng(9)
    base = rng.standard_normal(2000).astype(np.float32)
    with pytest.raises(AssertionError, match="mean_grad ran"):  # suitable arguments do reach it
        mean_grad(base, None, 10, np.empty_like(base), np.empty(1))
    tripwire.calls.clear()
    left, right = base[::2], base[1::2]  # not contiguous
    g, sums = np.empty(1000, np.float32), np.empty(1)
    mean_grad(left, right, 10, g, sums)
    want = numpy_passes(np.ascontiguousarray(left), np.ascontiguousarray(right), 10)
    assert g.tobytes() == want[0].tobytes() and sums.tobytes() == want[1].tobytes()
    mean_grad(left.astype(np.float64), right, 10, np.empty(1000, np.float64), np.empty(1))  # mixed dtypes
    g = np.empty_like(base)
    mean_grad(base, None, 2**25, g, sums)  # count not exact in float32
    assert g.tobytes() == numpy_passes(base, None, 2**25)[0].tobytes()
    mean_grad(base, None, 10, np.empty_like(base), np.empty(1), use_kernel=False)  # the caller's switch
    params, direction = base.copy(), base[::-1].copy()
    with pytest.raises(AssertionError, match="sub_scaled ran"):  # suitable arguments do reach it
        tail.sub_scaled(params, direction, 0.5, np.empty_like(params))
    tripwire.calls.clear()
    strided = np.empty(2 * direction.size, np.float32)[::2]
    strided[:] = direction
    want = params - np.multiply(direction, 0.5)
    tail.sub_scaled(params, strided, 0.5, np.empty_like(params))  # a strided direction: numpy's two passes
    assert params.tobytes() == want.tobytes()
    assert tripwire.calls == []


def test_optimizer_takes_the_block_sums_with_the_same_result():
    rng = np.random.default_rng(11)
    n = 2 * BLOCK + 77
    left, right, theta0 = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
    spec = OptimizerSpec("momentum", lr=0.1, clip_norm=1.0, weight_decay=0.01)
    results = []
    for fused in (True, False):
        opt, theta = make_optimizer(spec, n), theta0.copy()
        g, sums = np.empty(n, np.float32), np.empty(n_blocks(n))
        mean_grad(left, right, 512, g, sums)
        norm = opt.step(theta, g, 0.1, sums if fused else None)
        results.append((norm, theta.tobytes()))
    assert results[0] == results[1]
    with pytest.raises(ValueError, match="block_sums"):
        make_optimizer(spec, n).step(theta0.copy(), g, 0.1, np.empty(1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sub_scaled_equals_multiply_then_subtract_bitwise(kernel, dtype):
    """The optimizers' last step, params -= direction * lr, as numpy's two passes round it."""
    rng = np.random.default_rng(13)
    info = np.finfo(dtype)
    for n in SIZES[:12] + [BLOCK, 669_706]:
        p, d = (rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 6)).astype(dtype), rng.standard_normal(n).astype(dtype)
        d[::97] = rng.choice(np.array([0.0, -0.0, info.tiny / 4, info.max, np.inf], dtype=dtype), d[::97].size)
        scale = float(rng.uniform(1e-4, 1.0))  # a python float: numpy rounds it to the dtype
        with np.errstate(all="ignore"):
            want = p - np.multiply(d, scale)
            got = p.copy()
            tail.sub_scaled(got, d, scale, np.empty_like(p))
        assert kernel.calls[-1:] == ["sub_scaled"], n
        kernel.calls.clear()
        assert got.tobytes() == want.tobytes(), n
