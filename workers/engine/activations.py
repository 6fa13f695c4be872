"""Pointwise activations, one small class each (see docs/backprop.md, 'Per-layer rules').

For out = f(x) applied elementwise, the Jacobian is diagonal, so the g_out -> g_in
recurrence reduces to g_in = g_out * f'(x). Each class writes f'(x) in whichever form
is cheapest given what forward cached (often in terms of `out`).

Where f' is a structural 0 (ReLU off, the flat side of a piece), g_in is 0 even when g_out
is inf or NaN, as in PyTorch: a product with a 0/1 mask would make inf * 0 = NaN there.
The fast product stays, and a NaN it made is repaired afterwards (see docs/engine-numerics.md).
"""
from __future__ import annotations

import numpy as np

from . import kernels
from .op import Op, has_nan
from .special import erf, expit

_INV_SQRT2 = 1.0 / np.sqrt(2.0)
_INV_SQRT2PI = 1.0 / np.sqrt(2.0 * np.pi)
_SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))  # Python floats: float32 arithmetic in float32
_TANH_C = 0.044715

BLOCK = 1 << 16
"""Values per block of an elementwise chain (256 KiB in float32): its passes then run in L2."""


def _in_blocks(*arrays):
    """Matching flat slices of same-shaped arrays (None passes through), BLOCK values at a
    time; slices of the arrays we write are views (our buffers are contiguous)."""
    flat = [None if a is None else a.reshape(-1) for a in arrays]
    n = flat[0].size
    for lo in range(0, n, BLOCK):
        yield [None if a is None else a[lo:lo + BLOCK] for a in flat]


class Pointwise(Op):
    """Shared plumbing: one input of any width, same output width, no parameters."""

    def forward(self, xs, p):
        self.x = xs[0]
        self.out = self.buf("out", self.x.shape)
        self.f(self.x, self.out)
        return self.out

    def backward(self, g_out, need, into=None):
        if not need[0]:
            return [None], {}
        g_in = self.buf("g_in", g_out.shape)
        self.g(g_out, g_in)
        return [g_in], {}

    def f(self, x, out) -> None:
        """out <- f(x)."""
        raise NotImplementedError

    def g(self, g_out, g_in) -> None:
        """g_in <- g_out * f'(x), using the cached self.x / self.out."""
        raise NotImplementedError


class Sigmoid(Pointwise):
    """sigma(x) = 1 / (1 + e^-x);  sigma' = sigma (1 - sigma)."""

    def f(self, x, out):
        expit(x, out=out)

    def g(self, g_out, g_in):
        np.subtract(1, self.out, out=g_in)
        g_in *= self.out
        g_in *= g_out


class Tanh(Pointwise):
    """tanh' = 1 - tanh^2."""

    def f(self, x, out):
        np.tanh(x, out=out)

    def g(self, g_out, g_in):
        np.multiply(self.out, self.out, out=g_in)
        np.subtract(1, g_in, out=g_in)
        g_in *= g_out


class ReLU(Pointwise):
    """max(0, x);  derivative 1 for x > 0, else 0 (the subgradient 0 at x = 0, as PyTorch).

    g_in selects g_out where out > 0 and is 0 elsewhere, whatever g_out holds there (an inf
    from `pow 0.5` at 0 downstream, say). It is computed as g_out * mask, the fastest form,
    and only if that made a NaN (inf * 0 or NaN * 0) are the masked-off NaNs set to 0.
    """

    def f(self, x, out):
        np.maximum(x, 0, out=out)

    def g(self, g_out, g_in):
        kernel = kernels.for_arrays(self.out, g_out, g_in)
        if kernel:  # the passes below in one compiled loop
            kernel.relu_backward(self.out, g_out, g_in, g_in.size)
            return
        mask = self.ws.get("mask", (min(BLOCK, g_in.size),), np.dtype(bool))
        for out, g_o, g_i in _in_blocks(self.out, g_out, g_in):  # the mask stays in cache
            m = mask[:out.size]
            np.greater(out, 0, out=m)
            np.multiply(g_o, m, out=g_i)
            if has_nan(g_i):
                np.copyto(g_i, 0, where=np.isnan(g_i) & ~m)


class LeakyReLU(Pointwise):
    """x for x > 0, else alpha x;  derivative 1 for x > 0, else alpha (alpha at 0, as PyTorch).

    The x > 0 side selects g_out; the other side multiplies it by alpha, so g_out = inf
    gives inf there, or NaN if alpha = 0 (as in PyTorch). |alpha| <= 1000 (the spec checks).
    """

    attr_defaults = {"alpha": 0.01}

    def f(self, x, out):
        np.multiply(x, self.attrs["alpha"], out=out)
        np.copyto(out, x, where=x > 0)

    def g(self, g_out, g_in):
        np.multiply(g_out, self.attrs["alpha"], out=g_in)
        np.copyto(g_in, g_out, where=self.x > 0)


