"""The Ray actor: a `ShardComputer` in its own process, reached by either transport.

The job arrives once (a `WorkerJob` from the object store: its arrays are zero-copy
read-only views). Per step, the actor answers a plan through one of its transports'
worker ends: `compute` (`transports/ray_calls.py`: the weights' reference in, the sums
back through the object store) or `compute_shm` (`transports/shm.py`: the weights read
from and the sums written to shared files; called over the socket channel or by Ray).
"""
from __future__ import annotations

import os
import time
from typing import Any

import ray
from dptrain.core.shard import ShardComputer, WorkerJob, pin_single_thread_blas
from dptrain.execution.transports.ray_calls import RayCallsWorker
from dptrain.execution.transports.shm import SegmentRef, ShmWorker


class ShardWorker(RayCallsWorker, ShmWorker):
    """Plain class (tests can build it without Ray); `RayShardWorker` is its actor form.

    Built with a job, or empty and given a job later by `load`: a warm actor serves job
    after job (`warm.py`), emptied by `release` in between.
    """

    def __init__(self, job: WorkerJob | None = None) -> None:
        self.computer: ShardComputer | None = None
        self.release()
        if job is not None:
            self.load(job)

    def load(self, job: WorkerJob) -> None:
        """Take on a job: its model and zero-copy views of its data."""
        self.release()
        self.computer = ShardComputer(job, job.threads)

    def release(self) -> None:
        """Drop the job: its data views (so the object store can free them), its shared files."""
        if self.computer is not None and self.computer.pool is not None:
            self.computer.pool.shutdown(wait=False)
        self.computer = None
        self.detach_shm()
        self._delay: list[float] = []

    def info(self, probe: SegmentRef | None = None, listen: str | None = None) -> dict[str, Any]:
        """Where this worker runs. With `probe`: whether it can map the coordinator's files;
        then with `listen`: whether it now serves step calls on a Unix socket there."""
        ctx = ray.get_runtime_context() if ray.is_initialized() else None
        out = {"pid": os.getpid(), "node_id": ctx.get_node_id() if ctx else "local",
               "ip": ray.util.get_node_ip_address() if ctx else "127.0.0.1"}
        if probe is not None:
            out.update(self.shm_info(probe, listen))
        return out

    def before_call(self) -> None:
        if self._delay:
            time.sleep(self._delay.pop(0))

    def inject_delay(self, seconds: list[float]) -> None:
        """Fault injection for tests and chaos drills: sleep before the next len(seconds) calls."""
        self._delay = list(seconds)


class ShardWorkerProcess(ShardWorker):
    """A worker that owns its process: BLAS is pinned to 1 thread once, at start."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pin_single_thread_blas()
        super().__init__(*args, **kwargs)


RayShardWorker = ray.remote(max_restarts=0, max_task_retries=0)(ShardWorkerProcess)
