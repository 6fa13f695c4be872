"""The Ray cluster's CPUs, for admission: what it has in all, and what is free now.

Both ask the running Ray (they never start one: most Ray calls would). Idle warm actors
hold CPUs too; `dptrain.execution.warm.WARM` says how many (`idle_cpus`) and frees them
(`release_other_sizes`, `drain`).
"""
from __future__ import annotations

import ray

CPU_EPS = 1e-6  # Ray keeps resources to 1e-4; sums of fractional CPUs must not round a fit away


def _ray() -> None:
    if not ray.is_initialized():
        raise RuntimeError("Ray is not running: no cluster to measure")


def cluster_cpus() -> float:
    """CPUs of every alive node of the cluster, whoever holds them."""
    _ray()
    return float(sum(n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")))


def free_cpus() -> float:
    """CPUs no actor or task holds now (Ray's view: it lags a kill by up to about a second)."""
    _ray()
    return float(ray.available_resources().get("CPU", 0.0))


def fits(workers: int, cpus_per_worker: float, total: float) -> bool:
    return workers * cpus_per_worker <= total + CPU_EPS
