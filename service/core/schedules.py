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
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from dptrain.engine.errors import SpecError
from dptrain.rpc import bounds

__all__ = ["SCHEDULES", "ScheduleSpec", "SpecError", "USES", "lr_at"]

SCHEDULES = ("constant", "step", "cosine")
USES: dict[str, tuple[str, ...]] = {"constant": (), "step": ("step_size", "gamma"), "cosine": ("total_steps", "min_lr")}
"""The fields each schedule reads besides ``name`` and ``warmup_steps``."""


# --------------------------------------------------------------------------- field checks
# Shared with dptrain.core.optim. Each returns the normalised value or raises SpecError with a
# field name relative to the spec; from_dict() prefixes the spec's own path.


def _check_number(field: str, value: Any) -> float:
    """A finite real number (bools are rejected: ``True`` is not a learning rate)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SpecError(field, f"must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise SpecError(field, f"must be finite, got {value}")
    return value


def _check_int(field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SpecError(field, f"must be an integer, got {type(value).__name__} {value!r}")
    if value < lo or value > hi:
        raise SpecError(field, f"must be >= {lo}, got {value}" if value < lo else f"must be <= {hi}, got {value}")
    return int(value)


def _check_choice(field: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        shown = bounds.clip(value) if isinstance(value, str) else repr(value)
        raise SpecError(field, f"must be one of {list(choices)}, got {shown}")
    return value


def _check_used(path: str, d: Mapping[str, Any], kind: str, uses: Mapping[str, tuple[str, ...]]) -> None:
    """Fields that ``d["name"]`` would not read are errors: a setting must never be ignored.

    ``uses`` maps each name to the fields only it reads; ``None`` counts as unset.
    """
    specific = {f for fs in uses.values() for f in fs}
    for key, value in d.items():
        if key in specific and value is not None and key not in uses[d["name"]]:
            users = [n for n, fs in uses.items() if key in fs]
            raise SpecError(f"{path}.{key}", f"is not used by the {d['name']!r} {kind} (only by "
                                             f"{', '.join(repr(u) for u in users)}); remove it")


def _check_keys(path: str, d: Any, cls: type, required: tuple[str, ...]) -> None:
    """``d`` must be a mapping holding only ``cls``'s fields and all ``required`` ones."""
    if not isinstance(d, Mapping):
        raise SpecError(path, f"must be a mapping, got {type(d).__name__}")
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(str(k) for k in d if k not in allowed)
    if len(unknown) == 1:
        raise SpecError(f"{path}.{unknown[0]}", f"unknown key (allowed: {allowed})")
    if unknown:
        raise SpecError(path, f"unknown keys {unknown} (allowed: {allowed})")
    for key in required:
        if key not in d:
            raise SpecError(f"{path}.{key}", "is required")


_set = object.__setattr__  # assigns normalised values to a frozen dataclass


def _prefixed(path: str, err: SpecError) -> SpecError:
    return SpecError(f"{path}.{err.field}", err.message)


# --------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class ScheduleSpec:
    """Which schedule, and its parameters (validated on construction).

    ``total_steps``, when set, fixes the cosine horizon independently of the run
    length passed to :func:`lr_at` (e.g. to anneal over the first part of a run).
    """

    name: str = "constant"
    warmup_steps: int = 0
    step_size: int = 1000
    gamma: float = 0.1
    total_steps: int | None = None
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        _set(self, "name", _check_choice("name", self.name, SCHEDULES))
        _set(self, "warmup_steps", _check_int("warmup_steps", self.warmup_steps, 0, bounds.STEPS))
        _set(self, "step_size", _check_int("step_size", self.step_size, 1, bounds.STEPS))
        _set(self, "gamma", _check_number("gamma", self.gamma))
        if not 0.0 < self.gamma <= 1.0:
            raise SpecError("gamma", f"must be in (0, 1], got {self.gamma}")
        if self.total_steps is not None:
            _set(self, "total_steps", _check_int("total_steps", self.total_steps, 1, bounds.STEPS))
            if self.total_steps <= self.warmup_steps:
                raise SpecError(
                    "total_steps",
                    f"must be > warmup_steps ({self.warmup_steps}), got {self.total_steps}",
                )
        _set(self, "min_lr", _check_number("min_lr", self.min_lr))
        if self.min_lr < 0.0:
            raise SpecError("min_lr", f"must be >= 0, got {self.min_lr}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "schedule") -> ScheduleSpec:
        """Parse a config mapping; errors name the full dotted field path. A field the
        named schedule does not use is an error (see :data:`USES`)."""
        _check_keys(path, d, cls, required=("name",))
        _check_choice(f"{path}.name", d["name"], SCHEDULES)
        _check_used(path, d, "schedule", USES)
        try:
            return cls(**d)
        except SpecError as err:
            raise _prefixed(path, err) from None

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
