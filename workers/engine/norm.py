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

    def _channel_axes(self, x: Array) -> tuple[int, ...]:
        """The axes a per-channel parameter gradient sums over."""
        raise NotImplementedError

    def forward(self, xs, p):
        x = xs[0]
        self.shape = x.shape
        xhat = self.buf("xhat", x.shape)
        rows = self._rows(xhat)
        np.subtract(self._rows(x), self._rows(x).mean(axis=1, keepdims=True), out=rows)
        sq = self.buf("sq", rows.shape)
        np.square(rows, out=sq)
        self.inv = self.buf("inv", (rows.shape[0], 1))
        np.mean(sq, axis=1, keepdims=True, out=self.inv)
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
            np.sum(prod, axis=self._channel_axes(xhat), out=grads["gamma"])
            grads["beta"] = self.grad_dest(into, "beta", (c,))
            np.sum(g_out, axis=self._channel_axes(xhat), out=grads["beta"])
        if not need[0]:
            return [None], grads
        g_xhat = self.buf("g_xhat", xhat.shape)
        if self.attrs["affine"]:
            np.multiply(g_out, self.gamma, out=g_xhat)
        else:
            np.copyto(g_xhat, g_out)
        g_in = self.buf("g_in", xhat.shape)
        gr, xr, out = self._rows(g_xhat), self._rows(xhat), self._rows(g_in)
        prod = self.buf("prod_rows", gr.shape)
        np.multiply(gr, xr, out=prod)
        mean_gx = prod.mean(axis=1, keepdims=True)
        np.subtract(gr, gr.mean(axis=1, keepdims=True), out=out)
        np.multiply(xr, mean_gx, out=prod)
        out -= prod
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

    def _channel_axes(self, x):
        return tuple(range(x.ndim - 1))


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

    def _channel_axes(self, x):
        return (0, *range(2, x.ndim))
