"""Pooling: max_pool2d, avg_pool2d over (C, H, W) examples, and global_avg_pool.

The windowed pools loop over the kernel's kh kw offsets, never over examples: offset
(i, j) reads one strided (B, C, OH, OW) view of the padded input (conv.window), so a
pass is kh kw vectorised elementwise operations, and backward adds each offset's share
of g_out back onto the same view, in the same fixed order (deterministic bits).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from . import kernels
from .conv import check_window, out_size, padded, pair, window
from .op import Op, Shape


class _Pool2d(Op):
    """Shared: the geometry (kernel, stride defaulting to the kernel, padding) and the output shape."""

    required_attrs = ("kernel",)
    attr_defaults = {"stride": None, "padding": 0}
    attr_kinds = {"kernel": "pair", "stride": "pair", "padding": "pair0"}

    def _geometry(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        k = pair(self.attrs["kernel"])
        s = k if self.attrs["stride"] is None else pair(self.attrs["stride"])
        return k, s, pair(self.attrs["padding"])

    def out_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        shape = in_shapes[0]
        if len(shape) != 3:
            raise ValueError(f"takes (channels, height, width) examples, got {list(shape)}")
        k, s, p = self._geometry()
        for axis, n, ki, pi in zip(("height", "width"), shape[1:], k, p):
            if 2 * pi > ki:
                raise ValueError(f"padding {pi} must be at most half the kernel {ki} ({axis}), as in PyTorch")
            check_window(axis, n, ki, pi)
        return (shape[0], out_size(shape[1], k[0], s[0], p[0]), out_size(shape[2], k[1], s[1], p[1]))

    def _setup(self, x: np.ndarray, fill: float) -> np.ndarray:
        """The padded input; notes the geometry for backward."""
        k, s, p = self._geometry()
        B, C, H, W = x.shape
        self.geom, self.in_shape = (k, s, p), x.shape
        self.out_hw = (out_size(H, k[0], s[0], p[0]), out_size(W, k[1], s[1], p[1]))
        return padded(self, x, p, fill)

    def _offsets(self):
        (kh, kw), _, _ = self.geom
        return [(i, j) for i in range(kh) for j in range(kw)]

    def _g_pad(self, fill: bool = True) -> np.ndarray:
        """The gradient of the padded input, zeroed unless every value will be written."""
        B, C, H, W = self.in_shape
        (_, _, (ph, pw)) = self.geom
        g_pad = self.buf("g_pad", (B, C, H + 2 * ph, W + 2 * pw))
        if fill:
            g_pad.fill(0)
        return g_pad

    def _g_in(self, g_pad: np.ndarray) -> np.ndarray:
        B, C, H, W = self.in_shape
        (_, _, (ph, pw)) = self.geom
        if ph == 0 and pw == 0:
            return g_pad
        g_in = self.buf("g_in", self.in_shape)
        np.copyto(g_in, g_pad[:, :, ph:ph + H, pw:pw + W])
        return g_in


class MaxPool2d(_Pool2d):
    """The maximum of each kernel window, as PyTorch's max_pool2d; the padding counts as -inf.

    Attributes: `kernel` (required), `stride` (null: the kernel), `padding` (0, at most half
    the kernel, as PyTorch requires), each an integer or [height, width]. Ties: the first
    maximum in the window (row-major order) gets the whole gradient, so the result is a
    deterministic function of the input; PyTorch's choice among ties is not documented,
    so only tie-free inputs are compared with it. A NaN in a window propagates to the output.

    Forward keeps only the maxima; backward finds each window's first maximum again, offset
    by offset (`hit` = equal to the maximum and not yet claimed), which is cheaper than
    tracking an argmax in forward (numpy's masked copies are slow).
    """

    def forward(self, xs, p):
        self.xp = self._setup(xs[0], -np.inf)
        (_, s, _), offsets = self.geom, self._offsets()
        B, C = xs[0].shape[:2]
        out = self.buf("out", (B, C, *self.out_hw))
        np.copyto(out, window(self.xp, 0, 0, self.out_hw, s))
        for i, j in offsets[1:]:
            np.maximum(out, window(self.xp, i, j, self.out_hw, s), out=out)
        self.out = out
        return out

    def backward(self, g_out, need, into=None):
        if not need[0]:
            return [None], {}
        (_, s, _), offsets = self.geom, self._offsets()
        boolean = np.dtype(bool)
        # A non-finite g_out takes the masked add: inf * 0 would put NaN where a value is not the maximum.
        with np.errstate(invalid="ignore", over="ignore"):
            finite = bool(np.isfinite(g_out.sum()))
        (k_hw, _, pad) = self.geom
        tiles = finite and k_hw == s and pad == (0, 0)  # windows that do not overlap: each value has one
        g_pad = self._g_pad(fill=not tiles or any(n % k for n, k in zip(self.in_shape[2:], k_hw)))
        kernel = kernels.for_arrays(self.xp, self.out, g_out, g_pad) if finite else None
        if kernel:  # the loop below, plane by plane, in one compiled pass
            B, C, Hp, Wp = g_pad.shape
            claimed = self.ws.get("claimed_plane", (g_out[0, 0].size,), boolean)
            kernel.maxpool_backward(self.xp, self.out, g_out, g_pad, claimed, B * C, Hp, Wp, *self.out_hw,
                                    *k_hw, *s, tiles)
            return [self._g_in(g_pad)], {}
        hit, claimed = self.ws.get("hit", g_out.shape, boolean), self.ws.get("claimed", g_out.shape, boolean)
        share = self.buf("share", g_out.shape)
        for k, (i, j) in enumerate(offsets):
            np.equal(window(self.xp, i, j, self.out_hw, s), self.out, out=hit)
            if k:
                np.greater(hit, claimed, out=hit)  # equal to the maximum, and no earlier offset was
            if k < len(offsets) - 1:
                np.logical_or(claimed, hit, out=claimed) if k else np.copyto(claimed, hit)
            w = window(g_pad, i, j, self.out_hw, s)
            if tiles:  # written, not added: no other window holds these values
                np.multiply(g_out, hit, out=w)
            elif finite:
                np.multiply(g_out, hit, out=share)
                w += share
            else:
                np.add(w, g_out, out=w, where=hit)
        return [self._g_in(g_pad)], {}


class AvgPool2d(_Pool2d):
    """The mean of each kernel window, as PyTorch's avg_pool2d (count_include_pad=True).

    Attributes: `kernel` (required), `stride` (null: the kernel), `padding` (0, at most half
    the kernel), each an integer or [height, width]. Padded zeros count in the mean: every
    window divides by kh kw. g_in: each input value receives g_out / (kh kw) from every
    window that holds it.
    """

    def forward(self, xs, p):
        xp = self._setup(xs[0], 0.0)
        ((kh, kw), s, _), offsets = self.geom, self._offsets()
        B, C = xs[0].shape[:2]
        out = self.buf("out", (B, C, *self.out_hw))
        np.copyto(out, window(xp, 0, 0, self.out_hw, s))
        for i, j in offsets[1:]:
            out += window(xp, i, j, self.out_hw, s)
        out /= kh * kw
        return out

    def backward(self, g_out, need, into=None):
        if not need[0]:
            return [None], {}
        ((kh, kw), s, _) = self.geom
        share = self.buf("share", g_out.shape)
        np.divide(g_out, kh * kw, out=share)
        g_pad = self._g_pad()
        for i, j in self._offsets():
            w = window(g_pad, i, j, self.out_hw, s)
            w += share
        return [self._g_in(g_pad)], {}


class GlobalAvgPool(Op):
    """The mean of each channel over its positions: (C, H, W) or (C, L) -> (C,), as adaptive_avg_pool to 1.

    No attributes. The means are BLAS matrix-vector products (each channel's row times
    ones, divided by the count); g_in spreads g_out / (H W) over the channel's positions.
    """

    def out_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        if len(in_shapes[0]) not in (2, 3):
            raise ValueError(f"takes (channels, height, width) or (channels, length) examples, "
                             f"got {list(in_shapes[0])}")
        return (in_shapes[0][0],)

    def forward(self, xs, p):
        x = xs[0]
        self.shape = x.shape
        rows = x.reshape(-1, int(np.prod(x.shape[2:])))
        ones = self.buf("ones", (rows.shape[1],))
        ones.fill(1)
        out = self.buf("out", x.shape[:2])
        np.matmul(rows, ones, out=out.reshape(-1))
        out /= rows.shape[1]
        return out

    def backward(self, g_out, need, into=None):
        if not need[0]:
            return [None], {}
        g_in = self.buf("g_in", self.shape)
        n = int(np.prod(self.shape[2:]))
        np.divide(g_out[:, :, None], n, out=g_in.reshape(*self.shape[:2], n))
        return [g_in], {}
