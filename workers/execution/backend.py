"""The Ray backend: a step's plans computed by a pool of Ray workers."""
from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
from dptrain.core.backends import Outcome
from dptrain.core.reduce import Reduction
from dptrain.core.shard import Plan, WorkerJob
from dptrain.execution.pool import WorkerPool
from dptrain.execution.transports import segments, shm

log = logging.getLogger(__name__)


class RayBackend:
    """Data put once into the object store; per step, the weights published once and small
    plans. Workers on this node read the weights from and write their sums to shared memory
    (unless `$DPTRAIN_SHM=0`); workers elsewhere use the object store."""

    def __init__(self, job: WorkerJob, workers: int, cpus: float,
                 timeout_s: float, budget_s: float, cancel: threading.Event | None = None) -> None:
        """`cancel`: once set, any wait of the pool (workers starting, a step's results)
        raises `dptrain.execution.waiting.Cancelled` within a fraction of a second."""
        import ray
        from dptrain.execution.runtime import ensure_ray

        ensure_ray()
        self._ray = ray
        job_ref = ray.put(job)  # once; each worker maps its arrays zero-copy
        host, mode = None, segments.mode()
        if mode != "off":
            try:
                host = shm.ShmHost(ray.get_runtime_context().get_node_id())
            except OSError as e:
                log.warning("shared memory unavailable (%s); using the object store", e)
        try:
            self.pool = WorkerPool(job_ref, workers, cpus, timeout_s, budget_s,
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

    def run(self, plans: list[Plan], into: Reduction) -> list[Outcome]:
        return self.pool.run(plans, into)

    def resize(self, n: int) -> None:
        self.pool.resize(n)

    def nodes(self) -> list[dict[str, Any]]:
        return self.pool.nodes()

    def close(self) -> None:
        self.pool.shutdown()
