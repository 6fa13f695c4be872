"""Feature standardization as part of the model: out = (x - mean) / std, per input value.

`dataset.standardize: true` puts this op in front of the model (`dptrain.core.config`),
and the trainer fills `mean` and `std` from the training split alone before the first
step. Because the statistics are parameters of the model, everything that runs it later
(prediction, saliency, the PyTorch and ONNX exports, a fork) applies the same transform
to raw inputs, with nothing to remember beside the weights.

They are not trained: like batch norm's running statistics they are buffers, which the
coordinator restores after every optimizer step (no gradient, no weight decay).
"""
from __future__ import annotations

import numpy as np

from .op import Op


class Standardize(Op):
    """out = (x - mean) / std per input value, with mean and std fixed from the training split.

    No attributes. `mean` and `std` have the example's shape; they start at 0 and 1 (the
    identity) and are set by the trainer from the training data (a value with std 0 keeps
    std 1). g_in = g_out / std; they are never trained."""

    uses_context = True  # training reports (empty) statistics, so the coordinator restores the buffers
    buffer_names = ("mean", "std")
    param_names = ("mean", "std")

    def param_shapes(self, in_shapes):
        return {"mean": in_shapes[0], "std": in_shapes[0]}

    def init_params(self, shapes, rng, scheme):
        return {"mean": np.zeros(shapes["mean"]), "std": np.ones(shapes["std"])}

    def forward(self, xs, p):
        self.std = p["std"]
        out = np.subtract(xs[0], p["mean"], out=self.buf("out", xs[0].shape))
        out /= self.std
        train = self.ctx is not None and self.ctx.train
        self.batch_stats = np.zeros(0) if train else None  # nothing to reduce: the coordinator only restores
        return out

    def backward(self, g_out, need, into=None):
        grads = {}
        for name in self.buffer_names:
            grads[name] = self.grad_dest(into, name, self.std.shape)
            grads[name].fill(0)
        if not need[0]:
            return [None], grads
        return [np.divide(g_out, self.std, out=self.buf("g_in", g_out.shape))], grads

    def update(self, running, before, stats) -> None:
        """After the optimizer step: the statistics as they were (an optimizer never moves them)."""
        for name in self.buffer_names:
            running[name][...] = before[name]

    def stats_size(self, running) -> int:
        return 0


def statistics(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-value mean and standard deviation of a training set (float64 sums; std 0 -> 1)."""
    mean = X.mean(axis=0, dtype=np.float64)
    std = X.std(axis=0, dtype=np.float64)
    return mean, np.where(std > 0, std, 1.0)
