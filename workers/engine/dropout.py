"""Dropout whose mask is a pure function of (seed, step, the example's dataset row, the node).

Training draws each value's keep/drop from a counter-based hash instead of a random
stream, so the mask an example gets at a step does not depend on which worker computes it,
in which chunk, next to which other examples: 1, 2 or 8 workers, a failure or a resize,
give the same bits. Off (the identity) in evaluation and prediction, as in PyTorch.
"""
from __future__ import annotations

import zlib

import numpy as np

from .op import Op
from .workspace import Workspace

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


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


def keep_mask(seed: int, step: int, node: str, rows: np.ndarray, size: int, p: float,
              ws: Workspace | None = None) -> np.ndarray:
    """(len(rows), size) booleans: value j of the example at dataset row r is kept with
    probability 1 - p, decided by hash(seed, step, node, r, j) alone. The counter
    r size + j + key is hashed; the top 53 bits, a uniform double in [0, 1) times 2^53, are
    compared with p 2^53. `ws` lends the scratch arrays (a warm step then allocates nothing)."""
    ws = ws or Workspace()
    shape, u64 = (len(rows), size), np.dtype(np.uint64)
    z, tmp = ws.get("z", shape, u64), ws.get("tmp", shape, u64)
    with np.errstate(over="ignore"):
        key = _key(seed, step, node)
        np.multiply(rows.astype(np.uint64)[:, None], np.uint64(size), out=z)
        z += np.arange(size, dtype=np.uint64)
        z += key
        z *= _GOLDEN
        np.right_shift(_mix(z, tmp), np.uint64(11), out=tmp)
    return np.greater_equal(tmp, np.uint64(round(p * (1 << 53))), out=ws.get("keep", shape, np.dtype(bool)))


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
        keep = keep_mask(self.ctx.seed, self.ctx.step, self.name, self.ctx.index, size, rate, self.ws).reshape(x.shape)
        self.scale = self.dtype.type(1.0 / (1.0 - rate))
        self.keep = keep
        out = self.buf("out", x.shape)
        np.multiply(x, self.scale, out=out)
        out *= keep
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
