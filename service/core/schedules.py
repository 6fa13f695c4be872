"""Learning-rate schedules for the coordinator's optimizer step.

A schedule is a pure function of the (0-based) update index, so the learning rate of
any step can be recomputed after a restart from the step count alone: no schedule
state needs checkpointing.

With ``W = warmup_steps`` and base rate ``lr0``:

* warmup (Goyal et al. 2017, linear):   ``lr(s) = lr0 * (s + 1) / W``  for ``s < W``
  (the first update already uses ``lr0 / W``; step ``W - 1`` reaches ``lr0``).
* afterwards, with ``t = s - W``:

  - ``constant``: ``lr0``
  - ``step``:     ``lr0 * gamma ** (t // step_size)``
  - ``cosine``:   ``min_lr + (lr0 - min_lr) * (1 + cos(pi * t / T)) / 2`` with
    ``T = total - W``; held at ``min_lr`` for ``t >= T`` (no restart).

``step_size`` and ``gamma`` are used by ``step`` only, ``total_steps`` and ``min_lr`` by
``cosine`` only: giving one to another schedule is an error (:data:`USES`), not ignored.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from dptrain.engine.errors import SpecError
from dptrain.engine.validation import Int, Num, Spec, fail, parse, refuse_unused
from dptrain.rpc import bounds
from pydantic import Field, ValidationInfo, model_validator

__all__ = ["SCHEDULES", "ScheduleSpec", "SpecError", "USES", "lr_at"]

SCHEDULES = ("constant", "step", "cosine")
USES: dict[str, tuple[str, ...]] = {"constant": (), "step": ("step_size", "gamma"), "cosine": ("total_steps", "min_lr")}
"""The fields each schedule reads besides ``name`` and ``warmup_steps``."""


class ScheduleSpec(Spec):
    """Which schedule, and its parameters (validated on construction).

    ``total_steps``, when set, fixes the cosine horizon independently of the run
    length passed to :func:`lr_at` (e.g. to anneal over the first part of a run).
    """

    name: Literal["constant", "step", "cosine"] = Field("constant", description="the schedule after warmup")
    warmup_steps: Int(0, bounds.STEPS) = Field(0, description="updates of linear warmup from lr / warmup_steps")
    step_size: Int(1, bounds.STEPS) = Field(1000, description="step: updates between decays")
    gamma: Num(0.0, 1.0, lo_open=True) = Field(0.1, description="step: the factor of each decay")
    total_steps: Int(1, bounds.STEPS) | None = Field(
        None, description="cosine: the horizon in updates, warmup included (default: the run's length)")
    min_lr: Num(0.0) = Field(0.0, description="cosine: the rate at the horizon and after")

    @model_validator(mode="wrap")
    @classmethod
    def _used_only(cls, data: Any, handler: Any, info: ValidationInfo) -> ScheduleSpec:
        return refuse_unused(cls, data, handler, info, USES, "schedule")

    @model_validator(mode="after")
    def _horizon_after_warmup(self) -> ScheduleSpec:
        if self.total_steps is not None and self.total_steps <= self.warmup_steps:
            raise fail(f"must be > warmup_steps ({self.warmup_steps}), got {self.total_steps}", "total_steps")
        return self

    @classmethod
    def from_dict(cls, d: Any, path: str = "schedule") -> ScheduleSpec:
        """Parse a config mapping; errors name the full dotted field path. A field the
        named schedule does not use is an error (see :data:`USES`)."""
        return parse(cls, d, path)

    def to_dict(self) -> dict[str, Any]:
        """The fields this schedule uses (what `from_dict` accepts back)."""
        return {"name": self.name, "warmup_steps": self.warmup_steps,
                **{k: getattr(self, k) for k in USES[self.name]}}


# --------------------------------------------------------------------------- evaluation


def lr_at(spec: ScheduleSpec, base_lr: float, step: int, total_steps: int) -> float:
    """Learning rate for update number ``step`` (0 = first update) of a run of
    ``total_steps`` updates. Pure: depends on its arguments only."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup = spec.warmup_steps
    if step < warmup:
        return base_lr * (step + 1) / warmup
    t = step - warmup
    if spec.name == "constant":
        return base_lr
    if spec.name == "step":
        return base_lr * spec.gamma ** (t // spec.step_size)
    horizon = (spec.total_steps if spec.total_steps is not None else total_steps) - warmup
    return _cosine(base_lr, spec.min_lr, t, horizon)


def _cosine(base_lr: float, min_lr: float, t: int, horizon: int) -> float:
    """Half-cosine from ``base_lr`` (t = 0) to ``min_lr`` (t = horizon), then flat."""
    if t >= horizon:
        return min_lr
    return min_lr + (base_lr - min_lr) * (1.0 + math.cos(math.pi * t / horizon)) / 2.0
