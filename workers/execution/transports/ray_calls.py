"""The plain Ray transport: the weights' object-store reference and a plan in an actor call,
the gradient sums back through the object store.

Used for workers on other nodes than the coordinator, for every worker with
`$DPTRAIN_SHM=0`, and for a single call when shared memory has no room for its output.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import ray
from dptrain.core.reduce import Partial
from dptrain.core.shard import Plan, ShardComputer
from dptrain.execution.transports import WorkerGone
from ray.exceptions import RayActorError, WorkerCrashedError

LOST = (RayActorError, WorkerCrashedError)  # the actor is gone (a RayTaskError is the worker's own error)


# --- the worker's end --------------------------------------------------------------------------
class RayCallsWorker:
    """The actor method of this transport (a mixin of the worker actor, which holds `computer`)."""

    computer: ShardComputer

    def compute(self, theta: np.ndarray, plan: Plan) -> tuple[list[Partial], float]:
        """Partial sums for `plan` (Ray resolved the weights' reference), and the seconds spent."""
        t0 = time.perf_counter()
        self.before_call()
        parts = self.computer.compute(theta, plan)
        return parts, time.perf_counter() - t0

    def before_call(self) -> None:
        """Hook run before each call's computation (fault injection)."""


# --- the coordinator's end ---------------------------------------------------------------------
def wait_refs(calls: list["RayCall"], timeout_s: float) -> list["RayCall"]:
    """The calls whose result is in within `timeout_s` (at least one, if any is by then)."""
    by_ref = {c.ref: c for c in calls}
    done, _ = ray.wait(list(by_ref), num_returns=1 if timeout_s > 0 else len(by_ref), timeout=timeout_s)
    return [by_ref[r] for r in done]


class RayCall:
    """A Ray actor call in flight; `finish` completes its parts (e.g. attaches gradients)."""

    waiter = staticmethod(wait_refs)

    def __init__(self, ref: Any, finish: Callable[[list[Partial]], None] | None = None) -> None:
        self.ref, self.finish = ref, finish

    def take(self) -> tuple[list[Partial], float]:
        try:
            parts, compute_s = ray.get(self.ref)
        except LOST as e:
            raise WorkerGone(type(e).__name__) from e
        if self.finish is not None:
            self.finish(parts)
        return parts, compute_s


class RayLink:
    """One worker reached by Ray calls; `theta_ref()` gives the published weights' reference."""

    name = "object_store"
    shared = False

    def __init__(self, actor: Any, theta_ref: Callable[[], Any]) -> None:
        self.actor, self.theta_ref = actor, theta_ref

    def begin_step(self) -> None:
        pass

    def send(self, plan: Plan) -> RayCall:
        return RayCall(self.actor.compute.remote(self.theta_ref(), plan))

    def close(self) -> None:
        pass
