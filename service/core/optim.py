"""Coordinator-side optimizers on one flat parameter vector.

The coordinator holds the model as a single contiguous 1-D array ``theta`` and receives
the MEAN gradient ``g`` of the global batch. Each :meth:`Optimizer.step` then applies,
in this order (t = 1-based update count):

1. global-norm clipping (Pascanu et al. 2013): ``n = ||g||_2`` (float64, pairwise sum);
   if ``n > clip_norm``: ``g <- g * clip_norm / n``;
2. weight decay: L2 ``g <- g + wd * theta`` for every optimizer except ``adamw``, which
   decays decoupled from the gradient (Loshchilov & Hutter 2019):
   ``theta <- theta * (1 - lr * wd)`` (as ``torch.optim.AdamW``);
3. the update rule, with the semantics of ``torch.optim`` (dampening 0, not centered,
   no amsgrad):

   * ``sgd``:      ``theta -= lr * g``
   * ``momentum``: ``b = g`` (t = 1) else ``b = mu * b + g``;  ``theta -= lr * b``
   * ``nesterov``: same ``b``;  ``theta -= lr * (g + mu * b)``
   * ``rmsprop``:  ``v = alpha * v + (1 - alpha) * g^2``;  ``theta -= lr * g / (sqrt(v) + eps)``
   * ``adam(w)``:  ``m = beta1 * m + (1 - beta1) * g`` (evaluated as torch's
     ``m + (1 - beta1) * (g - m)``);  ``v = beta2 * v + (1 - beta2) * g^2``;
     ``theta -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)``

All arithmetic runs in the parameter dtype (float32 or float64) on preallocated buffers
with ``out=``: no array temporaries on the hot path (~670k parameters every step). The
update is applied block by block (``BLOCK`` elements, so each block's operands stay in
the CPU cache across the ~2-14 element-wise passes); every operation is element-wise,
so blocking changes no bit. The norm is a fixed two-level sum (below). The result
depends only on the inputs and the optimizer state, so it is bitwise reproducible,
including after a :meth:`Optimizer.state_dict` round trip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from dptrain.core import tail
from dptrain.core.schedules import USES as SCHEDULE_USES
from dptrain.core.schedules import ScheduleSpec, SpecError, lr_at
from dptrain.core.tail import BLOCK  # the norm's blocks (part of the arithmetic); the update's too
from dptrain.engine.validation import Num, Spec, fail, parse, refuse_unused
from pydantic import Field, ValidationInfo, model_validator

__all__ = [
    "OPTIMIZERS",
    "Adam",
    "Optimizer",
    "OptimizerSpec",
    "RMSprop",
    "SGD",
    "SpecError",
    "USES",
    "drop_unused",
    "make_optimizer",
]

OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw")
USES: dict[str, tuple[str, ...]] = {
    "sgd": (),
    "momentum": ("momentum",),
    "nesterov": ("momentum",),
    "rmsprop": ("alpha", "eps"),
    "adam": ("beta1", "beta2", "eps"),
    "adamw": ("beta1", "beta2", "eps"),
}
"""The hyper-parameters each optimizer reads besides ``lr``, ``weight_decay``, ``clip_norm``
and ``schedule``; any other is refused by :meth:`OptimizerSpec.from_dict`."""
_HINTS = {("sgd", "momentum"): "plain 'sgd' has no momentum; use name 'momentum' or 'nesterov', or remove it"}
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# --------------------------------------------------------------------------- spec


class OptimizerSpec(Spec):
    """Optimizer hyper-parameters, validated on construction. ``lr`` is the base rate that
    ``schedule`` scales. Constructed directly, fields the optimizer does not use (``beta1``
    for ``sgd``) keep their defaults and are ignored; :meth:`from_dict`, the path of every
    spec a user writes, refuses them (:data:`USES`)."""

    name: Literal["sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"] = Field(
        description="the update rule (torch.optim semantics)")
    lr: Num(0.0, lo_open=True) = Field(0.01, description="base learning rate, scaled by the schedule")
    momentum: Num(0.0, 1.0, hi_open=True) = Field(0.9, description="momentum, nesterov: the momentum factor")
    beta1: Num(0.0, 1.0, hi_open=True) = Field(0.9, description="adam, adamw: first-moment decay")
    beta2: Num(0.0, 1.0, hi_open=True) = Field(0.999, description="adam, adamw: second-moment decay")
    eps: Num(0.0, lo_open=True) = Field(1e-8, description="rmsprop, adam, adamw: added to the denominator")
    alpha: Num(0.0, 1.0, hi_open=True) = Field(0.99, description="rmsprop: squared-gradient decay")
    weight_decay: Num(0.0) = Field(0.0, description="L2 decay (decoupled for adamw)")
    clip_norm: Num(0.0, lo_open=True) | None = Field(None, description="clip the gradient's global norm to this")
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec, description="the learning-rate schedule")

    @model_validator(mode="wrap")
    @classmethod
    def _used_only(cls, data: Any, handler: Any, info: ValidationInfo) -> OptimizerSpec:
        return refuse_unused(cls, data, handler, info, USES, "optimizer", _HINTS)

    @model_validator(mode="after")
    def _consistent(self) -> OptimizerSpec:
        if self.name == "nesterov" and self.momentum == 0.0:
            raise fail("nesterov requires momentum > 0", "momentum")
        if self.schedule.min_lr > self.lr:
            raise fail(f"must be <= lr ({self.lr:g}), got {self.schedule.min_lr:g}", "schedule.min_lr")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form that `from_dict` reads back (for job records): the fields this
        optimizer and its schedule use, defaults filled in."""
        common = ("name", "lr", "weight_decay", "clip_norm")
        d = {k: getattr(self, k) for k in (*common, *USES[self.name])}
        d["schedule"] = self.schedule.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "optimizer") -> OptimizerSpec:
        """Parse a config mapping; every error names its dotted field path, e.g.
        ``optimizer.lr: must be > 0, got -1``. Unknown keys are errors, and so are keys the
        named optimizer does not use (``momentum`` for adam): a setting is never ignored."""
        return parse(cls, d, path)

    def lr_at(self, step: int, total_steps: int) -> float:
        """Scheduled learning rate of update ``step`` (0-based); see :func:`lr_at`."""
        return lr_at(self.schedule, self.lr, step, total_steps)


