"""Merge and elementwise math ops, for general DAGs (see docs/backprop.md, 'Branch and merge nodes').

Binary ops take inputs of equal shape; concat and slice work on the last axis. A value that
feeds several nodes (a branch) receives the sum of their g_in's: the executor
(Model.backward) adds them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .activations import Pointwise
from .op import Op, Shape, has_nan


def _same_shape(in_shapes: Sequence[Shape]) -> Shape:
    if len(set(in_shapes)) != 1:
        if all(len(s) == 1 for s in in_shapes):
            raise ValueError(f"inputs must have the same width, got {[s[0] for s in in_shapes]}")
        raise ValueError(f"inputs must have the same shape, got {[list(s) for s in in_shapes]}")
    return in_shapes[0]


class Add(Op):
    """out = x1 + ... + xk;  every g_in is g_out itself (the Jacobian is the identity)."""

    arity = None

    def out_shape(self, in_shapes):
        return _same_shape(in_shapes)

    def forward(self, xs, p):
        out = self.buf("out", xs[0].shape)
        np.add(xs[0], xs[1], out=out)
        for x in xs[2:]:
            out += x
        return out

    def backward(self, g_out, need, into=None):
        return [g_out if n else None for n in need], {}


class Sub(Op):
    """out = a - b;  g_a = g_out, g_b = -g_out."""

    arity = 2

    def out_shape(self, in_shapes):
        return _same_shape(in_shapes)

    def forward(self, xs, p):
        return np.subtract(xs[0], xs[1], out=self.buf("out", xs[0].shape))

    def backward(self, g_out, need, into=None):
        g_b = np.negative(g_out, out=self.buf("g_b", g_out.shape)) if need[1] else None
        return [g_out if need[0] else None, g_b], {}


class Mul(Op):
    """out = a * b;  g_a = g_out * b, g_b = g_out * a."""

    arity = 2

    def out_shape(self, in_shapes):
        return _same_shape(in_shapes)

    def forward(self, xs, p):
        self.a, self.b = xs
        return np.multiply(self.a, self.b, out=self.buf("out", self.a.shape))

    def backward(self, g_out, need, into=None):
        g_a = np.multiply(g_out, self.b, out=self.buf("g_a", g_out.shape)) if need[0] else None
        g_b = np.multiply(g_out, self.a, out=self.buf("g_b", g_out.shape)) if need[1] else None
        return [g_a, g_b], {}


class Div(Op):
    """out = a / b;  g_a = g_out / b, g_b = -g_out a / b^2 = -g_out out / b."""

    arity = 2

    def out_shape(self, in_shapes):
        return _same_shape(in_shapes)

    def forward(self, xs, p):
        self.a, self.b = xs
        self.out = np.divide(self.a, self.b, out=self.buf("out", self.a.shape))
        return self.out

    def backward(self, g_out, need, into=None):
        g_a = np.divide(g_out, self.b, out=self.buf("g_a", g_out.shape)) if need[0] else None
        g_b = None
        if need[1]:
            g_b = np.multiply(g_out, self.out, out=self.buf("g_b", g_out.shape))
            g_b /= self.b
            np.negative(g_b, out=g_b)
        return [g_a, g_b], {}


class Exp(Pointwise):
    """e^x;  derivative e^x = out."""

    def f(self, x, out):
        np.exp(x, out=out)

    def g(self, g_out, g_in):
        np.multiply(g_out, self.out, out=g_in)


class Log(Pointwise):
    """ln x;  derivative 1/x."""

    def f(self, x, out):
        np.log(x, out=out)

    def g(self, g_out, g_in):
        np.divide(g_out, self.x, out=g_in)


class Sin(Pointwise):
    """sin x;  derivative cos x."""

    def f(self, x, out):
        np.sin(x, out=out)

    def g(self, g_out, g_in):
        np.cos(self.x, out=g_in)
        g_in *= g_out


class Cos(Pointwise):
    """cos x;  derivative -sin x."""

    def f(self, x, out):
        np.cos(x, out=out)

    def g(self, g_out, g_in):
        np.sin(self.x, out=g_in)
        np.negative(g_in, out=g_in)
        g_in *= g_out


class Pow(Pointwise):
    """x^c for a constant c, |c| <= 100;  derivative c x^(c-1), and 0 everywhere for c = 0.

    Beyond |c| = 100, x^c overflows float32 for every |x| > 2.4 (or underflows), so the spec
    rejects it. At x = 0 the derivative is what PyTorch gives: 1 for c = 1, 0 for c > 1,
    inf for 0 < c < 1 (the true one-sided limit). For c = 0, c x^-1 would be 0 * inf = NaN
    at x = 0 (and 0 * inf where g_out is inf): the derivative of the constant 1 is 0, so
    those NaNs are set to 0, as PyTorch's pow_backward returns zeros for c = 0.
    """

    required_attrs = ("exponent",)
    attr_bounds = {"exponent": 100.0}

    def f(self, x, out):
        np.power(x, self.attrs["exponent"], out=out)

    def g(self, g_out, g_in):
        c = float(self.attrs["exponent"])
        np.power(self.x, c - 1, out=g_in)
        g_in *= c
        g_in *= g_out
        if c == 0 and has_nan(g_in):
            np.copyto(g_in, 0, where=np.isnan(g_in))


class Concat(Op):
    """Stack inputs along the last (feature) axis;  g_in_i is the matching block of g_out."""

    arity = None

    def out_shape(self, in_shapes):
        if len({s[:-1] for s in in_shapes}) != 1:
            raise ValueError(f"inputs must agree on all but the last axis, got {[list(s) for s in in_shapes]}")
        return (*in_shapes[0][:-1], sum(s[-1] for s in in_shapes))

    def forward(self, xs, p):
        self.widths = [x.shape[-1] for x in xs]
        return np.concatenate(xs, axis=-1, out=self.buf("out", (*xs[0].shape[:-1], sum(self.widths))))

    def backward(self, g_out, need, into=None):
        g_ins, start = [], 0
        for w, n in zip(self.widths, need):
            g_ins.append(g_out[..., start:start + w] if n else None)
            start += w
        return g_ins, {}


class Slice(Op):
    """Features start:stop (last axis) of the input;  g_in is g_out placed back there, 0 elsewhere."""

    required_attrs = ("start", "stop")

    def out_shape(self, in_shapes):
        start, stop, width = int(self.attrs["start"]), int(self.attrs["stop"]), in_shapes[0][-1]
        if not 0 <= start < stop <= width:
            raise ValueError(f"start:stop must satisfy 0 <= start < stop <= {width}, got {start}:{stop}")
        return (*in_shapes[0][:-1], stop - start)

    def forward(self, xs, p):
        self.shape = xs[0].shape
        return xs[0][..., int(self.attrs["start"]):int(self.attrs["stop"])]

    def backward(self, g_out, need, into=None):
        if not need[0]:
            return [None], {}
        g_in = self.buf("g_in", self.shape)
        g_in.fill(0)
        g_in[..., int(self.attrs["start"]):int(self.attrs["stop"])] = g_out
        return [g_in], {}
