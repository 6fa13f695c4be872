"""Losses as sums of per-example sub-losses, so shard gradients add (docs/backprop.md, 'Sums of sub-losses').

Each loss returns the *sum* over the batch and its gradient with respect to the model's
output, g_out = dL/d out, with no 1/N factor: the coordinator divides once by the global
example count after summing the shards.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .errors import SpecError, unknown_field
from .special import expit
from .workspace import Workspace


class Loss:
    """loss_and_grad(out, y) -> (sum of sub-losses, g_out, number of correct predictions).

    `count(out)` is how many sub-losses a batch holds: one per example, or one per token
    for a sequence's cross-entropy. The coordinator divides the summed gradient once, by
    the global count.
    """

    name: ClassVar[str]
    task: ClassVar[str]  # "classification" or "regression"
    options: ClassVar[dict[str, Any]] = {}  # option -> default

    def __init__(self, **options: Any) -> None:
        self.ws = Workspace()
        self.opts = {**self.options, **options}

    @classmethod
    def option_problem(cls, key: str, value: Any) -> str | None:
        """What is wrong with an option of this loss, or None."""
        if key not in cls.options:
            return unknown_field(key, set(cls.options)) if cls.options else f"loss {cls.name!r} takes no options"
        return None

    def check_output(self, shape: tuple[int, ...]) -> None:
        """Raise ValueError if the model's per-example output shape cannot feed this loss."""

    def count(self, out: np.ndarray) -> int:
        return int(out.shape[0])

    def loss_and_grad(self, out: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, int]:
        raise NotImplementedError

    def loss(self, out: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        loss, _, correct = self.loss_and_grad(out, y)
        return loss, correct


class SoftmaxCrossEntropy(Loss):
    """l_i = logsumexp(z_i) - z_i[y_i], integer labels;  g_out = softmax(z) - onehot(y).

    Stable: the row maximum is subtracted before exponentiating. An output with more axes
    than (batch, classes), e.g. (batch, tokens, classes) with labels (batch, tokens), has
    one sub-loss per position, and `count` says so. With `label_smoothing` e, the target is
    (1 - e) onehot(y) + e/C: l_i = logsumexp(z_i) - (1 - e) z_i[y_i] - (e/C) sum_c z_ic,
    g_out = softmax(z) - (1 - e) onehot(y) - e/C (as PyTorch's `label_smoothing`).
    """

    name = "softmax_cross_entropy"
    task = "classification"
    options = {"label_smoothing": 0.0}

    @classmethod
    def option_problem(cls, key, value):
        problem = super().option_problem(key, value)
        if problem is None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                or not 0 <= value < 1):
            return f"must be a number in [0, 1), got {value!r}"
        return problem

    def check_output(self, shape):
        if shape[-1] < 2:
            raise ValueError(f"needs an output of width >= 2 (one logit per class), got {shape[-1]}")

    def count(self, out):
        return int(out.size // out.shape[-1])

    def loss_and_grad(self, out, y):
        if out.ndim > 2:  # one sub-loss per position: flatten positions into rows
            if np.shape(y) != out.shape[:-1]:
                raise SpecError("y", f"needs one label per position, shape {out.shape[:-1]}, got {np.shape(y)}")
            loss, g, correct = self.loss_and_grad(out.reshape(-1, out.shape[-1]), np.asarray(y).reshape(-1))
            return loss, g.reshape(out.shape), correct
        check_labels(y, out.shape)
        rows = np.arange(out.shape[0])
        g = self.ws.get("g", out.shape, out.dtype)
        np.subtract(out, out.max(axis=1, keepdims=True), out=g)  # shifted logits s
        picked = g[rows, y].astype(np.float64)
        e = float(self.opts["label_smoothing"])
        shifted_sum = float(np.sum(g, dtype=np.float64)) if e else 0.0
        np.exp(g, out=g)
        total = g.sum(axis=1, keepdims=True)
        loss = float(np.sum(np.log(total, dtype=np.float64)) - np.sum(picked))
        g /= total  # softmax
        correct = int(np.count_nonzero(g.argmax(axis=1) == y))
        if e:  # in shifted logits s: l = log sum exp(s) - (1 - e) s_y - (e/C) sum_c s_c
            classes = out.shape[1]
            loss += e * float(np.sum(picked)) - e / classes * shifted_sum
            g[rows, y] -= 1 - e
            g -= e / classes
        else:
            g[rows, y] -= 1
        return loss, g, correct


def check_labels(y: np.ndarray, shape: tuple[int, ...]) -> None:
    """Integer class labels, one per row, each in [0, classes).

    Without this, numpy's negative indexing would score label -1 as the last class, silently.
    """
    n, classes = shape
    y = np.asarray(y)
    if y.dtype.kind not in "iu":
        raise SpecError("y", f"class labels must be integers, got dtype {y.dtype}")
    if y.shape != (n,):
        raise SpecError("y", f"needs one label per row, shape ({n},), got {y.shape}")
    if n and (y.min() < 0 or y.max() >= classes):
        row = int(np.flatnonzero((y < 0) | (y >= classes))[0])
        raise SpecError("y", f"label {int(y[row])} at row {row} is out of range: the model has "
                             f"{classes} classes, labels 0..{classes - 1}")


class BinaryCrossEntropyWithLogits(Loss):
    """l = max(z, 0) - z t + log(1 + e^-|z|) per output (stable);  g_out = sigmoid(z) - t."""

    name = "binary_cross_entropy"
    task = "classification"

    def loss_and_grad(self, out, y):
        t = y.reshape(out.shape).astype(out.dtype, copy=False)
        loss = np.maximum(out, 0) - out * t + np.log1p(np.exp(-np.abs(out)))
        g = self.ws.get("g", out.shape, out.dtype)
        expit(out, out=g)
        g -= t
        correct = int(np.count_nonzero(np.all((out > 0) == (t > 0.5), axis=1)))
        return float(np.sum(loss, dtype=np.float64)), g, correct


class SquaredError(Loss):
    """l_i = ||out_i - y_i||^2;  g_out = 2 (out - y) (docs/backprop.md, 'Per-layer rules')."""

    name = "mse"
    task = "regression"

    def loss_and_grad(self, out, y):
        g = self.ws.get("g", out.shape, out.dtype)
        np.subtract(out, y.reshape(out.shape), out=g)
        loss = float(np.sum(np.square(g, dtype=np.float64)))
        g *= 2
        return loss, g, 0


LOSSES: dict[str, type[Loss]] = {
    cls.name: cls for cls in (SoftmaxCrossEntropy, BinaryCrossEntropyWithLogits, SquaredError)
}
ALIASES = {"cross_entropy": "softmax_cross_entropy", "softmax_ce": "softmax_cross_entropy",
           "bce": "binary_cross_entropy", "bce_with_logits": "binary_cross_entropy",
           "squared_error": "mse"}
