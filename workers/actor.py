"""The Ray actor: a `ShardComputer` in its own process, fed by reference.

The dataset arrives once, as object-store references resolved to zero-copy read-only
views; per step only the weights' reference and a small `Plan` travel.
"""
from __future__ import annotations

import os
import time
from typing import Any, Mapping

import numpy as np
import ray

from workers.shard import Partial, Plan, ShardComputer


class ShardWorker:
    """Plain class (tests can build it without Ray); `RayShardWorker` is its actor form."""

    def __init__(self, model_spec: Mapping[str, Any], dtype: str, X: np.ndarray, y: np.ndarray,
                 X_val: np.ndarray | None, y_val: np.ndarray | None, seed: int, cpus: float) -> None:
        threads = max(1, int(cpus))
        self.computer = ShardComputer(model_spec, dtype, X, y, X_val, y_val, seed, threads)
        self._delay: list[float] = []

    def info(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context() if ray.is_initialized() else None
        return {"pid": os.getpid(), "node_id": ctx.get_node_id() if ctx else "local",
                "ip": ray.util.get_node_ip_address() if ctx else "127.0.0.1"}

    def compute(self, theta: np.ndarray, plan: Plan) -> tuple[list[Partial], float]:
        """Partial sums for `plan`, and the seconds spent computing them."""
        t0 = time.perf_counter()
        if self._delay:
            time.sleep(self._delay.pop(0))
        parts = self.computer.compute(theta, plan)
        return parts, time.perf_counter() - t0

    def inject_delay(self, seconds: list[float]) -> None:
        """Fault injection for tests and chaos drills: sleep before the next len(seconds) calls."""
        self._delay = list(seconds)


RayShardWorker = ray.remote(max_restarts=0, max_task_retries=0)(ShardWorker)
