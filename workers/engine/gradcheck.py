"""Backprop against finite differences, in float64, on any spec.

For each checked coordinate j, the fourth-order central difference
(-L(t + 2h e_j) + 8 L(t + h e_j) - 8 L(t - h e_j) + L(t - 2h e_j)) / 12h, whose truncation
error is O(h^4): with h = 1e-4 both it and the rounding error (~ eps |L| / h) stay far
below 1e-6 of the gradient, where the plain two-point form would leave ~1e-6 noise on
small components. Compared with backprop by relative error |a - b| / max(|a|, |b|, floor).

- Rounding noise: each L carries an error of a few eps (1 + |L|), so the stencil carries
  ~ eps (1 + |L|) / h. A component is compared absolutely below the floor where a relative
  error of `tol` means NOISE_MARGIN times that noise: an exactly-zero gradient (sin^2 + cos^2,
  a ReLU that is off) then passes, while any real error above ~1e-10 still fails.
- NaN or inf in backprop or in the differences fails the check, always.
- Kinks: the stencil spans t +- 2h; if L is not smooth there (ReLU at 0; ELU at 0, where
  only the second derivative jumps), the central difference is wrong, not backprop. A
  coordinate that fails is re-measured with fourth-order one-sided differences, each from
  one side only; if backprop matches one of them, it is a kink at a sampled point, reported
  apart and not a failure. A wrong gradient matches neither side.
Inputs are checked too, through the same g_out -> g_in recurrence. The mathematics is in
docs/engine-numerics.md.

    dptrain gradcheck examples/residual_teacher.yaml
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from .errors import SpecError
from .model import Model
from .spec import ModelSpec

EPS = float(np.finfo(np.float64).eps)
NOISE_MARGIN = 100.0  # the absolute tolerance, in units of the stencil's rounding noise eps (1 + |L|) / h
CENTRAL = {1: 8.0, 2: -1.0}  # f'(0) ~ sum_k c_k (f(kh) - f(-kh)) / 12h, error O(h^4)
ONE_SIDED = {0: -25.0, 1: 48.0, 2: -36.0, 3: 16.0, 4: -3.0}  # f'(0) ~ sum_k c_k f(kh) / 12h, error O(h^4)


@dataclass(frozen=True)
class Probe:
    """One checked coordinate: backprop's value against the finite differences of the loss."""

    where: str  # e.g. "h.W[0, 1]" or "input[2, 0]"
    backprop: float
    central: float
    error: float  # relative error, backprop vs central; inf if either is NaN or inf
    left: float | None = None  # one-sided differences, measured only when `error` exceeds the tolerance
    right: float | None = None
    kink: str = ""  # "left", "right" or "both": the side(s) whose derivative backprop matches

    @property
    def finite(self) -> bool:
        return math.isfinite(self.backprop) and math.isfinite(self.central)


@dataclass
class GradcheckReport:
    max_rel_error: float  # over the coordinates where L is smooth; inf if any value is NaN or inf
    checked: int
    worst: str  # which parameter / input coordinate had the largest error
    per_tensor: dict[str, float] = field(default_factory=dict)
    tol: float = 1e-6
    nonfinite: list[Probe] = field(default_factory=list)  # NaN or inf in backprop or the differences
    kinks: list[Probe] = field(default_factory=list)  # non-smooth points inside a stencil: not failures
    wrong: list[Probe] = field(default_factory=list)  # smooth points where backprop disagrees
    loss: float = 0.0  # L at the sampled point; NaN or inf fails the check too

    def ok(self) -> bool:
        return math.isfinite(self.loss) and not self.nonfinite and not self.wrong

    def lines(self) -> list[str]:
        """The human report: one line per tensor, the kinks, then the verdict."""
        out = [f"  {name:30s} max rel. error {err:.2e}" for name, err in self.per_tensor.items()]
        for p in self.kinks:
            out.append(f"  kink at a sampled point, not an error: {p.where}: backprop {p.backprop:.6g} is the "
                       f"derivative from the {_sides(p.kink)} (left {p.left:.6g}, right {p.right:.6g}); "
                       f"the central difference {p.central:.6g} straddles the kink")
        kinks = f", {len(self.kinks)} at kinks" if self.kinks else ""
        scope = f"({self.checked} coordinates{kinks}, tolerance {self.tol:g})"
        if not math.isfinite(self.loss):
            out.append(f"FAILED: the loss itself is {self.loss} at the sampled point {scope}")
        elif self.nonfinite:
            p = self.nonfinite[0]
            out.append(f"FAILED: NaN or inf at {len(self.nonfinite)} coordinate(s), first {p.where}: "
                       f"backprop {p.backprop:.6g}, finite difference {p.central:.6g} {scope}")
        elif self.wrong:
            p = max(self.wrong, key=lambda q: q.error)
            out.append(f"FAILED: wrong gradient at {len(self.wrong)} coordinate(s): max relative error "
                       f"{p.error:.2e} at {p.where} (backprop {p.backprop:.6g}, finite difference "
                       f"{p.central:.6g}; one-sided {p.left:.6g} / {p.right:.6g}) {scope}")
        else:
            out.append(f"ok: max relative error {self.max_rel_error:.2e} at {self.worst} {scope}")
        return out


