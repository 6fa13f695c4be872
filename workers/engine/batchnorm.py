"""Batch normalization with its statistics taken per micro-chunk (ghost batch normalization).

A forward pass in training normalises each channel by the mean and variance of the call's
examples, and a call is one micro-chunk: chunks are cut from the batch independently of
the worker count, so the loss is still a sum (over chunks, of each chunk's sub-losses)
and 1, 2 or 8 workers give the same bits. Per chunk it is exactly PyTorch's BatchNorm in
training mode with batch = `chunk_size` (biased variance in the normalisation).

Running statistics for evaluation live in the flat parameter vector as two untrained
tensors (`running_mean`, `running_var`), so checkpoints, broadcast and export carry them.
Their gradient is 0; instead each chunk reports its statistics (`batch_stats`), the
coordinator adds them along the fixed reduction tree, and after the optimizer step sets
running <- (1 - momentum) running + momentum * (the step's mean over chunks) with the
unbiased chunk variance, as PyTorch does per forward call: with one chunk per step the
two agree exactly; with several, PyTorch would update once per chunk in sequence, here
once per step with the chunks' average (deterministic, independent of the worker count).

In float32 the statistics, the parameter gradients' sums and the per-channel passes run as
compiled loops (kernels.py) that sum in numpy's order, so the bits are numpy's.
"""
from __future__ import annotations

import numpy as np

from . import kernels
from .op import Op