class ELU(Pointwise):
    """x for x > 0, else alpha (e^x - 1);  derivative 1, or alpha e^x = out + alpha.

    out + alpha rounds to exactly 0 once e^x < eps (x < -17 in float32), where alpha e^x is
    tiny but not 0: an inf g_out then gives inf * 0 = NaN. Those entries are recomputed as
    g_out alpha e^x (PyTorch's formula), only when a NaN appears. |alpha| <= 1000.
    """

    attr_defaults = {"alpha": 1.0}

    def f(self, x, out):
        np.minimum(x, 0, out=out)
        np.expm1(out, out=out)
        out *= self.attrs["alpha"]
        np.copyto(out, x, where=x > 0)

    def g(self, g_out, g_in):
        np.add(self.out, self.attrs["alpha"], out=g_in)
        g_in *= g_out
        np.copyto(g_in, g_out, where=self.x > 0)
        if has_nan(g_in):
            exact = np.exp(self.x) * self.attrs["alpha"] * g_out
            np.copyto(g_in, exact, where=np.isnan(g_in) & (self.x <= 0))


class GELU(Pointwise):
    """x Phi(x), Phi the standard normal CDF;  derivative Phi(x) + x phi(x), phi its density.

    Attribute `approximate` ("none": the exact erf form; "tanh": PyTorch's
    approximate="tanh", GPT-2's, Phi(x) ~ (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2,
    several times faster in float32). Forward keeps Phi (and tanh's value) for backward,
    so erf or tanh is evaluated once per step. Each form is a chain of elementwise passes,
    run over blocks of BLOCK values so that the chain's intermediates stay in cache
    (elementwise, so the bits are those of whole-array passes). In float32 the tanh form's
    passes run as compiled loops around numpy's tanh (kernels.py), which keep t only.
    """

    attr_defaults = {"approximate": "none"}
    attr_kinds = {"approximate": "approximate"}

    def f(self, x, out):
        tanh = self.attrs["approximate"] == "tanh"
        self.t = self.buf("t", x.shape) if tanh else None
        kernel = kernels.for_arrays(x, out) if tanh else None
        self.fused = kernel is not None
        if kernel:  # the passes below fused around numpy's tanh; backward recomputes Phi from t
            for x_, out_, t in _in_blocks(x, out, self.t):
                kernel.gelu_tanh_inner(x_, t, t.size, _TANH_C, _SQRT_2_OVER_PI)
                np.tanh(t, out=t)
                kernel.gelu_tanh_outer(x_, t, out_, t.size)
            return
        self.Phi = self.buf("Phi", x.shape)
        for x_, out_, Phi, t in _in_blocks(x, out, self.Phi, self.t):
            if tanh:  # t = tanh(sqrt(2/pi) (x + 0.044715 x^3)), Phi = (1 + t) / 2
                np.multiply(x_, x_, out=t)
                t *= _TANH_C
                t += 1
                t *= x_
                t *= _SQRT_2_OVER_PI
                np.tanh(t, out=t)
                np.add(t, 1, out=Phi)
                Phi *= 0.5
            else:
                np.multiply(x_, _INV_SQRT2, out=Phi)
                erf(Phi, out=Phi)
                Phi += 1
                Phi *= 0.5
            np.multiply(Phi, x_, out=out_)

    def g(self, g_out, g_in):
        if self.fused:  # forward ran the kernels (so they are built): the passes below in one compiled loop
            kernels.kernel.gelu_tanh_backward(self.x, self.t, np.ascontiguousarray(g_out), g_in, g_in.size,
                                              3 * _TANH_C, _SQRT_2_OVER_PI / 2)
            return
        dens = self.buf("dens", self.x.shape)  # x phi(x), or its tanh form
        tanh = self.attrs["approximate"] == "tanh"
        for x, g_o, g_i, d, Phi, t in _in_blocks(self.x, g_out, g_in, dens, self.Phi, self.t):
            if tanh:  # d/dx [x (1 + t) / 2] = Phi + x (1 - t^2) / 2 * sqrt(2/pi) (1 + 3 * 0.044715 x^2)
                np.multiply(x, x, out=d)
                d *= 3 * _TANH_C
                d += 1
                d *= _SQRT_2_OVER_PI / 2
                d *= x
                np.multiply(t, t, out=g_i)
                np.subtract(1, g_i, out=g_i)
                d *= g_i
            else:
                np.multiply(x, x, out=d)
                d *= -0.5
                np.exp(d, out=d)
                d *= _INV_SQRT2PI
                d *= x
            np.add(Phi, d, out=g_i)
            g_i *= g_o


class Softplus(Pointwise):
    """log(1 + e^x), computed stably as logaddexp(0, x);  derivative sigma(x)."""

    def f(self, x, out):
        np.logaddexp(0, x, out=out)

    def g(self, g_out, g_in):
        expit(self.x, out=g_in)
        g_in *= g_out
