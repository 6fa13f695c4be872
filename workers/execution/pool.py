"""`WorkerPool`: a job's Ray workers as the Ray backend sees them: publish weights, run plans.

It wires the pieces together: the worker group (`group.py`: actors started, resized,
restored, stopped), the transports (`transports/`: Ray calls, or shared memory and a
socket for workers on this node), dispatch with deadlines (`dispatch.py`) and the failure
policy (`failures.py`). Every wait is bounded and looks at the job's cancel flag
(`waiting.py`: `Cancelled`; `WorkersLost` when workers cannot be brought back in time).
"""
from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import ray
from dptrain.core.backends import Outcome
from dptrain.core.reduce import Reduction
from dptrain.core.shard import Plan
from dptrain.execution import dispatch
from dptrain.execution.failures import FailurePolicy
from dptrain.execution.group import Slot, WorkerGroup
from dptrain.execution.transports.ray_calls import RayLink
from dptrain.execution.transports.shm import ShmHost
from dptrain.execution.waiting import Cancelled, Waits, WorkersLost

__all__ = ["Cancelled", "WorkerPool", "WorkersLost"]  # the two errors its waits raise
log = logging.getLogger(__name__)


class WorkerPool:
    def __init__(self, job: Any, n_workers: int, cpus: float, timeout_s: float, budget_s: float,
                 shm: ShmHost | None = None, channels: bool = True, cancel: threading.Event | None = None) -> None:
        """`job`: a WorkerJob (or its object-store reference); `shm`: this node's shared files,
        if same-node workers may use them; `cancel`: once set, every wait raises Cancelled."""
        self.timeout_s, self.budget_s = timeout_s, budget_s
        self.waits = Waits(cancel)
        self.group = WorkerGroup(job, cpus, self.waits, shm, channels, self.theta_ref)
        self.policy = FailurePolicy(self.group, timeout_s, budget_s)
        self._theta_ref: Any = None  # the published weights in the object store, if needed
        self._theta_shared = False  # the published weights are in shared memory
        self._clean = True  # no step ended by an exception (calls may still be running)
        self.group.resize(n_workers, budget_s)

    @property
    def slots(self) -> list[Slot]:
        return self.group.slots

    @property
    def shm(self) -> ShmHost | None:
        return self.group.shm

    @property
    def failures(self) -> int:
        return self.group.failures

    def resize(self, n: int) -> None:
        self.group.resize(n, self.budget_s)

    def nodes(self) -> list[dict[str, Any]]:
        return self.group.nodes()

    def shutdown(self) -> None:
        """Stop the job's workers (kept warm if the last step ended cleanly); remove its files."""
        self.group.shutdown(self._clean)
        self._theta_ref = None
        if self.shm is not None:
            self.shm.close()

    # --- the weights ------------------------------------------------------------------
    def publish(self, theta: np.ndarray) -> np.ndarray:
        """`theta` for the next step: in the shared weights (same-node workers) and, only if
        some worker needs it, put once into the object store. Returns where the weights now
        are: the shared weights, which the caller may update in place until the next
        `publish` (no copy then), or `theta` itself."""
        self._theta_ref, self._theta_shared = None, False
        if self.shm is not None:
            try:
                shared = self.shm.publish(theta)
                self._theta_shared = True
            except OSError as e:
                log.warning("shared memory unavailable (%s); using the object store", e)
                self._disable_shm()
        if not self._theta_shared or any(not sl.link.shared for sl in self.slots):
            self._theta_ref = ray.put(theta)
        return shared if self._theta_shared else theta

    def _disable_shm(self) -> None:
        """Every worker on Ray calls from now on."""
        for sl in self.slots:
            sl.link.close()
            sl.link = RayLink(sl.actor, self.theta_ref)
        self.shm.close()
        self.group.shm, self.group.channels = None, False

    def theta_ref(self) -> Any:
        """The published weights in the object store (put now from the shared copy if needed)."""
        if self._theta_ref is None and self._theta_shared:
            self._theta_ref = ray.put(self.shm.theta)
        return self._theta_ref

    # --- a step -----------------------------------------------------------------------
    def run(self, plans: list[Plan], into: Reduction) -> list[Outcome]:
        """One plan per slot (in order); each result's tree nodes go to `into` as it arrives.
        Returns one Outcome per plan, recovering failures.

        On the shared-memory path the partials' gradients are views of the workers' output
        files, valid until the next `run`.
        """
        self._clean = False
        for sl in self.slots:
            sl.link.begin_step()
        if self.shm is not None:
            self.shm.collect()  # files retired last step: no call can name them any more
        self.policy.begin_step()
        outcomes = dispatch.run(plans, into, self.group, self.policy, self.waits, self.timeout_s)
        self.policy.end_step()
        self._clean = True
        return outcomes
