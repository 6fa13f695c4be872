"""Dropout whose mask is a pure function of (seed, step, the example's dataset row, the node).

Training draws each value's keep/drop from a counter-based hash instead of a random
stream, so the mask an example gets at a step does not depend on which worker computes it,
in which chunk, next to which other examples: 1, 2 or 8 workers, a failure or a resize,
give the same bits. Off (the identity) in evaluation and prediction, as in PyTorch.
"""
from __future__ import annotations

import zlib
from functools import cache

import numpy as np

from . import kernels
from .op import Op
from .workspace import Workspace

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN32 = np.uint32(0x9E3779B9)
_F1, _F2 = np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35)


def _mix(z: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele et al. 2014), in place on uint64 (`tmp`: scratch of z's
    shape): a bijection whose outputs pass BigCrush for consecutive inputs; wrapping
    arithmetic is intended."""
    for shift, mult in ((30, _M1), (27, _M2), (31, None)):
        np.right_shift(z, np.uint64(shift), out=tmp)
        z ^= tmp
        if mult is not None:
            z *= mult
    return z


def _key(seed: int, step: int, node: str) -> np.uint64:
    """One 64-bit key per (seed, step, node): each part re-mixed into the chain."""
    base = np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)
    for part in (step, zlib.crc32(node.encode())):
        base = _mix(base * _GOLDEN + np.uint64(part & 0xFFFFFFFFFFFFFFFF), np.empty_like(base))
    return base[0]


def _row_keys(key: np.uint64, rows: np.ndarray) -> np.ndarray:
    """A 32-bit key per example: the top half of SplitMix64(key + row golden)."""
    z = rows.astype(np.uint64) * _GOLDEN + key
    return (_mix(z, np.empty_like(z)) >> np.uint64(32)).astype(np.uint32)


def _fmix32(z: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, in place on uint32: a bijection with full avalanche,
    in 32-bit lanes (SIMD-wide in numpy, where 64-bit multiplies are not)."""
    for shift, mult in ((16, _F1), (13, _F2), (16, None)):
        np.right_shift(z, np.uint32(shift), out=tmp)
        z ^= tmp
        if mult is not None:
            z *= mult
    return z


@cache
def _position_keys(size: int) -> np.ndarray:
    """j golden32 for the positions j of an example (wrapping), computed once per size."""
    with np.errstate(over="ignore"):
        keys = np.arange(size, dtype=np.uint32) * _GOLDEN32
    keys.flags.writeable = False
    return keys


def _threshold(p: float) -> np.uint32:
    """A value is kept when its uniform 32-bit hash is at least p 2^32."""
    return np.uint32(min(round(p * (1 << 32)), (1 << 32) - 1))


def keep_mask(seed: int, step: int, node: str, rows: np.ndarray, size: int, p: float,
              ws: Workspace | None = None) -> np.ndarray:
    """(len(rows), size) booleans: value j of the example at dataset row r is kept with
    probability 1 - p, decided by hash(seed, step, node, r, j) alone: fmix32(rowkey(r) +
    j golden32), a uniform 32-bit integer, is compared with p 2^32. `ws` lends the scratch
    arrays (a warm step then allocates nothing)."""
    ws = ws or Workspace()
    shape, u32 = (len(rows), size), np.dtype(np.uint32)
    z, tmp = ws.get("z", shape, u32), ws.get("tmp", shape, u32)
    with np.errstate(over="ignore"):
        np.add(_row_keys(_key(seed, step, node), rows)[:, None], _position_keys(size), out=z)
        _fmix32(z, tmp)
    return np.greater_equal(z, _threshold(p), out=ws.get("keep", shape, np.dtype(bool)))


class Dropout(Op):
    """out = x * keep / (1 - p) in training, x in evaluation; keep drawn per (seed, step, row, node).

    Attribute `p` (the drop rate, in [0, 1), default 0.5; shorthand "dropout 0.1").
    g_in = g_out * keep / (1 - p): the same mask, so backward is exact for its forward."""

    uses_context = True
    attr_defaults = {"p": 0.5}
    attr_kinds = {"p": "prob"}

    def forward(self, xs, p):
        x = xs[0]
        rate = float(self.attrs["p"])
        self.keep = None
        if self.ctx is None or not self.ctx.train or rate == 0.0:
            return x
        n = x.shape[0]
        size = x.size // n if n else 0
        self.scale = self.dtype.type(1.0 / (1.0 - rate))
        out = self.buf("out", x.shape)
        kernel = kernels.for_arrays(x)
        if kernel:  # keep_mask's passes and the product below, in one compiled loop
            self.keep = self.ws.get("keep", x.shape, np.dtype(bool))
            row_keys = _row_keys(_key(self.ctx.seed, self.ctx.step, self.name), self.ctx.index)
            kernel.dropout_forward(x, row_keys, self.keep, out, n, size, int(_threshold(rate)), float(self.scale))
            return out
        self.keep = keep_mask(self.ctx.seed, self.ctx.step, self.name, self.ctx.index, size, rate,
                              self.ws).reshape(x.shape)
        np.multiply(x, self.scale, out=out)
        out *= self.keep
        return out

    def backward(self, g_out, need, into=None):
        if not need[0]:
            return [None], {}
        if self.keep is None:
            return [g_out], {}
        g_in = self.buf("g_in", g_out.shape)
        np.multiply(g_out, self.scale, out=g_in)
        g_in *= self.keep
        return [g_in], {}
