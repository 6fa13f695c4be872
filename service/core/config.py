"""A training job as data: what to train, on what, how, and with how many workers.

Everything that changes the resulting weights (model, data, optimizer, batch size,
chunk size, seed, dtype) is separated from what must not (workers, CPUs, deadlines):
the second group can change mid-run without moving the trajectory by one bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from dptrain.core.optim import OptimizerSpec, drop_unused
from dptrain.data import DatasetSpec
from dptrain.engine import Model, ModelSpec, SpecError
from dptrain.rpc import bounds


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

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Validate every field; errors name it (``job.batch_size: must be ...``).

        Numbers are bounded (`dptrain.rpc.bounds`), and a setting that would do nothing
        (``val_every`` without a validation split, ``momentum`` for adam, ...) is an error.
        """
        if not isinstance(d, Mapping):
            raise SpecError("job", f"must be a mapping, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
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
        for name, (lo, hi) in _INTS.items():
            if name in d and not (d[name] is None and name in ("epochs", "steps")):  # None: "not this one"
                kw[name] = _int(d[name], f"job.{name}", lo, hi)
        if "steps" in kw and d.get("epochs") is None:  # the run's length is `steps` (to_dict says epochs: None)
            kw["epochs"] = None
        for name, (lo, hi) in _NUMBERS.items():
            if name in d:
                kw[name] = _number(d[name], f"job.{name}", lo, hi)
        if "drop_last" in d:
            if not isinstance(d["drop_last"], bool):
                raise SpecError("job.drop_last", f"must be true or false, got {d['drop_last']!r}")
            kw["drop_last"] = d["drop_last"]
        if "dtype" in d:
            if d["dtype"] not in ("float32", "float64"):
                raise SpecError("job.dtype", f"must be 'float32' or 'float64', got {bounds.clip(d['dtype'])}")
            kw["dtype"] = d["dtype"]
        if kw.get("epochs") is None and kw.get("steps") is None and "epochs" in d:
            raise SpecError("job.epochs", "give epochs or steps")
        if kw.get("val_every") and kw["dataset"].val_fraction == 0:
            raise SpecError("job.val_every", "the dataset has no validation split: set dataset.val_fraction "
                                             "> 0, or leave val_every unset")
        return cls(**kw)

    @classmethod
    def from_stored(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """A config this service stored (`to_dict`), possibly by an older version whose
        `to_dict` kept every optimizer and schedule field: those the optimizer does not use
        are dropped here rather than refused (`from_dict` refuses them from clients)."""
        d = dict(d)
        if isinstance(d.get("optimizer"), Mapping):
            d["optimizer"] = drop_unused(d["optimizer"])
        dataset = d.get("dataset")
        if isinstance(dataset, Mapping) and not dataset.get("val_fraction") and d.get("val_every"):
            d["val_every"] = 0
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["model"] = self.model.to_dict()
        d["dataset"] = self.dataset.to_dict()
        d["optimizer"] = self.optimizer.to_dict()
        return d

    def build_model(self) -> Model:
        return Model(self.model, dtype=self.dtype)


_INTS: dict[str, tuple[int, int]] = {
    "batch_size": (1, bounds.BATCH_SIZE),
    "chunk_size": (1, bounds.BATCH_SIZE),
    "workers": (1, bounds.WORKERS),
    "epochs": (1, bounds.EPOCHS),
    "steps": (1, bounds.STEPS),
    "seed": (0, bounds.SEED),
    "val_every": (0, bounds.STEPS),
    "checkpoint_every": (0, bounds.STEPS),
}
_NUMBERS: dict[str, tuple[float, float]] = {
    "cpus_per_worker": bounds.CPUS_PER_WORKER,
    "worker_timeout_s": bounds.WORKER_TIMEOUT_S,
    "recovery_budget_s": bounds.RECOVERY_BUDGET_S,
}


def _int(v: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise SpecError(path, f"must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _number(v: Any, path: str, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise SpecError(path, f"must be a number in [{lo:g}, {hi:g}], got {v!r}")
    return float(v)
