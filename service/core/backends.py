"""Where a step's plans are computed: the `Backend` interface and the in-process one.

Backends hand each plan's tree nodes to the step's `Reduction` as they arrive and return
one `Outcome` (its timing) per plan, from the same `ShardComputer` arithmetic, so the
in-process loop (`LocalBackend`) is the reference that any number of Ray workers
(`dptrain.execution.backend.RayBackend`) must match bit for bit.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from dptrain.core.reduce import Reduction
from dptrain.core.shard import Plan, ShardComputer, WorkerJob

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """How one plan was computed: by which worker, where, and how long it took (its sums went
    to the step's `Reduction`)."""

    compute_s: float
    total_s: float
    worker: int
    node: str


class Backend(Protocol):
    size: int

    def publish(self, theta: np.ndarray) -> np.ndarray: ...
    def run(self, plans: list[Plan], into: Reduction) -> list[Outcome]: ...
    def resize(self, n: int) -> None: ...
    def nodes(self) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...

    @property
    def failures(self) -> int: ...


class LocalBackend:
    """The plain single-process loop: one computer, every chunk, no Ray."""

    size = 1
    failures = 0

    def __init__(self, job: WorkerJob) -> None:
        self.computer = ShardComputer(job, threads=1)
        self.theta: np.ndarray | None = None

    def publish(self, theta: np.ndarray) -> np.ndarray:
        self.theta = theta
        return theta

    def run(self, plans: list[Plan], into: Reduction) -> list[Outcome]:
        assert len(plans) == 1, "the local backend computes a step as one plan"
        t0 = time.perf_counter()
        into.add(self.computer.compute(self.theta, plans[0]))
        dt = time.perf_counter() - t0
        return [Outcome(dt, dt, 0, "local")]

    def resize(self, n: int) -> None:
        """A single process has one worker; asking for more changes nothing (by design)."""

    def nodes(self) -> list[dict[str, Any]]:
        return [{"worker": 0, "node_id": "local"}]

    def close(self) -> None:
        self.computer = None  # type: ignore[assignment]


def make_backend(kind: str, job: WorkerJob, workers: int, cpus: float, timeout_s: float, budget_s: float,
                 cancel=None) -> Backend:
    """`"local"` or `"ray"`; Ray is imported only for the latter, and only here."""
    if kind == "local":
        return LocalBackend(job)
    if kind == "ray":
        from dptrain.execution.backend import RayBackend

        return RayBackend(job, workers=workers, cpus=cpus, timeout_s=timeout_s, budget_s=budget_s, cancel=cancel)
    raise ValueError(f"backend must be 'local' or 'ray', got {kind!r}")
