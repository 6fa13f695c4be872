"""Convolutions: conv2d on (C, H, W) examples and conv1d on (C, L), as PyTorch computes them.

im2col: the padded input's windows are copied, by one strided view, into a matrix `cols`
of shape (C kh kw, b L) whose columns hold each example's window at every output position
(L per example; with stride 1, L = (OH - 1) Wp + OW: see `_Conv._windows`). The
convolution is one GEMM per group, out = W cols, with W viewed as (out, C/groups kh kw).
This runs a block of b examples at a time (`BLOCK_VALUES`), in one reused buffer, so the
columns never leave the cache; the block size depends on the layer and the chunk only,
so a chunk's bits do not depend on the worker count.

Backward (docs/backprop.md, 'Per-layer rules', with cols as the layer's input), block by
block with the columns built again: g_W = g_out cols^T and g_b = the sum of g_out, each
summed over the blocks in order, and g_cols = W^T g_out, which col2im adds back onto the
padded input: one strided add per kernel offset (kh kw of them), never a loop over
examples. Every buffer comes from the op's workspace, so a warm step allocates nothing.
In float32 the copies, the bias add and col2im's adds run as compiled loops
(kernels.py), in the same order and so with the same bits; the GEMMs stay numpy's.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import kernels
from .layers import weights_and_bias
from .op import Array, Op, Shape


def pair(value: Any) -> tuple[int, int]:
    """An attribute of kind pair as (height, width): 3 -> (3, 3), [3] -> (3, 3), [3, 5] -> (3, 5)."""
    items = value if isinstance(value, list) else [value]
    return (int(items[0]), int(items[-1]))


def out_size(n: int, k: int, stride: int, pad: int, dil: int = 1) -> int:
    """PyTorch's output length: floor((n + 2 pad - dil (k - 1) - 1) / stride) + 1."""
    return (n + 2 * pad - dil * (k - 1) - 1) // stride + 1


def check_window(axis: str, n: int, k: int, pad: int, dil: int = 1) -> None:
    """Raise ValueError unless the (dilated) kernel fits in the padded input along `axis`."""
    span = dil * (k - 1) + 1
    if span > n + 2 * pad:
        dilated = f" (dilated: {span})" if dil > 1 else ""
        raise ValueError(f"kernel {k}{dilated} is larger than the padded input {n + 2 * pad} ({axis})")


def padded(op: Op, x: Array, pad: tuple[int, int], fill: float) -> Array:
    """x (B, C, H, W) inside a reused (B, C, H + 2 ph, W + 2 pw) buffer whose border holds `fill`.

    Only the border strips are written besides the interior, not the whole buffer.
    """
    ph, pw = pad
    if ph == 0 and pw == 0:
        return x
    B, C, H, W = x.shape
    xp = op.buf("xpad", (B, C, H + 2 * ph, W + 2 * pw))
    xp[:, :, :ph] = fill
    xp[:, :, H + ph:] = fill
    xp[:, :, ph:H + ph, :pw] = fill
    xp[:, :, ph:H + ph, W + pw:] = fill
    xp[:, :, ph:H + ph, pw:W + pw] = x
    return xp


def window(xp: Array, i: int, j: int, out_hw: tuple[int, int], stride: tuple[int, int],
           dil: tuple[int, int] = (1, 1)) -> Array:
    """The (B, C, OH, OW) view of xp that kernel offset (i, j) reads at every output position."""
    (oh, ow), (sh, sw), (dh, dw) = out_hw, stride, dil
    return xp[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]


BLOCK_VALUES = 1 << 17
"""Values of im2col's matrix built at a time (512 KiB in float32): a block of examples stays in cache."""