def rel_error(a: np.ndarray, b: np.ndarray, floor: float = 1e-8) -> np.ndarray:
    return np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), floor)


def random_batch(model: Model, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Inputs away from 0 (log, div and pow stay defined), or token ids, and targets the loss accepts."""
    shape = (n, *model.input_shape)
    if model.spec.input.dtype == "int":
        X = rng.integers(0, model.spec.input.vocab, size=shape)
    else:
        X = rng.uniform(0.5, 1.5, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    out = (n, *model.output_shape)
    if model.spec.loss == "softmax_cross_entropy":
        y = rng.integers(0, out[-1], size=out[:-1])
    elif model.spec.loss == "binary_cross_entropy":
        y = rng.integers(0, 2, size=out).astype(np.float64)
    else:
        y = rng.standard_normal(out)
    return X, y


def gradcheck(spec: ModelSpec | Mapping[str, Any], seed: int = 0, n: int = 4, h: float = 1e-4,
              max_per_tensor: int = 20, X: np.ndarray | None = None, y: np.ndarray | None = None,
              theta: np.ndarray | None = None, tol: float = 1e-6) -> GradcheckReport:
    """Compare backprop with finite differences on up to `max_per_tensor` coordinates per tensor."""
    if not 0 < tol < 1 or not 0 < h < 1:
        raise ValueError(f"tol and h must lie in (0, 1), got tol={tol!r}, h={h!r}")
    model = Model(spec, dtype=np.float64)
    if model.loss_fn is None:
        raise SpecError("model.loss", "gradcheck differentiates the loss: the spec needs one")
    rng = np.random.default_rng(seed)
    if X is None or y is None:
        X, y = random_batch(model, n, rng)
    ints = model.spec.input.dtype == "int"
    X = model.check_input(X) if ints else np.asarray(X, dtype=np.float64)
    theta = model.init_params(seed) if theta is None else np.array(theta, dtype=np.float64)
    with np.errstate(all="ignore"):  # NaN and inf are findings here, reported below
        grad = model.grad_sum(theta, X, y).grad.copy()
        z = model.forward(theta, X)
        g_out = model.loss_fn.loss_and_grad(z, y)[1].copy()
        g_x, _ = model.backward(g_out, input_grad=not ints)

        def loss_at(t: np.ndarray, x: np.ndarray) -> float:
            return model.evaluate(t, x, y).loss

        loss0 = loss_at(theta, X)
        scale = abs(loss0) if math.isfinite(loss0) else 0.0
        floor = NOISE_MARGIN * EPS * (1 + scale) / h / tol
        probe = _Prober(h, tol, floor, loss0)
        tensors: list[tuple[str, list[Probe]]] = []
        for p in model.params:
            if not p.trainable:  # buffers (batch norm's running statistics, standardize's): no gradient by design
                continue
            idx = rng.choice(p.size, size=min(p.size, max_per_tensor), replace=False)
            probes = [probe(f"{p.name}{_index(j, p.shape)}", lambda t: loss_at(t, X), theta, p.offset + j,
                            float(grad[p.offset + j])) for j in idx]
            tensors.append((p.name, probes))
        if not ints:  # token ids have no gradient; float inputs do (backprop to the data)
            flat_x = X.ravel()
            idx = rng.choice(flat_x.size, size=min(flat_x.size, max_per_tensor), replace=False)
            probes = [probe(f"input{_index(j, X.shape)}", lambda v: loss_at(theta, v.reshape(X.shape)), flat_x, j,
                            float(g_x.ravel()[j])) for j in idx]
            tensors.append(("input", probes))
    return _report(tensors, tol, loss0)


class _Prober:
    """Measures one coordinate: the central difference, and the one-sided ones if it disagrees."""

    def __init__(self, h: float, tol: float, floor: float, loss0: float) -> None:
        self.h, self.tol, self.floor, self.loss0 = h, tol, floor, loss0

    def __call__(self, where: str, f: Callable[[np.ndarray], float], v: np.ndarray, j: int,
                 backprop: float) -> Probe:
        at = _Shifted(f, v, j, self.h, self.loss0)
        central = sum(c * (at(k) - at(-k)) for k, c in CENTRAL.items()) / (12 * self.h)
        if not (math.isfinite(backprop) and math.isfinite(central)):
            return Probe(where, backprop, central, math.inf)
        error = self._err(backprop, central)
        if error <= self.tol:
            return Probe(where, backprop, central, error)
        left = -sum(c * at(-k) for k, c in ONE_SIDED.items()) / (12 * self.h)
        right = sum(c * at(k) for k, c in ONE_SIDED.items()) / (12 * self.h)
        sides = [s for s, d in (("left", left), ("right", right)) if self._err(backprop, d) <= self.tol]
        kink = "both" if len(sides) == 2 else (sides[0] if sides else "")
        return Probe(where, backprop, central, error, left, right, kink)

    def _err(self, a: float, b: float) -> float:
        return abs(a - b) / max(abs(a), abs(b), self.floor)


class _Shifted:
    """f at v + k h e_j, each k evaluated once (the one-sided stencils reuse the central points)."""

    def __init__(self, f: Callable[[np.ndarray], float], v: np.ndarray, j: int, h: float, f0: float) -> None:
        self.f, self.v, self.j, self.h = f, v.copy(), j, h
        self.v0 = float(v[j])
        self.cache: dict[int, float] = {0: f0}

    def __call__(self, k: int) -> float:
        if k not in self.cache:
            self.v[self.j] = self.v0 + k * self.h
            self.cache[k] = self.f(self.v)
            self.v[self.j] = self.v0
        return self.cache[k]


def _report(tensors: list[tuple[str, list[Probe]]], tol: float, loss: float) -> GradcheckReport:
    """Sort the probes: NaN or inf, kinks, and the smooth ones whose worst error is the verdict."""
    all_probes = [p for _, probes in tensors for p in probes]
    nonfinite = [p for p in all_probes if not p.finite]
    kinks = [p for p in all_probes if p.finite and p.kink]
    smooth = [p for p in all_probes if p.finite and not p.kink]
    per_tensor = {}
    for name, probes in tensors:
        errs = [math.inf if not p.finite else p.error for p in probes if not p.kink]
        per_tensor[name] = max(errs, default=0.0)
    worst = nonfinite[0] if nonfinite else max(smooth, key=lambda p: p.error, default=None)
    return GradcheckReport(
        max_rel_error=math.inf if nonfinite or not math.isfinite(loss) else max((p.error for p in smooth), default=0.0),
        checked=len(all_probes), worst=worst.where if worst else "", per_tensor=per_tensor, tol=tol,
        nonfinite=nonfinite, kinks=kinks, wrong=[p for p in smooth if p.error > tol], loss=loss)


def _sides(kink: str) -> str:
    return "left and the right" if kink == "both" else kink


def _index(flat: int, shape: tuple[int, ...]) -> list[int]:
    return [int(i) for i in np.unravel_index(flat, shape)]
