"""Early stopping: end a run when a watched metric stops improving.

Decided from validation passes (or the training loss), which are the same bits whatever
the worker count, so a run stops at the same step however it is executed; the state
(best value, its step, passes without improvement) is checkpointed, so a resumed run
stops where the uninterrupted one would have.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
from dptrain.engine.validation import Int, Num, Spec
from pydantic import Field

from .telemetry import StepMetrics

LOWER_IS_BETTER = {"val_loss": True, "loss": True, "val_accuracy": False, "accuracy": False}


class EarlyStoppingSpec(Spec):
    """Stop when `metric` has not improved by more than `min_delta` for `patience` of its
    evaluations (validation passes for val_loss / val_accuracy, steps for loss / accuracy)."""

    metric: Literal["val_loss", "val_accuracy", "loss", "accuracy"] = Field(
        "val_loss", description="the metric watched: val_loss, val_accuracy (needs val_every), loss or accuracy")
    patience: Int(1, 1_000_000) = Field(description="evaluations without improvement before stopping")
    min_delta: Num(0.0, 1e9) = Field(0.0, description="the smallest change that counts as an improvement")

    def to_dict(self) -> dict:
        return self.model_dump()


class EarlyStopping:
    """The watch itself: `observe` each step's metrics; a reason string once it is time to stop."""

    def __init__(self, spec: EarlyStoppingSpec) -> None:
        self.spec = spec
        self.best, self.best_step, self.bad = math.nan, 0, 0

    def observe(self, m: StepMetrics) -> str | None:
        value = getattr(m, self.spec.metric)
        if value is None:
            return None
        lower = LOWER_IS_BETTER[self.spec.metric]
        delta = self.spec.min_delta
        better = math.isnan(self.best) or (value < self.best - delta if lower else value > self.best + delta)
        if better:
            self.best, self.best_step, self.bad = float(value), m.step, 0
            return None
        self.bad += 1
        if self.bad < self.spec.patience:
            return None
        return (f"early stopping: {self.spec.metric} did not improve by more than {delta:g} in "
                f"{self.bad} evaluations (best {self.best:.6g} at step {self.best_step})")

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"best": np.float64(self.best), "best_step": np.int64(self.best_step), "bad": np.int64(self.bad)}

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        self.best, self.best_step, self.bad = float(d["best"]), int(d["best_step"]), int(d["bad"])
