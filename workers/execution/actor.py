"""The Ray actor: a `ShardComputer` in its own process, fed by reference.

The dataset arrives once, as object-store references resolved to zero-copy read-only
views. Per step, on the object-store path, the weights' reference and a small `Plan`
travel and the gradient sums come back through the object store; on the same-node
shared-memory path (`workers/shm.py`) only a small `ShmCall` and the `Plan` travel, the
weights are read from and the sums written to shared files, and the reply is metadata.
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import ray
from dptrain.core.reduce import Partial
from dptrain.core.shard import Plan, ShardComputer, WorkerJob, pin_single_thread_blas
from dptrain.execution import channel
from dptrain.execution.shm import Attachments, SegmentRef, ShmCall


class ShardWorker:
    """Plain class (tests can build it without Ray); `RayShardWorker` is its actor form.

    Built with a job's arguments, or empty and given a job later by `load`: a warm actor
    serves job after job (`service/warm.py`), emptied by `release` in between.
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
        self.shm = Attachments()
        self._delay: list[float] = []

    def info(self, probe: SegmentRef | None = None, listen: str | None = None) -> dict[str, Any]:
        """Where this worker runs. With `probe`: whether it can map the coordinator's files;
        then with `listen`: whether it now serves step calls on a Unix socket there."""
        ctx = ray.get_runtime_context() if ray.is_initialized() else None
        out = {"pid": os.getpid(), "node_id": ctx.get_node_id() if ctx else "local",
               "ip": ray.util.get_node_ip_address() if ctx else "127.0.0.1"}
        if probe is not None:
            out["shm"] = self.shm.probe(probe)
            if out["shm"] and listen is not None:
                try:
                    channel.serve(listen, self._serve_call, frozenset({"compute_shm"}))
                    out["channel"] = True
                except OSError:
                    out["channel"] = False
        return out

    def _serve_call(self, method: str, call: ShmCall, plan: Plan) -> Any:
        return getattr(self, method)(call, plan)

    def compute(self, theta: np.ndarray, plan: Plan) -> tuple[list[Partial], float]:
        """Partial sums for `plan`, and the seconds spent computing them."""
        t0 = time.perf_counter()
        self._maybe_delay()
        parts = self.computer.compute(theta, plan)
        return parts, time.perf_counter() - t0

    def compute_shm(self, call: ShmCall, plan: Plan) -> tuple[list[Partial], float]:
        """`compute` on the shared-memory path: the weights are read from `call.theta`, the
        gradient sums written to slots `call.out_slot`, ... of `call.out` (in the order of
        the returned nodes), and the returned partials carry no array (grad None)."""
        t0 = time.perf_counter()
        self._maybe_delay()
        theta = self.shm.theta(call)
        out = self.shm.out_slots(call, plan.n_nodes() if plan.trains else 0)
        parts = self.computer.compute(theta, plan, out=out if out else None)
        for p in parts:
            p.grad = None
        return parts, time.perf_counter() - t0

    def _maybe_delay(self) -> None:
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
