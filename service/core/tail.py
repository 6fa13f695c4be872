"""The coordinator's tail of a step: the mean gradient and its norm's block sums, in one pass.

The kernel behind `dptrain.core.reduce.Reduction.finish` (and the optimizers' last step),
wrapping the C code with its numpy fallback.

After the workers' partial sums are in, the coordinator computes, over the whole
parameter vector (P elements, 2.7 MB for the 670k-parameter benchmark model):

    g = (left + right) / count           the tree's root addition, then divide once
    sums[k] = sum_{i in block k} g_i^2   float64, numpy's pairwise order within a block

and the optimizer takes ``||g|| = sqrt(sum_k sums[k])`` from ``sums``; each optimizer's
update then ends with ``theta -= lr * d`` (`sub_scaled`). As numpy passes that is four
sweeps over memory (add, divide, square into float64, sum) plus two (multiply,
subtract); the compiled kernels (`service/core/_tail.c`, built by `pip install` when a C
compiler is present) do one each, the whole SGD tail ~2x faster on one core. Both give
the same bits, so which one ran is invisible in the weights; tests/test_tail.py checks
that on every size and dtype.
"""
from __future__ import annotations

import math

import numpy as np

try:
    from dptrain.core import _tail as _kernel
except ImportError:  # built without a C compiler: the numpy passes below
    _kernel = None

BLOCK = 65536  # elements per block of the norm: fixed, part of the arithmetic
_EXACT_COUNT = 2**24  # counts below this are exact in float32, however they are converted


def n_blocks(n: int) -> int:
    return -(-n // BLOCK)


def compiled() -> bool:
    """Whether the fused kernel is in use (else the numpy passes)."""
    return _kernel is not None


def block_sums(g: np.ndarray, sums: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
    """sums[k] = float64 sum of squares of g's k-th block (pairwise), numpy passes.

    Each block's squares are exact in float64 for float32 inputs and free of float32
    overflow; blocking keeps them in cache. `scratch`: float64, >= min(BLOCK, g.size).
    """
    sq = np.empty(min(BLOCK, g.size), np.float64) if scratch is None else scratch
    for k, a in enumerate(range(0, g.size, BLOCK)):
        v = sq[:min(BLOCK, g.size - a)]
        np.square(g[a:a + BLOCK], out=v, dtype=np.float64)
        sums[k] = np.add.reduce(v)
    return sums


def norm(sums: np.ndarray) -> float:
    """||g||_2 from its block sums (the block sums are added pairwise too)."""
    return math.sqrt(float(np.add.reduce(sums)))


def mean_grad(left: np.ndarray, right: np.ndarray | None, count: int, out: np.ndarray,
              sums: np.ndarray, use_kernel: bool = True) -> np.ndarray:
    """out = (left + right) / count (or left / count), and the norm's block sums of out.

    `left`, `right` and `out` are contiguous 1-D arrays of one float dtype; `out` may be
    `left` or `right`. `sums` is float64[n_blocks(out.size)]. Returns `out`.
    """
    if _kernel is not None and use_kernel and 0 < count < _EXACT_COUNT and _fits(left, right, out, sums):
        _kernel.mean_grad(left, right, float(count), out, BLOCK, sums, out.itemsize)
        return out
    if right is None:
        np.divide(left, count, out=out)
    else:
        np.add(left, right, out=out)
        np.divide(out, count, out=out)
    block_sums(out, sums)
    return out


def sub_scaled(params: np.ndarray, direction: np.ndarray, scale: float, scratch: np.ndarray) -> None:
    """params -= direction * scale, the product rounded to the dtype first (the optimizers'
    last step). One pass with the kernel; else two numpy passes through `scratch`."""
    if (_kernel is not None and params.dtype == direction.dtype and params.dtype in (np.float32, np.float64)
            and params.shape == direction.shape and params.ndim == 1 and params.flags.c_contiguous
            and params.flags.writeable and direction.flags.c_contiguous):
        _kernel.sub_scaled(params, direction, float(scale), params.itemsize)
        return
    np.multiply(direction, scale, out=scratch)
    np.subtract(params, scratch, out=params)


def _fits(left: np.ndarray, right: np.ndarray | None, out: np.ndarray, sums: np.ndarray) -> bool:
    arrays = (left, out) if right is None else (left, right, out)
    return (out.dtype in (np.float32, np.float64) and out.ndim == 1
            and all(a.dtype == out.dtype and a.shape == out.shape and a.flags.c_contiguous for a in arrays)
            and out.flags.writeable and sums.dtype == np.float64 and sums.shape == (n_blocks(out.size),)
            and sums.flags.c_contiguous and sums.flags.writeable)
