"""Parametrised layers: linear (W, b) and PReLU (a learned slope per feature)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .op import Op, Shape, has_nan


def weights_and_bias(shapes, rng: np.random.Generator, scheme: str, fan_in: int, fan_out: int) -> dict:
    """W ~ N(0, std^2) and b = 0: He (std = sqrt(2 / fan_in)) for ReLU-like successors, which
    keeps the activations' variance ~1, Glorot (sqrt(2 / (fan_in + fan_out))) otherwise."""
    std = np.sqrt(2.0 / fan_in) if scheme == "he" else np.sqrt(2.0 / (fan_in + fan_out))
    out = {"W": rng.standard_normal(shapes["W"]) * std}
    if "b" in shapes:
        out["b"] = np.zeros(shapes["b"])
    return out


class Linear(Op):
    """out = x W + b over the last axis, with W of shape (fan_in, units).

    Backward (see docs/backprop.md, 'Per-layer rules'): g_W = x^T g_out, g_b = 1^T g_out (a
    sum over the batch, so shard gradients add), g_in = g_out W^T. An input with more axes
    (a sequence's tokens) is the same product on its rows flattened, each row one more
    term of the sums.
    """

    required_attrs = ("units",)
    attr_defaults = {"bias": True}

    @property
    def param_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("W", "b") if self.attrs["bias"] else ("W",)

    def out_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        return (*in_shapes[0][:-1], int(self.attrs["units"]))

    def param_shapes(self, in_shapes: Sequence[Shape]) -> dict[str, Shape]:
        shapes = {"W": (in_shapes[0][-1], int(self.attrs["units"]))}
        if self.attrs["bias"]:
            shapes["b"] = (int(self.attrs["units"]),)
        return shapes

    def init_params(self, shapes, rng, scheme):
        fan_in, fan_out = shapes["W"]
        return weights_and_bias(shapes, rng, scheme, fan_in, fan_out)

    def forward(self, xs, p):
        x = xs[0]
        self.shape = x.shape
        self.x = x.reshape(-1, x.shape[-1])  # a view: activations are C-contiguous
        self.W = p["W"]
        out = self.buf("out", (self.x.shape[0], self.W.shape[1]))
        np.matmul(self.x, self.W, out=out)
        if "b" in p:
            out += p["b"]
        return out.reshape(*x.shape[:-1], self.W.shape[1])

    def backward(self, g_out, need, into=None):
        x, W = self.x, self.W
        g_out = g_out.reshape(-1, W.shape[1])
        grads = {"W": self.grad_dest(into, "W", W.shape)}
        np.matmul(x.T, g_out, out=grads["W"])
        if self.attrs["bias"]:
            grads["b"] = self.grad_dest(into, "b", (W.shape[1],))
            np.sum(g_out, axis=0, out=grads["b"])
        g_in = None
        if need[0]:
            g_in = self.buf("g_in", x.shape)
            np.matmul(g_out, W.T, out=g_in)
            g_in = g_in.reshape(self.shape)
        return [g_in], grads


class PReLU(Op):
    """out = x if x > 0 else a * x, with a learned slope a per feature (last axis; He et al. 2015).

    g_in = g_out * (1 if x > 0 else a): the slope at x = 0 is a, as for leaky_relu and in
    PyTorch. g_a = sum over the batch of g_out * min(x, 0), where x > 0 contributes 0 even
    if g_out is inf (repaired only when a NaN appears). |init| <= 1000 (the spec checks).
    """

    param_names = ("alpha",)
    attr_defaults = {"init": 0.25}

    def param_shapes(self, in_shapes):
        return {"alpha": (in_shapes[0][-1],)}

    def init_params(self, shapes, rng, scheme):
        return {"alpha": np.full(shapes["alpha"], float(self.attrs["init"]))}

    def forward(self, xs, p):
        x = xs[0]
        self.x, self.alpha = x, p["alpha"]
        self.neg = self.ws.get("neg", x.shape, np.dtype(bool))
        np.less(x, 0, out=self.neg)
        out = self.buf("out", x.shape)
        np.multiply(x, self.alpha, out=out)
        np.copyto(out, x, where=~self.neg)
        return out

    def backward(self, g_out, need, into=None):
        pos = self.ws.get("pos", self.x.shape, np.dtype(bool))
        np.greater(self.x, 0, out=pos)
        x_neg = self.buf("x_neg", self.x.shape)
        np.minimum(self.x, 0, out=x_neg)
        x_neg *= g_out
        g_alpha = self.grad_dest(into, "alpha", self.alpha.shape)
        rows = x_neg.reshape(-1, x_neg.shape[-1])
        np.sum(rows, axis=0, out=g_alpha)
        if has_nan(g_alpha):  # 0 * inf where x > 0: those rows contribute 0
            np.copyto(x_neg, 0, where=pos)
            np.sum(rows, axis=0, out=g_alpha)
        g_in = None
        if need[0]:
            g_in = self.buf("g_in", self.x.shape)
            np.multiply(g_out, self.alpha, out=g_in)
            np.copyto(g_in, g_out, where=pos)
        return [g_in], {"alpha": g_alpha}
