"""The engine's compiled kernels (workers/engine/_kernels.c) give the numpy passes' bits.

Every op that has a kernel runs twice on the same values: once as built, once with
`kernels.kernel` set to None (its numpy passes). Output, g_in and every parameter gradient
must be equal byte for byte, over geometries drawn by hypothesis (partial blocks, padding,
stride, dilation, groups, overlapping pools) and values with ties, signed zeros, infs and
NaNs. A spy records which kernels ran, so no test here passes without the kernel it is
about; where the kernel was not built (no compiler) they skip, as tests/test_tail.py does.
"""
from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import yaml
from dptrain.engine import Model, conv, kernels
from dptrain.engine.op import Context
from hypothesis import given, settings
from hypothesis import strategies as st

from .test_tail import KernelSpy  # records the kernel calls it passes on (or fails the test)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NO_KERNEL = ("workers/engine/_kernels.c was not built (no C compiler at install) or DPTRAIN_NO_KERNELS=1 turned it "
             "off: nothing to compare with numpy")
SETTINGS = settings(max_examples=30, deadline=None)


@pytest.fixture
def spy(monkeypatch) -> KernelSpy:
    if kernels.kernel is None:
        pytest.skip(NO_KERNEL)
    spy = KernelSpy(kernels.kernel)
    monkeypatch.setattr(kernels, "kernel", spy)
    return spy


def test_the_kernels_are_built_where_a_compiler_is():
    """A silently skipped build would make the other tests here vacuous: fail instead."""
    have_headers = Path(sysconfig.get_paths()["include"], "Python.h").exists()
    if not (shutil.which("cc") or shutil.which("gcc")) or not have_headers:
        pytest.skip("no C compiler or Python headers on this machine")
    import os
    if os.environ.get("DPTRAIN_NO_KERNELS") == "1":
        pytest.skip("DPTRAIN_NO_KERNELS=1 turns them off")
    assert kernels.kernel is not None


def run(spec, X, G, ctx=None, dtype=np.float32):
    """(output, g_x, gradient) of one forward and backward, as bytes."""
    m = Model(spec, dtype=dtype)
    theta = m.init_params(0)
    theta += np.random.default_rng(1).standard_normal(theta.size).astype(theta.dtype) * 0.1
    out = m.forward(theta, X, ctx).copy()
    g_x, grad = m.backward(G, input_grad=m.spec.input.dtype != "int")
    return out.tobytes(), None if g_x is None else g_x.tobytes(), grad.tobytes()


def one_nan(raw: bytes | None) -> bytes | None:
    """float32 bytes with every NaN written as the same NaN (signs of zeros and all else kept)."""
    if raw is None:
        return None
    a = np.frombuffer(raw, np.float32).copy()
    a[np.isnan(a)] = np.float32("nan")
    return a.tobytes()


def same_bits(spy, monkeypatch, spec, X, G, expect, ctx=None, any_nan=False):
    """Run with the kernels, check that each of `expect` ran, run with numpy's passes, compare.

    `any_nan`: where a sum meets two NaNs, which one comes out (a sign bit, a payload) is not
    fixed even within numpy (its compiled reductions may order a commutative add's operands
    either way), so such results compare as NaN; every other bit must be equal."""
    with np.errstate(all="ignore"):  # infs and NaNs are part of the point
        compiled = run(spec, X, G, ctx)
        ran = set(spy.calls)
        assert set(expect) <= ran, f"expected kernels {expect}, ran {sorted(ran)}"
        monkeypatch.setattr(kernels, "kernel", None)
        numpy_passes = run(spec, X, G, ctx)
    for what, a, b in zip(("output", "g_in", "parameter gradients"), compiled, numpy_passes):
        if any_nan:
            a, b = one_nan(a), one_nan(b)
        assert a == b, f"{what} differ between the kernel and numpy's passes"


def values(rng, shape, specials=False):
    """float32 values; with `specials`, a sprinkle of ties, signed zeros, infs and NaNs."""
    a = rng.standard_normal(shape).astype(np.float32)
    if specials:
        pool = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, 1e-40], np.float32)
        where = rng.random(shape) < 0.05
        a[where] = rng.choice(pool, int(where.sum()))
    return a


# --- convolution ------------------------------------------------------------------------------

@st.composite
def conv_cases(draw):
    rank = draw(st.sampled_from([1, 2]))
    groups = draw(st.sampled_from([1, 2]))
    c, out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    k = draw(st.integers(1, 4))
    stride, dil, pad = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(0, 2))
    size = draw(st.integers(dil * (k - 1) + 1, 11))
    shape = [c, size] if rank == 1 else [c, draw(st.integers(dil * (k - 1) + 1, 9)), size]
    layer = {"op": "conv1d" if rank == 1 else "conv2d", "out": out, "kernel": k, "stride": stride,
             "padding": pad, "dilation": dil, "groups": groups, "bias": draw(st.booleans())}
    return shape, layer, draw(st.integers(1, 7)), draw(st.integers(0, 2**31))


