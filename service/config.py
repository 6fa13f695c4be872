"""A training job as data: what to train, on what, how, and with how many workers.

Everything that changes the resulting weights (model, data, optimizer, batch size,
chunk size, seed, dtype) is separated from what must not (workers, CPUs, deadlines):
the second group can change mid-run without moving the trajectory by one bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from service.optim import OptimizerSpec
from workers.data import DatasetSpec
from workers.engine import Model, ModelSpec, SpecError


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSpec
    dataset: DatasetSpec
    optimizer: OptimizerSpec
    batch_size: int = 256
    epochs: int | None = 1  # the run's length: `steps` if given, else `epochs`
    steps: int | None = None
    chunk_size: int = 256  # micro-chunk: fixes the reduction tree, hence every bit
    drop_last: bool = False
    seed: int = 0
    dtype: str = "float32"
    # --- execution only: never changes the weights --------------------------------
    workers: int = 2
    cpus_per_worker: float = 1.0
    val_every: int = 0  # steps between validation passes (0: only at the end)
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end)
    worker_timeout_s: float = 60.0  # a step's answer deadline per worker
    recovery_budget_s: float = 120.0  # time to bring workers back before the job fails
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Validate every field; errors name it (``job.batch_size: must be ...``)."""
        if not isinstance(d, Mapping):
            raise SpecError("job", f"must be a mapping, got {type(d).__name__}")
        names = {f.name for f in fields(cls)} - {"extra"}
        unknown = sorted(set(d) - names)
        if unknown:
            raise SpecError(f"job.{unknown[0]}", f"unknown field; allowed: {sorted(names)}")
        for key in ("model", "dataset", "optimizer"):
            if key not in d:
                raise SpecError(key, "required")
        kw: dict[str, Any] = {
            "model": ModelSpec.from_dict(d["model"]),
            "dataset": DatasetSpec.from_dict(d["dataset"]),
            "optimizer": OptimizerSpec.from_dict(d["optimizer"]),
        }
        for name in ("batch_size", "chunk_size", "workers"):
            if name in d:
                kw[name] = _int(d[name], f"job.{name}", lo=1)
        for name in ("epochs", "steps"):
            if d.get(name) is not None:
                kw[name] = _int(d[name], f"job.{name}", lo=1)
        if "steps" in kw and "epochs" not in d:
            kw["epochs"] = None
        for name in ("seed", "val_every", "checkpoint_every"):
            if name in d:
                kw[name] = _int(d[name], f"job.{name}", lo=0)
        for name in ("cpus_per_worker", "worker_timeout_s", "recovery_budget_s"):
            if name in d:
                kw[name] = _positive(d[name], f"job.{name}")
        if "drop_last" in d:
            if not isinstance(d["drop_last"], bool):
                raise SpecError("job.drop_last", f"must be true or false, got {d['drop_last']!r}")
            kw["drop_last"] = d["drop_last"]
        if "dtype" in d:
            if d["dtype"] not in ("float32", "float64"):
                raise SpecError("job.dtype", f"must be 'float32' or 'float64', got {d['dtype']!r}")
            kw["dtype"] = d["dtype"]
        if kw.get("epochs") is None and kw.get("steps") is None and "epochs" in d:
            raise SpecError("job.epochs", "give epochs or steps")
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        d["model"] = self.model.to_dict()
        d["dataset"] = self.dataset.to_dict()
        d["optimizer"] = self.optimizer.to_dict()
        return d

    def build_model(self) -> Model:
        return Model(self.model, dtype=self.dtype)


def _int(v: Any, path: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise SpecError(path, f"must be an integer >= {lo}, got {v!r}")
    return v


def _positive(v: Any, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise SpecError(path, f"must be a positive number, got {v!r}")
    return float(v)