def drop_unused(d: Mapping[str, Any]) -> dict[str, Any]:
    """``d`` (an optimizer mapping) without the fields its optimizer or schedule does not use.

    For specs stored by older versions, whose ``to_dict`` kept every field: what
    :meth:`OptimizerSpec.from_dict` refuses from a client is dropped from a record.
    """
    out = _only_used(d, USES)
    if isinstance(out.get("schedule"), Mapping):
        out["schedule"] = _only_used(out["schedule"], SCHEDULE_USES)
    return out


def _only_used(d: Mapping[str, Any], uses: Mapping[str, tuple[str, ...]]) -> dict[str, Any]:
    unused = {f for fs in uses.values() for f in fs} - set(uses.get(d.get("name"), ()))
    return {k: v for k, v in d.items() if k not in unused}


# --------------------------------------------------------------------------- optimizers


class Optimizer:
    """Base class: argument checks, clipping, L2 decay, state (de)serialisation.

    Subclasses implement :meth:`_update` on one block of the preprocessed gradient, given
    a scratch block and views of their named state buffers (``self._buffers``).
    """

    def __init__(self, spec: OptimizerSpec, n_params: int, dtype: np.dtype, buffers: tuple[str, ...] = ()):
        self.spec = spec
        self.n_params = n_params
        self.dtype = dtype
        self._step = 0
        self._buffers = {name: np.zeros(n_params, dtype) for name in buffers}
        self._blocks = [slice(a, min(a + BLOCK, n_params)) for a in range(0, n_params, BLOCK)]
        block = min(BLOCK, n_params)
        self._scratch_block = np.empty(block, dtype)
        self._sq64 = np.empty(block, np.float64)  # one block's squared gradient, for the norm
        self._block_sums = np.empty(len(self._blocks), np.float64)
        # Per block: (slice, scratch, {state name: view}), built once: no per-step allocation.
        self._block_views = [(b, self._scratch_block[:b.stop - b.start],
                              {k: v[b] for k, v in self._buffers.items()}) for b in self._blocks]
        self._l2_in_grad = True  # AdamW turns this off (decoupled decay)

    @property
    def step_count(self) -> int:
        """Number of updates applied so far."""
        return self._step

    def step(self, params: np.ndarray, grad: np.ndarray, lr: float, block_sums: np.ndarray | None = None) -> float:
        """Apply one update to ``params`` IN PLACE and return the pre-clip ``||grad||_2``.

        ``grad`` is used as scratch space: its contents are undefined afterwards. A
        non-finite gradient norm raises ``FloatingPointError`` before anything (params,
        state, step count) is modified, so the weights stay those of the last good step.
        It is not a signal to skip the batch and go on: ``Trainer.step`` has already
        recorded the batch in the ledger, so a caller that retried or skipped it would
        leave the ledger counting examples no update used. Treat it as the end of the run.
        ``block_sums``: the norm's block sums of ``grad`` (`dptrain.core.tail`), when the
        caller computed them along with ``grad``; else they are computed here.
        """
        self._check_args(params, grad, lr)
        if block_sums is None:
            block_sums = tail.block_sums(grad, self._block_sums, self._sq64)
        elif block_sums.shape != self._block_sums.shape:
            raise ValueError(f"block_sums must have {self._block_sums.size} entries, got {block_sums.shape}")
        norm = tail.norm(block_sums)
        if not math.isfinite(norm):
            raise FloatingPointError(f"non-finite gradient norm ({norm}); update skipped")
        clip, wd = self.spec.clip_norm, self.spec.weight_decay
        scale = clip / norm if clip is not None and norm > clip else None
        l2 = wd if wd and self._l2_in_grad else 0.0
        self._step += 1
        lr = float(lr)
        for b, s, bufs in self._block_views:  # element-wise throughout: blocking changes no bit
            p, g = params[b], grad[b]
            if scale is not None:
                np.multiply(g, scale, out=g)
            if l2:
                np.multiply(p, l2, out=s)
                np.add(g, s, out=g)
            self._update(p, g, lr, s, bufs)
        return norm

    def _update(self, params: np.ndarray, grad: np.ndarray, lr: float, s: np.ndarray,
                bufs: dict[str, np.ndarray]) -> None:
        """One block of the update: `s` is scratch, `bufs` the state buffers' views."""
        raise NotImplementedError

    def _check_args(self, params: np.ndarray, grad: np.ndarray, lr: float) -> None:
        for name, a in (("params", params), ("grad", grad)):
            if not isinstance(a, np.ndarray) or a.dtype != self.dtype or a.shape != (self.n_params,):
                got = f"{a.dtype}{a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                raise ValueError(f"{name} must be a {self.dtype}[{self.n_params}] array, got {got}")
        if np.may_share_memory(params, grad):
            raise ValueError("params and grad must not share memory (grad is used as scratch)")
        if not (math.isfinite(lr) and lr >= 0.0):
            raise ValueError(f"lr must be finite and >= 0, got {lr}")

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of all state: ``step`` (0-d int64) plus the named moment buffers."""
        state = {"step": np.array(self._step, dtype=np.int64)}
        state.update((name, buf.copy()) for name, buf in self._buffers.items())
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict` output exactly (values are copied in). Everything
        is validated before anything is changed."""
        expected = {"step", *self._buffers}
        if set(state) != expected:
            raise ValueError(f"optimizer state keys {sorted(state)} != expected {sorted(expected)}")
        step = np.asarray(state["step"])
        if step.shape != () or step.dtype.kind not in "iu" or int(step) < 0:
            raise ValueError(f"optimizer state 'step' must be a non-negative 0-d integer array, got {step!r}")
        for name in self._buffers:
            a = np.asarray(state[name])
            if a.dtype != self.dtype or a.shape != (self.n_params,):
                want = f"{self.dtype}[{self.n_params}]"
                raise ValueError(f"optimizer state {name!r} must be {want}, got {a.dtype}{a.shape}")
        self._step = int(step)
        for name, buf in self._buffers.items():
            np.copyto(buf, state[name])