@SETTINGS
@given(case=conv_cases(), block_values=st.sampled_from([64, 400, 1 << 17]))
def test_conv_bits(case, block_values):
    """Small BLOCK_VALUES splits the batch into several blocks, the last one partial."""
    shape, layer, batch, seed = case
    with pytest.MonkeyPatch.context() as mp:
        spy = KernelSpy(kernels.kernel) if kernels.kernel is not None else pytest.skip(NO_KERNEL)
        mp.setattr(kernels, "kernel", spy)
        mp.setattr(conv, "BLOCK_VALUES", block_values)
        rng = np.random.default_rng(seed)
        spec = {"input": shape, "layers": [layer]}
        X = values(rng, (batch, *shape))
        G = values(rng, (batch, *Model(spec).output_shape))
        same_bits(spy, mp, spec, X, G, ["im2col", "col2im", "conv_out", "conv_g_rows"])


def test_conv_special_values_bits(spy, monkeypatch):
    rng = np.random.default_rng(3)
    spec = {"input": [3, 9, 9], "layers": ["conv2d 4 3", {"op": "conv2d", "out": 2, "kernel": 2, "stride": 2}]}
    X = values(rng, (5, 3, 9, 9), specials=True)
    G = values(rng, (5, *Model(spec).output_shape), specials=True)
    same_bits(spy, monkeypatch, spec, X, G, ["im2col", "col2im", "conv_out", "conv_g_rows"])


# --- pooling and ReLU -------------------------------------------------------------------------

@SETTINGS
@given(k=st.integers(1, 3), stride=st.integers(1, 3), pad=st.integers(0, 1), hw=st.integers(3, 9),
       ties=st.booleans(), seed=st.integers(0, 2**31))
def test_max_pool_bits(k, stride, pad, hw, ties, seed):
    """Tiling windows (written) and overlapping ones (added in offset order); ties from small integers."""
    if 2 * pad > k:
        pad = 0
    with pytest.MonkeyPatch.context() as mp:
        spy = KernelSpy(kernels.kernel) if kernels.kernel is not None else pytest.skip(NO_KERNEL)
        mp.setattr(kernels, "kernel", spy)
        rng = np.random.default_rng(seed)
        spec = {"input": [2, hw, hw], "layers": [{"op": "max_pool2d", "kernel": k, "stride": stride, "padding": pad}]}
        X = rng.integers(-2, 3, (3, 2, hw, hw)).astype(np.float32) if ties else values(rng, (3, 2, hw, hw))
        G = values(rng, (3, *Model(spec).output_shape))
        same_bits(spy, mp, spec, X, G, ["maxpool_backward"])


def test_max_pool_special_values_bits(spy, monkeypatch):
    """NaN in a window (no maximum equals it), signed zeros, -inf; a non-finite g_out takes numpy's path."""
    rng = np.random.default_rng(4)
    spec = {"input": [2, 8, 8], "layers": ["max_pool2d 2"]}
    X = values(rng, (4, 2, 8, 8), specials=True)
    same_bits(spy, monkeypatch, spec, X, values(rng, (4, 2, 4, 4)), ["maxpool_backward"])
    monkeypatch.setattr(kernels, "kernel", spy)
    spy.calls.clear()
    G = values(rng, (4, 2, 4, 4))
    G[0, 0, 0, 0] = np.inf
    same_bits(spy, monkeypatch, spec, X, G, [])
    assert "maxpool_backward" not in spy.calls


def test_relu_bits(spy, monkeypatch):
    """Off the mask: g_out's signed zero, and 0 where g_out is inf or NaN (as numpy's repair)."""
    rng = np.random.default_rng(5)
    spec = {"input": 3000, "layers": ["relu"]}
    same_bits(spy, monkeypatch, spec, values(rng, (7, 3000), True), values(rng, (7, 3000), True), ["relu_backward"])


# --- GELU and dropout -------------------------------------------------------------------------

@SETTINGS
@given(rows=st.integers(1, 24), width=st.integers(1, 4096), scale=st.sampled_from([1e-3, 1.0, 30.0]),
       seed=st.integers(0, 2**31))
