"""Backprop against central finite differences, in float64, on any spec.

For each checked coordinate j, the fourth-order central difference
(-L(t + 2h e_j) + 8 L(t + h e_j) - 8 L(t - h e_j) + L(t - 2h e_j)) / 12h, whose truncation
error is O(h^4): with h = 1e-4 both it and the rounding error (~ eps |L| / h) stay far
below 1e-6 of the gradient, where the plain two-point form would leave ~1e-6 noise on
small components. Compared with backprop by relative error |a - b| / max(|a|, |b|, tiny).
Components below the stencil's noise scale, 1e6 * eps * (1 + |L|) / h, are compared
against that scale instead (an exactly-zero gradient, e.g. behind a ReLU that is off,
cannot be told from rounding noise by finite differences).
Inputs are checked too, through the same g_out -> g_in recurrence.

    dptrain gradcheck examples/residual_teacher.yaml
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .model import Model
from .spec import ModelSpec


@dataclass
class GradcheckReport:
    max_rel_error: float
    checked: int
    worst: str  # which parameter / input coordinate had the largest error
    per_tensor: dict[str, float] = field(default_factory=dict)

    def ok(self, tol: float = 1e-6) -> bool:
        return self.max_rel_error <= tol


def rel_error(a: np.ndarray, b: np.ndarray, floor: float = 1e-8) -> np.ndarray:
    return np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), floor)


def random_batch(model: Model, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Inputs away from 0 (log, div and pow stay defined) and targets the loss accepts."""
    X = rng.uniform(0.5, 1.5, size=(n, model.spec.input)) * rng.choice([-1.0, 1.0], size=(n, model.spec.input))
    width = model.output_dim
    if model.spec.loss == "softmax_cross_entropy":
        y = rng.integers(0, width, size=n)
    elif model.spec.loss == "binary_cross_entropy":
        y = rng.integers(0, 2, size=(n, width)).astype(np.float64)
    else:
        y = rng.standard_normal((n, width))
    return X, y


def gradcheck(spec: ModelSpec | Mapping[str, Any], seed: int = 0, n: int = 4, h: float = 1e-4,
              max_per_tensor: int = 20, X: np.ndarray | None = None, y: np.ndarray | None = None,
              theta: np.ndarray | None = None) -> GradcheckReport:
    """Compare grad_sum with central differences on up to `max_per_tensor` coordinates per tensor."""
    model = Model(spec, dtype=np.float64)
    rng = np.random.default_rng(seed)
    if X is None or y is None:
        X, y = random_batch(model, n, rng)
    theta = model.init_params(seed) if theta is None else np.array(theta, dtype=np.float64)
    grad = model.grad_sum(theta, X, y).grad.copy()
    z = model.forward(theta, X)
    g_out = model.loss_fn.loss_and_grad(z, y)[1].copy()
    g_x, _ = model.backward(g_out, input_grad=True)

    def loss_at(t: np.ndarray, x: np.ndarray) -> float:
        return model.evaluate(t, x, y).loss

    floor = 1e6 * np.finfo(np.float64).eps * (1 + abs(loss_at(theta, X))) / h

    errors: dict[str, float] = {}
    worst, worst_err, checked = "", 0.0, 0
    for p in model.params:
        idx = rng.choice(p.size, size=min(p.size, max_per_tensor), replace=False) + p.offset
        numeric = np.array([_central(lambda t: loss_at(t, X), theta, j, h) for j in idx])
        err = rel_error(grad[idx], numeric, floor)
        errors[p.name] = float(err.max())
        checked += len(idx)
        if err.max() > worst_err:
            worst, worst_err = f"{p.name}{_index(idx[err.argmax()] - p.offset, p.shape)}", float(err.max())
    flat_x = X.ravel()
    idx = rng.choice(flat_x.size, size=min(flat_x.size, max_per_tensor), replace=False)
    numeric = np.array([_central(lambda v: loss_at(theta, v.reshape(X.shape)), flat_x, j, h) for j in idx])
    err = rel_error(g_x.ravel()[idx], numeric, floor)
    errors["input"] = float(err.max())
    checked += len(idx)
    if err.max() > worst_err:
        worst, worst_err = f"input{_index(idx[err.argmax()], X.shape)}", float(err.max())
    return GradcheckReport(max_rel_error=worst_err, checked=checked, worst=worst, per_tensor=errors)


def _central(f, v: np.ndarray, j: int, h: float) -> float:
    v = v.copy()
    v0 = v[j]

    def at(k: int) -> float:
        v[j] = v0 + k * h
        return f(v)

    return (-at(2) + 8 * at(1) - 8 * at(-1) + at(-2)) / (12 * h)


def _index(flat: int, shape: tuple[int, ...]) -> list[int]:
    return [int(i) for i in np.unravel_index(flat, shape)]
