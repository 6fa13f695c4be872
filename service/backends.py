"""Where a step's plans are computed: in this process, or on a pool of Ray workers.

Both return one `Outcome` per plan, from the same `ShardComputer` arithmetic, so the
in-process loop is the reference that any number of Ray workers must match bit for bit.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

import numpy as np

from service.pool import Outcome, WorkerPool
from workers import shm
from workers.shard import Plan, ShardComputer

log = logging.getLogger(__name__)


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


class RayBackend:
    """Data put once into the object store; per step, the weights published once and small
    plans. Workers on this node read the weights from and write their sums to shared memory
    (unless `$DPTRAIN_SHM=0`); workers elsewhere use the object store."""

    def __init__(self, model_spec, dtype, X, y, X_val, y_val, seed, workers: int, cpus: float,
                 timeout_s: float, budget_s: float, cancel: threading.Event | None = None) -> None:
        """`cancel`: once set, any wait of the pool (workers starting, a step's results)
        raises `service.pool.Cancelled` within a fraction of a second."""
        import ray

        from service.runtime import ensure_ray

        ensure_ray()
        self._ray = ray
        refs = [ray.put(a) if a is not None else None for a in (X, y, X_val, y_val)]
        host, mode = None, shm.mode()
        if mode != "off":
            try:
                host = shm.ShmHost(ray.get_runtime_context().get_node_id())
            except OSError as e:
                log.warning("shared memory unavailable (%s); using the object store", e)
        try:
            self.pool = WorkerPool((model_spec, dtype, *refs, seed, cpus), workers, cpus, timeout_s, budget_s,
                                   shm=host, channels=mode == "channel", cancel=cancel)
        except BaseException:
            if host is not None:
                host.close()
            raise

    @property
    def size(self) -> int:
        return len(self.pool.slots)

    @property
    def failures(self) -> int:
        return self.pool.failures

    def publish(self, theta: np.ndarray) -> np.ndarray:
        """Broadcast the weights: into shared memory (a copy, unless `theta` is the shared
        weights returned last time) and/or the object store. Returns where they now are."""
        return self.pool.publish(theta)

    def run(self, method: str, plans: list[Plan]) -> list[Outcome]:
        return self.pool.run(method, plans)

    def resize(self, n: int) -> None:
        self.pool.resize(n)

    def nodes(self) -> list[dict[str, Any]]:
        return self.pool.nodes()

    def close(self) -> None:
        self.pool.shutdown()