class SGD(Optimizer):
    """SGD, optionally with heavy-ball or Nesterov momentum (torch.optim.SGD, dampening 0)."""

    def __init__(self, spec: OptimizerSpec, n_params: int, dtype: np.dtype, momentum: float, nesterov: bool):
        super().__init__(spec, n_params, dtype, ("momentum_buffer",) if momentum else ())
        self.momentum = momentum
        self.nesterov = nesterov

    def _update(self, params: np.ndarray, grad: np.ndarray, lr: float, s: np.ndarray,
                bufs: dict[str, np.ndarray]) -> None:
        mu, direction = self.momentum, grad
        if mu:
            buf = bufs["momentum_buffer"]
            if self._step == 1:
                np.copyto(buf, grad)  # torch: first buffer is the gradient itself
            else:
                np.multiply(buf, mu, out=buf)
                np.add(buf, grad, out=buf)
            if self.nesterov:
                np.multiply(buf, mu, out=s)
                np.add(grad, s, out=grad)
            else:
                direction = buf
        tail.sub_scaled(params, direction, lr, s)


class RMSprop(Optimizer):
    """RMSprop (Tieleman & Hinton 2012; torch.optim.RMSprop, not centered, no momentum)."""

    def __init__(self, spec: OptimizerSpec, n_params: int, dtype: np.dtype):
        super().__init__(spec, n_params, dtype, ("square_avg",))

    def _update(self, params: np.ndarray, grad: np.ndarray, lr: float, s: np.ndarray,
                bufs: dict[str, np.ndarray]) -> None:
        v, alpha = bufs["square_avg"], self.spec.alpha
        np.multiply(v, alpha, out=v)
        np.multiply(grad, 1.0 - alpha, out=s)
        np.multiply(s, grad, out=s)
        np.add(v, s, out=v)
        np.sqrt(v, out=s)
        np.add(s, self.spec.eps, out=s)
        np.divide(grad, s, out=s)
        tail.sub_scaled(params, s, lr, s)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) or, with ``decoupled=True``, AdamW; bias correction
    folded into the step size and denominator exactly as torch.optim.Adam does."""

    def __init__(self, spec: OptimizerSpec, n_params: int, dtype: np.dtype, decoupled: bool):
        super().__init__(spec, n_params, dtype, ("exp_avg", "exp_avg_sq"))
        self.decoupled = decoupled
        self._l2_in_grad = not decoupled

    def _update(self, params: np.ndarray, grad: np.ndarray, lr: float, s: np.ndarray,
                bufs: dict[str, np.ndarray]) -> None:
        spec, t = self.spec, self._step
        m, v = bufs["exp_avg"], bufs["exp_avg_sq"]
        if self.decoupled and spec.weight_decay:
            np.multiply(params, 1.0 - lr * spec.weight_decay, out=params)
        np.subtract(grad, m, out=s)  # m += (1 - beta1) * (g - m)
        np.multiply(s, 1.0 - spec.beta1, out=s)
        np.add(m, s, out=m)
        np.multiply(v, spec.beta2, out=v)  # v = beta2 * v + (1 - beta2) * g^2
        np.multiply(grad, 1.0 - spec.beta2, out=s)
        np.multiply(s, grad, out=s)
        np.add(v, s, out=v)
        step_size = lr / (1.0 - spec.beta1**t)
        np.sqrt(v, out=s)  # denom = sqrt(v) / sqrt(1 - beta2^t) + eps
        np.divide(s, math.sqrt(1.0 - spec.beta2**t), out=s)
        np.add(s, spec.eps, out=s)
        np.divide(m, s, out=s)
        tail.sub_scaled(params, s, step_size, s)


def make_optimizer(spec: OptimizerSpec, n_params: int, dtype: Any = np.float32) -> Optimizer:
    """Build the optimizer for ``n_params`` parameters of ``dtype`` (float32 or float64)."""
    dtype = np.dtype(dtype)
    if dtype not in _DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    if isinstance(n_params, bool) or not isinstance(n_params, (int, np.integer)) or n_params < 1:
        raise ValueError(f"n_params must be a positive integer, got {n_params!r}")
    n = int(n_params)
    if spec.name == "sgd":
        return SGD(spec, n, dtype, momentum=0.0, nesterov=False)
    if spec.name in ("momentum", "nesterov"):
        return SGD(spec, n, dtype, momentum=spec.momentum, nesterov=spec.name == "nesterov")
    if spec.name == "rmsprop":
        return RMSprop(spec, n, dtype)
    return Adam(spec, n, dtype, decoupled=spec.name == "adamw")