class _Conv(Op):
    """Shared by conv2d and conv1d: a 1-D example (C, L) runs as the image (C, 1, L)."""

    required_attrs = ("out", "kernel")
    attr_defaults = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "bias": True}
    rank = 2  # spatial axes of an example
    _geom: tuple[tuple[int, int], ...] | None = None

    @property
    def param_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("W", "b") if self.attrs["bias"] else ("W",)

    def _geometry(self) -> tuple[tuple[int, int], ...]:
        """(kernel, stride, padding, dilation), each as (height, width); read once from the attributes."""
        if self._geom is None:
            k, s, p, d = (pair(self.attrs[a]) for a in ("kernel", "stride", "padding", "dilation"))
            if self.rank == 1:  # the height axis of the (C, 1, L) image is trivial
                k, s, p, d = (1, k[1]), (1, s[1]), (0, p[1]), (1, d[1])
            self._geom = (k, s, p, d)
        return self._geom

    def out_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        shape = in_shapes[0]
        if len(shape) != self.rank + 1:
            axes = "(channels, height, width)" if self.rank == 2 else "(channels, length)"
            raise ValueError(f"{type(self).__name__.lower()} takes {axes} examples, got {list(shape)}")
        c, out, groups = shape[0], int(self.attrs["out"]), int(self.attrs["groups"])
        if c % groups or out % groups:
            raise ValueError(f"groups {groups} must divide the {c} input channels and the {out} output channels")
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self._geometry()
        h, w = (1, shape[1]) if self.rank == 1 else shape[1:]
        if self.rank == 2:
            check_window("height", h, kh, ph, dh)
        check_window("width" if self.rank == 2 else "length", w, kw, pw, dw)
        oh, ow = out_size(h, kh, sh, ph, dh), out_size(w, kw, sw, pw, dw)
        return (out, oh, ow) if self.rank == 2 else (out, ow)

    def param_shapes(self, in_shapes: Sequence[Shape]) -> dict[str, Shape]:
        out, groups = int(self.attrs["out"]), int(self.attrs["groups"])
        (kh, kw), *_ = self._geometry()
        kernel = (kh, kw) if self.rank == 2 else (kw,)
        shapes: dict[str, Shape] = {"W": (out, in_shapes[0][0] // groups, *kernel)}
        if self.attrs["bias"]:
            shapes["b"] = (out,)
        return shapes

    def init_params(self, shapes, rng, scheme):
        out, fan_in = shapes["W"][0], int(np.prod(shapes["W"][1:]))
        fan_out = out * int(np.prod(shapes["W"][2:]))  # PyTorch's: out channels times the kernel's size
        return weights_and_bias(shapes, rng, scheme, fan_in, fan_out)

    def forward(self, xs, p):
        x = xs[0]
        self.in_shape = x.shape
        x4 = x.reshape(x.shape[0], x.shape[1], 1, x.shape[2]) if self.rank == 1 else x
        B, C, H, W = x4.shape
        (kh, kw), stride, pad, dil = self._geometry()
        Co, G = int(self.attrs["out"]), int(self.attrs["groups"])
        oh, ow = out_size(H, kh, stride[0], pad[0], dil[0]), out_size(W, kw, stride[1], pad[1], dil[1])
        self.dims = (B, C, H, W, Co, G, oh, ow)
        self.xp = np.ascontiguousarray(padded(self, x4, pad, 0.0))
        self.rows = stride == (1, 1)  # windows are runs of the padded rows (see _windows)
        self.Wp = W + 2 * pad[1]  # the padded row's length
        self.L = (oh - 1) * self.Wp + ow if self.rows else oh * ow  # im2col columns per example
        self.block = self._block_size()
        self.kgeom = self._kernel_geometry() if kernels.for_arrays(self.xp) else None  # compiled im2col/col2im
        self.W = p["W"].reshape(G, Co // G, -1)
        out = self.buf("out", (B, Co, oh, ow))
        out_full = self.buf("out_t", (Co, self.block, self.L))
        bias = p.get("b")
        k = kernels.for_arrays(self.xp, out_full, bias)
        for b0, b1 in self._blocks():
            cols = self._im2col(b0, b1)
            out_t = out_full[:, :b1 - b0]
            np.matmul(self.W, cols.reshape(G, -1, cols.shape[1]), out=out_t.reshape(G, Co // G, -1))
            if k:  # the copy (and bias add) below, in one compiled loop
                k.conv_out(out_full, bias, out, b0, b1, Co, self.block, self.L, oh, ow, self._ystep)
                continue
            valid = self._valid(out_t).transpose(1, 0, 2, 3)
            if bias is not None:
                np.add(valid, bias[:, None, None], out=out[b0:b1])
            else:
                np.copyto(out[b0:b1], valid)
        return out.reshape((B, Co, oh, ow) if self.rank == 2 else (B, Co, ow))

    def _im2col(self, b0: int, b1: int) -> Array:
        """Examples [b0, b1)'s windows as the (C kh kw, (b1 - b0) L) matrix, in a reused
        block-sized buffer: built when needed (forward, and again in backward) rather than
        kept, so it never leaves the cache and the batch's columns are never stored."""
        K = self.W.shape[0] * self.W.shape[2]
        full = self.buf("cols", (K, self.block, self.L))
        cols = full[:, :b1 - b0]
        if self.kgeom:  # the copy below, as one compiled loop
            kernels.kernel.im2col(self.xp, full, b0, b1, *self.kgeom)
            return cols.reshape(K, -1)
        src = self._windows(self.xp)[:, :, :, b0:b1]
        np.copyto(cols.reshape(src.shape), src)
        return cols.reshape(K, -1)

    def _windows(self, xp: Array, writeable: bool = False) -> Array:
        """The (C, kh, kw, B, L) view of the padded input (or its gradient) that im2col copies.

        Stride 1: kernel offset (i, j)'s window, read as one run of L = (OH - 1) Wp + OW
        values of each padded plane from (i dil, j dil), holds every output row with the
        padded row's Wp - OW extra values between them; the extra columns of cols and of
        the product are never used, and in backward they carry zeros. Long contiguous runs
        make the copies (and col2im's adds) several times faster than OW-long ones.
        Otherwise: the (C, kh, kw, B, OH, OW) strided view, flattened per example."""
        B, C, H, W, Co, G, oh, ow = self.dims
        (kh, kw), stride, _, dil = self._geometry()
        b, (sb, sc, sy, sx) = xp.shape[0], xp.strides
        if self.rows:
            return as_strided(xp, (C, kh, kw, b, self.L), (sc, dil[0] * sy, dil[1] * sx, sb, sx), writeable=writeable)
        return as_strided(xp, (C, kh, kw, b, oh, ow),
                          (sc, dil[0] * sy, dil[1] * sx, sb, stride[0] * sy, stride[1] * sx), writeable=writeable)

    def _kernel_geometry(self) -> tuple[int, ...]:
        """_windows' view as the compiled im2col and col2im take it (_kernels.c, 'the window geometry')."""
        B, C, H, W, Co, G, oh, ow = self.dims
        (kh, kw), (sh, sw), _, (dh, dw) = self._geometry()
        plane = self.xp.shape[2] * self.Wp
        grid = (1, self.L, 0, 1) if self.rows else (oh, ow, sh * self.Wp, sw)
        return (C, plane, kh, kw, dh * self.Wp, dw, *grid, self.block)

    @property
    def _ystep(self) -> int:
        """The distance between output rows in a row of im2col's product (see _valid)."""
        return self.Wp if self.rows else self.dims[-1]

    def _valid(self, a: Array) -> Array:
        """(X, b, L) -> the (X, b, OH, OW) view of its values at real output positions."""
        B, C, H, W, Co, G, oh, ow = self.dims
        if not self.rows:
            return a.reshape(a.shape[0], a.shape[1], oh, ow)
        s0, s1, s2 = a.strides
        return as_strided(a, (a.shape[0], a.shape[1], oh, ow), (s0, s1, self.Wp * s2, s2))

    def _block_size(self) -> int:
        """Examples per block: each block's im2col columns (about BLOCK_VALUES values) are
        built, multiplied and, in backward, scattered back while they are in cache. It
        depends on the layer alone, so a chunk's bits never depend on the batch."""
        B, C, H, W, Co, G, oh, ow = self.dims
        (kh, kw), *_ = self._geometry()
        return max(1, min(B, BLOCK_VALUES // (C * kh * kw * self.L)))

    def _blocks(self) -> list[tuple[int, int]]:
        B, per = self.dims[0], self.block
        return [(b0, min(b0 + per, B)) for b0 in range(0, B, per)]

    def backward(self, g_out, need, into=None):
        """Block by block: im2col again, g_W += cols g_out^T (as (cols g_out^T)^T, BLAS's
        faster orientation), g_b += g_out 1, then g_cols = W^T g_out scattered back (col2im).
        The blocks' sums are added in block order: a chunk's bits are fixed."""
        B, C, H, W, Co, G, oh, ow = self.dims
        Kg = self.W.shape[2]  # rows of cols per group
        g4 = g_out.reshape(B, Co, oh, ow)
        g_Wt, part = self.buf("g_Wt", (G, Kg, Co // G)), self.buf("g_Wt_part", (G, Kg, Co // G))
        g_b, g_b_part = self.buf("g_b", (Co,)), self.buf("g_b_part", (Co,))
        g_pad = self._g_pad() if need[0] else None
        # a block of g_out, channel axis first as the GEMMs read it; the unused columns stay 0
        g_full = self.ws.get("g_rows", (Co, self.block, self.L), self.dtype, zeroed=True)
        k = kernels.for_arrays(g4, g_full, g_pad)
        for n, (b0, b1) in enumerate(self._blocks()):
            g_rows = g_full[:, :b1 - b0]
            if k:
                k.conv_g_rows(g_full, None, g4, b0, b1, Co, self.block, self.L, oh, ow, self._ystep)
            else:
                np.copyto(self._valid(g_rows), g4[b0:b1].transpose(1, 0, 2, 3))
            g_rows = g_rows.reshape(G, Co // G, -1)
            cols = self._im2col(b0, b1).reshape(G, Kg, -1)
            np.matmul(cols, g_rows.swapaxes(1, 2), out=part if n else g_Wt)
            np.sum(g_rows.reshape(Co, -1), axis=1, out=g_b_part if n else g_b)
            if n:
                g_Wt += part
                g_b += g_b_part
            if g_pad is not None:
                cols_full = self.buf("g_cols", (G * Kg, self.block, self.L))
                g_cols = cols_full[:, :b1 - b0]
                np.matmul(self.W.swapaxes(1, 2), g_rows, out=g_cols.reshape(G, Kg, -1))
                if k and self.kgeom:  # _col2im's adds, in the same order, as one compiled loop
                    k.col2im(cols_full, g_pad, b0, b1, *self.kgeom)
                else:
                    self._col2im(g_cols, g_pad[b0:b1])
        grads = {"W": self.grad_dest(into, "W", self.param_shape)}
        np.copyto(grads["W"].reshape(self.W.shape), g_Wt.swapaxes(1, 2))
        if self.attrs["bias"]:
            grads["b"] = self.grad_dest(into, "b", (Co,))
            np.copyto(grads["b"], g_b)
        if g_pad is None:
            return [None], grads
        return [self._g_unpad(g_pad).reshape(self.in_shape)], grads

    @property
    def param_shape(self) -> Shape:
        B, C, H, W, Co, G, oh, ow = self.dims
        (kh, kw), *_ = self._geometry()
        return (Co, C // G, kh, kw) if self.rank == 2 else (Co, C // G, kw)

    def _g_pad(self) -> Array:
        """The zeroed gradient of the padded input, (B, C, H + 2 ph, W + 2 pw)."""
        B, C, H, W, *_ = self.dims
        _, _, (ph, pw), _ = self._geometry()
        g_pad = self.buf("g_pad", (B, C, H + 2 * ph, W + 2 * pw))
        g_pad.fill(0)
        return g_pad

    def _g_unpad(self, g_pad: Array) -> Array:
        B, C, H, W, *_ = self.dims
        _, _, (ph, pw), _ = self._geometry()
        if ph == 0 and pw == 0:
            return g_pad
        g_in = self.buf("g_in", (B, C, H, W))
        np.copyto(g_in, g_pad[:, :, ph:ph + H, pw:pw + W])
        return g_in

    def _col2im(self, g_cols: Array, g_pad: Array) -> None:
        """Each kernel offset's slice of a block's g_cols added onto the windows it was copied
        from (the same views as forward's), offsets in a fixed order: every value's sum has
        one order. In the stride-1 form the unused columns add zeros."""
        B, C, H, W, Co, G, oh, ow = self.dims
        (kh, kw), *_ = self._geometry()
        windows = self._windows(g_pad, writeable=True)
        g6 = g_cols.reshape(*windows.shape[:4], -1 if self.rows else oh, *(() if self.rows else (ow,)))
        for i in range(kh):
            for j in range(kw):
                w = windows[:, i, j]
                np.add(w, g6[:, i, j], out=w)


class Conv2d(_Conv):
    """2-D convolution (cross-correlation) of (C, H, W) examples to (out, OH, OW), as PyTorch's Conv2d.

    Attributes: `out` (required: output channels), `kernel`
    (required), `stride` (1), `padding` (0: zeros on each side), `dilation` (1), each an
    integer or [height, width]; `groups` (1: must divide C and out; channels split into
    that many independent convolutions); `bias` (true). W is (out, C/groups, kh, kw), b
    (out,), PyTorch's layout; W is drawn N(0, 2/fan_in) before a ReLU-like op (He), else
    N(0, 2/(fan_in + fan_out)) (Glorot), fan_in = C/groups kh kw, fan_out = out kh kw; b = 0.
    OH = floor((H + 2 padding - dilation (kernel - 1) - 1) / stride) + 1, and likewise OW.
    """

    attr_kinds = {"out": "count", "kernel": "pair", "stride": "pair", "padding": "pair0",
                  "dilation": "pair", "groups": "count", "bias": "bool"}


class Conv1d(_Conv):
    """1-D convolution of (C, L) examples to (out, OL), as PyTorch's Conv1d.

    Attributes as conv2d's, each length an integer (or a list of one): `out` (required),
    `kernel` (required), `stride` (1), `padding` (0), `dilation` (1), `groups` (1),
    `bias` (true). W is (out, C/groups, k), b (out,); initialised as
    conv2d's with fan_in = C/groups k. OL = floor((L + 2 padding - dilation (k - 1) - 1) / stride) + 1.
    """

    rank = 1
    attr_kinds = {"out": "count", "kernel": "single", "stride": "single", "padding": "single0",
                  "dilation": "single", "groups": "count", "bias": "bool"}
