"""Where a step's plans are computed: the `Backend` interface and the in-process one.

Backends return one `Outcome` per plan, from the same `ShardComputer` arithmetic, so the
in-process loop (`LocalBackend`) is the reference that any number of Ray workers
(`dptrain.execution.backend.RayBackend`) must match bit for bit.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from dptrain.core.shard import Partial, Plan, ShardComputer

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """One plan's result. `parts` are the tree nodes tiling the plan's run, then any parent
    nodes the backend finished while waiting for other workers."""

    parts: list[Partial]
    compute_s: float
    total_s: float
    worker: int
    node: str


class Backend(Protocol):
    size: int

    def publish(self, theta: np.ndarray) -> np.ndarray: ...
    def run(self, method: str, plans: list[Plan]) -> list[Outcome]: ...
    def resize(self, n: int) -> None: ...
    def nodes(self) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...

    @property
    def failures(self) -> int: ...


class LocalBackend:
    """The plain single-process loop: one computer, every chunk, no Ray."""

    size = 1
    failures = 0

    def __init__(self, model_spec, dtype, X, y, X_val, y_val, seed) -> None:
        self.computer = ShardComputer(model_spec, dtype, X, y, X_val, y_val, seed, threads=1)
        self.theta: np.ndarray | None = None

    def publish(self, theta: np.ndarray) -> np.ndarray:
        self.theta = theta
        return theta

    def run(self, method: str, plans: list[Plan]) -> list[Outcome]:
        assert len(plans) == 1, "the local backend computes a step as one plan"
        t0 = time.perf_counter()
        parts = self.computer.compute(self.theta, plans[0])
        dt = time.perf_counter() - t0
        return [Outcome(parts, dt, dt, 0, "local")]

    def resize(self, n: int) -> None:
        """A single process has one worker; asking for more changes nothing (by design)."""

    def nodes(self) -> list[dict[str, Any]]:
        return [{"worker": 0, "node_id": "local"}]

    def close(self) -> None:
        self.computer = None  # type: ignore[assignment]




def make_backend(kind: str, *args, workers: int, cpus: float, timeout_s: float, budget_s: float,
                 cancel=None) -> Backend:
    """`"local"` or `"ray"`; Ray is imported only for the latter, and only here."""
    if kind == "local":
        return LocalBackend(*args)
    if kind == "ray":
        from dptrain.execution.backend import RayBackend

        return RayBackend(*args, workers=workers, cpus=cpus, timeout_s=timeout_s, budget_s=budget_s, cancel=cancel)
    raise ValueError(f"backend must be 'local' or 'ray', got {kind!r}")