def test_gelu_tanh_bits(rows, width, scale, seed):
    """Sizes across the elementwise BLOCK (65536), values far into both saturated tails."""
    with pytest.MonkeyPatch.context() as mp:
        spy = KernelSpy(kernels.kernel) if kernels.kernel is not None else pytest.skip(NO_KERNEL)
        mp.setattr(kernels, "kernel", spy)
        rng = np.random.default_rng(seed)
        spec = {"input": [rows, width], "layers": [{"op": "gelu", "approximate": "tanh"}]}
        shape = (2, rows, width)
        same_bits(spy, mp, spec, values(rng, shape) * np.float32(scale), values(rng, shape),
                  ["gelu_tanh_inner", "gelu_tanh_outer", "gelu_tanh_backward"])


def test_gelu_tanh_special_values_bits(spy, monkeypatch):
    rng = np.random.default_rng(6)
    spec = {"input": 5000, "layers": [{"op": "gelu", "approximate": "tanh"}]}
    same_bits(spy, monkeypatch, spec, values(rng, (3, 5000), True), values(rng, (3, 5000), True),
              ["gelu_tanh_inner", "gelu_tanh_outer", "gelu_tanh_backward"])


@SETTINGS
@given(p=st.sampled_from([0.0001, 0.1, 0.5, 0.9]), width=st.integers(1, 300), step=st.integers(0, 10**6),
       specials=st.booleans(), seed=st.integers(0, 2**31))
def test_dropout_bits(p, width, step, specials, seed):
    """The mask (seed, step, dataset row, node) and the scaled product: same keep, same bits."""
    with pytest.MonkeyPatch.context() as mp:
        spy = KernelSpy(kernels.kernel) if kernels.kernel is not None else pytest.skip(NO_KERNEL)
        mp.setattr(kernels, "kernel", spy)
        rng = np.random.default_rng(seed)
        spec = {"input": [3, width], "layers": [{"op": "dropout", "p": p}]}
        rows = rng.choice(10**9, 5, replace=False)
        ctx = Context(seed=seed, step=step, index=rows)
        same_bits(spy, mp, spec, values(rng, (5, 3, width), specials), values(rng, (5, 3, width)),
                  ["dropout_forward"], ctx)


@SETTINGS
@given(rows=st.integers(1, 70), width=st.integers(1, 300), specials=st.booleans(), seed=st.integers(0, 2**31))
def test_softmax_bits(rows, width, specials, seed):
    """The softmax op (no mask): rows across the 64K-value blocks, rows with infs and NaNs."""
    with pytest.MonkeyPatch.context() as mp:
        spy = KernelSpy(kernels.kernel) if kernels.kernel is not None else pytest.skip(NO_KERNEL)
        mp.setattr(kernels, "kernel", spy)
        rng = np.random.default_rng(seed)
        spec = {"input": [rows, width], "layers": ["softmax"]}
        shape = (3, rows, width)
        X = values(rng, shape, specials) * np.float32(rng.choice([1.0, 50.0]))
        same_bits(spy, mp, spec, X, values(rng, shape), ["softmax_shift"], any_nan=specials)


@SETTINGS
@given(T=st.integers(1, 40), heads=st.sampled_from([1, 2]), seed=st.integers(0, 2**31))
def test_causal_attention_bits(T, heads, seed):
    """The mask is added inside the kernel, row r of the scores getting mask row r mod T."""
    with pytest.MonkeyPatch.context() as mp:
        spy = KernelSpy(kernels.kernel) if kernels.kernel is not None else pytest.skip(NO_KERNEL)
        mp.setattr(kernels, "kernel", spy)
        rng = np.random.default_rng(seed)
        spec = {"input": [T, 8], "layers": [{"op": "attention", "heads": heads, "causal": True}]}
        same_bits(spy, mp, spec, values(rng, (3, T, 8)) * np.float32(3), values(rng, (3, T, 8)), ["softmax_shift"])


# --- whole models, and where the kernels do not apply ------------------------------------------

@pytest.mark.parametrize("example", ["lenet_mnist.yaml", "char_gpt.yaml"])
def test_example_models_bits(spy, monkeypatch, example):
    """A training step of the LeNet and the GPT examples (dropout on): every kernel the model
    uses runs, and the step's bits are the numpy passes'."""
    spec = yaml.safe_load((EXAMPLES / example).read_text())["model"]
    m = Model(spec)
    rng = np.random.default_rng(8)
    if m.spec.input.dtype == "int":
        X = rng.integers(0, m.spec.input.vocab, (6, *m.input_shape))
    else:
        X = values(rng, (6, *m.input_shape))
    G = values(rng, (6, *m.output_shape))
    ctx = Context(seed=3, step=17, index=np.arange(100, 106))
    expect = (["dropout_forward", "gelu_tanh_inner", "gelu_tanh_backward", "softmax_shift"]
              if m.spec.input.dtype == "int" else
              ["im2col", "col2im", "conv_out", "maxpool_backward", "relu_backward"])
    same_bits(spy, monkeypatch, spec, X, G, expect, ctx)


