"""Per-step metrics, as the coordinator delivers them to callbacks and the gRPC stream."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class WorkerTiming:
    worker: int
    node: str  # Ray node id (hex) the worker ran on
    compute_s: float  # time inside the worker's compute call
    total_s: float  # dispatch to result, as seen by the coordinator
    straggler: bool = False  # slower than twice the median worker this step


@dataclass
class StepMetrics:
    step: int  # 1-based number of updates applied so far
    epoch: int
    loss: float  # mean training loss over this step's batch (before the update)
    accuracy: float | None  # classification only
    grad_norm: float  # L2 norm of the mean gradient, before clipping
    lr: float
    batch: int  # examples in this step
    samples_per_s: float
    step_s: float
    version: int  # weights version after this step's update
    workers: list[WorkerTiming] = field(default_factory=list)
    failures: int = 0  # worker failures recovered during this step
    val_loss: float | None = None
    val_accuracy: float | None = None
    test_loss: float | None = None  # the last step only, with a test split
    test_accuracy: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)