class BatchNorm(Op):
    """Normalise each channel over the micro-chunk's examples; running statistics in evaluation.

    A channel is axis 0 of an example (C of (C, H, W), or each feature of a vector); the
    statistics run over the call's examples and the remaining axes. Attributes: `eps` (1e-5),
    `momentum` (0.1), `affine` (true: a scale gamma, init 1, and a shift beta, init 0).
    In evaluation (no training context) the running statistics are used instead."""

    uses_context = True
    attr_defaults = {"eps": 1e-5, "momentum": 0.1, "affine": True}
    attr_kinds = {"eps": "positive", "momentum": "prob", "affine": "bool"}
    buffer_names = ("running_mean", "running_var")

    @property
    def param_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return (("gamma", "beta") if self.attrs["affine"] else ()) + self.buffer_names

    def param_shapes(self, in_shapes):
        c = (in_shapes[0][0],)
        return {name: c for name in self.param_names}

    def init_params(self, shapes, rng, scheme):
        ones, zeros = np.ones, np.zeros
        init = {"gamma": ones, "beta": zeros, "running_mean": zeros, "running_var": ones}
        return {name: init[name](shape) for name, shape in shapes.items()}

    def _axes(self, x: np.ndarray) -> tuple[int, ...]:
        return (0, *range(2, x.ndim))  # the batch and every axis after the channel

    def _per_channel(self, v: np.ndarray, x: np.ndarray) -> np.ndarray:
        return v.reshape((1, -1) + (1,) * (x.ndim - 2))

    def _kernel(self, *arrays):
        """The compiled kernels for this call's arrays, or None (numpy's passes). They need two
        channels or more: with one, numpy's reduction over (0, 2, 3) is one flat pairwise sum."""
        x = arrays[0]
        return kernels.for_arrays(*arrays) if x.size and x.shape[1] > 1 else None

    def _planes(self, x: np.ndarray) -> tuple[int, int, int, int]:
        """(B, C, H W, numpy's buffer size): how the kernels walk the planes of a (B, C, ...) array."""
        B, C = x.shape[:2]
        return B, C, x.size // (B * C), np.getbufsize()

    def _moments(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The float64 mean and biased variance of each channel, as x.mean and x.var compute them
        (kernels.channel_sums: numpy's summation order)."""
        kernel, axes = self._kernel(x), self._axes(x)
        if not kernel:
            return x.mean(axis=axes, dtype=np.float64), x.var(axis=axes, dtype=np.float64)
        m, planes = x.size // x.shape[1], self._planes(x)
        mean, var = np.empty(planes[1]), np.empty(planes[1])
        kernel.channel_sums(0, x, None, mean, *planes)
        mean /= m
        kernel.channel_sums(1, x, mean, var, *planes)
        var /= m
        return mean, var

    def forward(self, xs, p):
        x = xs[0]
        self.train = self.ctx is not None and self.ctx.train
        if self.train:
            mean, var = self._moments(x)
            m = x.size // x.shape[1] if x.size else 0
            unbiased = var * (m / (m - 1)) if m > 1 else var
            self.batch_stats = np.concatenate([[x.shape[0]], mean * x.shape[0], unbiased * x.shape[0]])
        else:
            mean, var = p["running_mean"].astype(np.float64), p["running_var"].astype(np.float64)
            self.batch_stats = None
        inv = (1.0 / np.sqrt(var + float(self.attrs["eps"]))).astype(self.dtype)
        self.inv = self._per_channel(inv, x)
        self.xhat = self.buf("xhat", x.shape)
        affine = self.attrs["affine"]
        out = self.buf("out", x.shape) if affine else None
        if affine:
            self.gamma = self._per_channel(p["gamma"], x)
        kernel = self._kernel(x, *((p["gamma"], p["beta"]) if affine else ()))
        if kernel:  # the passes below in one loop
            kernel.bn_normalize(x, mean.astype(self.dtype), inv, p["gamma"] if affine else None,
                                p["beta"] if affine else None, self.xhat, out, *self._planes(x)[:3])
            return out if affine else self.xhat
        np.subtract(x, self._per_channel(mean.astype(self.dtype), x), out=self.xhat)
        self.xhat *= self.inv
        if not affine:
            return self.xhat
        np.multiply(self.xhat, self.gamma, out=out)
        out += self._per_channel(p["beta"], x)
        return out

    def backward(self, g_out, need, into=None):
        x_shape, axes = self.xhat.shape, self._axes(self.xhat)
        c = x_shape[1]
        grads = {}
        for name in self.buffer_names:  # untrained: the coordinator updates them itself
            grads[name] = self.grad_dest(into, name, (c,))
            grads[name].fill(0)
        kernel = self._kernel(self.xhat, g_out)
        planes = self._planes(self.xhat)
        if self.attrs["affine"]:
            grads["gamma"] = self.grad_dest(into, "gamma", (c,))
            grads["beta"] = self.grad_dest(into, "beta", (c,))
            if kernel:  # the sums below, in numpy's order
                kernel.channel_sums(3, g_out, self.xhat, grads["gamma"], *planes)
                kernel.channel_sums(2, g_out, None, grads["beta"], *planes)
            else:
                prod = self.buf("prod", x_shape)
                np.multiply(g_out, self.xhat, out=prod)
                np.sum(prod, axis=axes, out=grads["gamma"])
                np.sum(g_out, axis=axes, out=grads["beta"])
        if not need[0]:
            return [None], grads
        g_xhat = self.buf("g_xhat", x_shape)
        if self.attrs["affine"]:
            np.multiply(g_out, self.gamma, out=g_xhat)
        else:
            np.copyto(g_xhat, g_out)
        g_in = self.buf("g_in", x_shape)
        if not self.train:  # fixed statistics: a per-channel affine map
            np.multiply(g_xhat, self.inv, out=g_in)
            return [g_in], grads
        # g_in = inv * (g_xhat - mean(g_xhat) - xhat * mean(g_xhat * xhat)), means over `axes`
        m = g_out.size // c
        if kernel:  # the passes below: two sums in numpy's order, then one loop
            sums = self.buf("sums", (2, c))
            kernel.channel_sums(2, g_xhat, None, sums[0], *planes)
            kernel.channel_sums(3, g_xhat, self.xhat, sums[1], *planes)
            sums /= m
            kernel.bn_input_grad(g_xhat, self.xhat, sums[0], sums[1], self.inv.reshape(-1), g_in, *planes[:3])
            return [g_in], grads
        mean_g = g_xhat.sum(axis=axes, keepdims=True) / m
        prod = self.buf("prod2", x_shape)
        np.multiply(g_xhat, self.xhat, out=prod)
        mean_gx = prod.sum(axis=axes, keepdims=True) / m
        np.subtract(g_xhat, mean_g, out=g_in)
        np.multiply(self.xhat, mean_gx, out=prod)
        g_in -= prod
        g_in *= self.inv
        return [g_in], grads

    def update(self, running: dict[str, np.ndarray], before: dict[str, np.ndarray], stats: np.ndarray) -> None:
        """running <- (1 - momentum) before + momentum * (stats' chunk-weighted mean), in place."""
        c = running["running_mean"].shape[0]
        n, mean_sum, var_sum = stats[0], stats[1:1 + c], stats[1 + c:1 + 2 * c]
        mom = float(self.attrs["momentum"])
        for name, total in (("running_mean", mean_sum), ("running_var", var_sum)):
            new = (1.0 - mom) * before[name].astype(np.float64) + mom * (total / n)
            running[name][...] = new.astype(running[name].dtype)

    def stats_size(self, running: dict[str, np.ndarray]) -> int:
        """Length of `batch_stats`: the example count, then C mean sums and C variance sums."""
        return 1 + 2 * running["running_mean"].size