def test_float64_models_take_numpy_passes(monkeypatch):
    """The kernels are float32; a float64 model (gradient checks) never reaches them."""
    monkeypatch.setattr(kernels, "kernel", KernelSpy())
    spec = {"input": [1, 8, 8], "layers": ["conv2d 2 3", "relu", "max_pool2d 2", "flatten",
                                          {"op": "gelu", "approximate": "tanh"}, "dropout 0.5"]}
    rng = np.random.default_rng(9)
    ctx = Context(seed=0, step=1, index=np.arange(2))
    run(spec, rng.standard_normal((2, 1, 8, 8)), rng.standard_normal((2, 18)), ctx, dtype=np.float64)


def test_a_geometry_outside_the_buffers_raises():
    """The kernels check their indices before touching memory: a wrong call raises, never writes out of bounds."""
    if kernels.kernel is None:
        pytest.skip(NO_KERNEL)
    k = kernels.kernel
    xp, cols = np.zeros((2, 1, 5, 5), np.float32), np.zeros((9, 2, 9), np.float32)
    k.im2col(xp, cols, 0, 2, 1, 25, 3, 3, 5, 1, 1, 9, 0, 1, 2)  # in bounds: fine
    for bad in [dict(kh=4), dict(b1=3), dict(rows=2, row_step=20), dict(block=1)]:
        args = dict(b0=0, b1=2, C=1, plane=25, kh=3, kw=3, di=5, dj=1, rows=1, cols=9, row_step=0, col_step=1,
                    block=2) | bad
        with pytest.raises(ValueError):
            k.im2col(xp, cols, *args.values())
        with pytest.raises(ValueError):
            k.col2im(cols, xp, *args.values())
    with pytest.raises(ValueError, match="float32"):
        k.im2col(xp.astype(np.float64), cols, 0, 2, 1, 25, 3, 3, 5, 1, 1, 9, 0, 1, 2)
    out = np.zeros((2, 1, 4, 4), np.float32)
    with pytest.raises(ValueError):
        k.maxpool_backward(xp, out, out, xp.copy(), np.zeros(16, np.uint8), 2, 5, 5, 4, 4, 3, 3, 1, 1, True)
    with pytest.raises(ValueError):
        k.conv_out(cols, None, out, 0, 2, 1, 2, 9, 4, 4, 2)


# --- batch norm -------------------------------------------------------------------------------

@SETTINGS
@given(batch=st.integers(1, 9), channels=st.integers(1, 5),
       hw=st.sampled_from([None, (1, 1), (3, 5), (8, 8), (1, 300), (1, 9000)]),
       affine=st.booleans(), train=st.booleans(), specials=st.booleans(), seed=st.integers(0, 2**31))
def test_batch_norm_bits(batch, channels, hw, affine, train, specials, seed):
    """Statistics and parameter gradients summed in numpy's order (planes pairwise, then the
    batch in order; the float64 mean's planes in buffer-sized pieces, hence a 9000-value
    plane), the per-channel passes fused; vectors (B, C) and images, both modes. Values span
    80 binades, so that a sum's order shows in its bits. One channel takes numpy's passes."""
    with pytest.MonkeyPatch.context() as mp:
        spy = KernelSpy(kernels.kernel) if kernels.kernel is not None else pytest.skip(NO_KERNEL)
        mp.setattr(kernels, "kernel", spy)
        rng = np.random.default_rng(seed)
        shape = [channels] if hw is None else [channels, *hw]
        spec = {"input": shape, "layers": [{"op": "batch_norm", "affine": affine}]}
        X = values(rng, (batch, *shape), specials) * np.exp2(rng.integers(-40, 40, (batch, *shape))).astype(np.float32)
        ctx = Context(seed=0, step=1, index=np.arange(batch), train=train)
        expect = [] if channels == 1 else ["bn_normalize"] + (["channel_sums", "bn_input_grad"] if train else [])
        same_bits(spy, mp, spec, X, values(rng, (batch, *shape), specials), expect, ctx, any_nan=specials)
        if channels == 1:
            assert not spy.calls


def test_resnet_example_bits(spy, monkeypatch):
    """A step of the residual CNN example (convolutions, chunk batch norm, ReLU, a skip)."""
    spec = yaml.safe_load((EXAMPLES / "resnet_shapes.yaml").read_text())["model"]
    m = Model(spec)
    rng = np.random.default_rng(10)
    X, G = values(rng, (5, *m.input_shape)), values(rng, (5, *m.output_shape))
    same_bits(spy, monkeypatch, spec, X, G, ["channel_sums", "bn_normalize", "bn_input_grad", "im2col", "col2im"],
              Context(seed=1, step=2, index=np.arange(5)))
