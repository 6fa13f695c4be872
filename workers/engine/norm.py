"""Per-example normalization: layer norm and group norm.

Each example is normalised by statistics of its own values only, so its output depends on
no other example and the loss stays a plain sum of per-example sub-losses (any chunking,
any worker count). Both equal PyTorch's LayerNorm / GroupNorm (biased variance).

For a group of m values with mean mu and variance var (biased), xhat = (x - mu) inv with
inv = 1 / sqrt(var + eps). Given g_xhat, the closed-form backward over each group is

    g_in = inv * (g_xhat - mean(g_xhat) - xhat * mean(g_xhat * xhat)),

the projection of g_xhat off the two directions (1 and xhat) that normalisation removes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .op import Array, Op, Shape


class _Normalize(Op):
    """Shared plumbing: normalise the rows of a (rows, m) view, then a per-channel affine map.

    Subclasses say how an activation becomes rows (`_rows`) and how gamma and beta
    broadcast over the activation (`_per_channel`).
    """

    attr_defaults = {"eps": 1e-5, "affine": True}
    attr_kinds = {"eps": "positive", "affine": "bool"}

    @property
    def param_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("gamma", "beta") if self.attrs["affine"] else ()

    def init_params(self, shapes, rng, scheme):
        init = {"gamma": np.ones, "beta": np.zeros}
        return {name: init[name](shape) for name, shape in shapes.items()}

    def _rows(self, x: Array) -> Array:
        raise NotImplementedError

    def _per_channel(self, v: Array, x: Array) -> Array:
        raise NotImplementedError

    def _channel_sum(self, a: Array, out: Array) -> None:
        """out <- the per-channel sum of `a` over the batch and every non-channel axis."""
        raise NotImplementedError

    def _ones(self, n: int) -> Array:
        ones = self.buf(f"ones{n}", (n,))
        ones.fill(1)
        return ones

    def _row_mean(self, rows: Array, key: str) -> Array:
        """(rows, 1): each row's mean, as a BLAS matrix-vector product (~4x numpy's row sum)."""
        out = self.buf(key, (rows.shape[0], 1))
        np.matmul(rows, self._ones(rows.shape[1]), out=out[:, 0])
        out /= rows.shape[1]
        return out

    def _row_dot_mean(self, a: Array, b: Array, key: str) -> Array:
        """(rows, 1): mean(a * b) of each row, without materialising the product."""
        out = self.buf(key, (a.shape[0], 1))
        np.einsum("ij,ij->i", a, b, out=out[:, 0])
        out /= a.shape[1]
        return out

    def forward(self, xs, p):
        x = xs[0]
        xhat = self.buf("xhat", x.shape)
        x_rows, rows = self._rows(x), self._rows(xhat)
        np.subtract(x_rows, self._row_mean(x_rows, "mean"), out=rows)
        self.inv = self._row_dot_mean(rows, rows, "inv")  # the biased variance, then 1 / sqrt(var + eps)
        self.inv += float(self.attrs["eps"])
        np.sqrt(self.inv, out=self.inv)
        np.reciprocal(self.inv, out=self.inv)
        rows *= self.inv
        self.xhat = xhat
        if not self.attrs["affine"]:
            return xhat
        self.gamma = self._per_channel(p["gamma"], x)
        out = self.buf("out", x.shape)
        np.multiply(xhat, self.gamma, out=out)
        out += self._per_channel(p["beta"], x)
        return out

    def backward(self, g_out, need, into=None):
        xhat, grads = self.xhat, {}
        if self.attrs["affine"]:
            c = self.gamma.size
            prod = self.buf("prod", xhat.shape)
            np.multiply(g_out, xhat, out=prod)
            grads["gamma"] = self.grad_dest(into, "gamma", (c,))
            self._channel_sum(prod, grads["gamma"])
            grads["beta"] = self.grad_dest(into, "beta", (c,))
            self._channel_sum(g_out, grads["beta"])
        if not need[0]:
            return [None], grads
        g_xhat = self.buf("g_xhat", xhat.shape)
        if self.attrs["affine"]:
            np.multiply(g_out, self.gamma, out=g_xhat)
        else:
            np.copyto(g_xhat, g_out)
        g_in = self.buf("g_in", xhat.shape)
        gr, xr, out = self._rows(g_xhat), self._rows(xhat), self._rows(g_in)
        mean_g = self._row_mean(gr, "mean_g")
        mean_gx = self._row_dot_mean(gr, xr, "mean_gx")
        tmp = self.buf("tmp", gr.shape)
        np.multiply(xr, mean_gx, out=tmp)
        np.subtract(gr, tmp, out=out)
        out -= mean_g
        out *= self.inv
        return [g_in], grads


class LayerNorm(_Normalize):
    """Normalise each example over its last axis (D), then out = xhat * gamma + beta.

    Attributes: `eps` (positive, 1e-5) added to the variance; `affine` (true): a learned
    scale gamma (D,), init 1, and shift beta (D,), init 0. PyTorch's
    ``LayerNorm(D, eps)``: a sequence (T, D) is normalised token by token.
    """

    def param_shapes(self, in_shapes: Sequence[Shape]) -> dict[str, Shape]:
        return {name: (in_shapes[0][-1],) for name in self.param_names}

    def _rows(self, x):
        return x.reshape(-1, x.shape[-1])

    def _per_channel(self, v, x):
        return v

    def _channel_sum(self, a, out):
        rows = self._rows(a)
        np.matmul(self._ones(rows.shape[0]), rows, out=out)


class GroupNorm(_Normalize):
    """Normalise each example (channels first) per group of C / groups channels; per-channel gamma, beta.

    An example is (C, ...); each group of C / groups consecutive channels, with every
    position after the channel axis, shares one mean and variance.

    Attributes: `groups` (required, dividing C); `eps` (positive, 1e-5); `affine` (true:
    gamma (C,), init 1, beta (C,), init 0). PyTorch's ``GroupNorm(groups, C, eps)``;
    groups = 1 normalises the whole example, groups = C each channel (instance norm).
    """

    required_attrs = ("groups",)
    attr_kinds = {**_Normalize.attr_kinds, "groups": "count"}

    def out_shape(self, in_shapes):
        c, g = in_shapes[0][0], int(self.attrs["groups"])
        if c % g:
            raise ValueError(f"groups {g} must divide the {c} channels (axis 0 of the input {list(in_shapes[0])})")
        return in_shapes[0]

    def param_shapes(self, in_shapes):
        return {name: (in_shapes[0][0],) for name in self.param_names}

    def _rows(self, x):
        return x.reshape(x.shape[0] * int(self.attrs["groups"]), -1)

    def _per_channel(self, v, x):
        return v.reshape((-1,) + (1,) * (x.ndim - 2))

    def _channel_sum(self, a, out):
        np.sum(a.reshape(a.shape[0], a.shape[1], -1), axis=(0, 2), out=out)
