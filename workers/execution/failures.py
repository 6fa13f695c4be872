"""The failure policy: which worker computes a plan whose worker died or missed its deadline.

Results are deterministic functions of (weights, plan), so whoever computes a plan
produces the same bits: recovery never rolls back and never changes the trajectory. A
lost worker is killed and replaced, and the replacement recomputes its plan; if none can
be started in time (a share of the recovery budget, so that a survivor still has time),
the slot is given up for the step (`dead`) and a surviving worker takes the plan; with
none left, a new worker started within the rest of the budget; else the job fails with
`WorkersLost`. Given-up slots leave the group at the end of the step, which restores its
size in the background.
"""
from __future__ import annotations

import logging
import time

from dptrain.execution.group import Slot, WorkerGroup
from dptrain.execution.waiting import WorkersLost

log = logging.getLogger(__name__)


class FailurePolicy:
    def __init__(self, group: WorkerGroup, timeout_s: float, budget_s: float) -> None:
        self.group, self.timeout_s, self.budget_s = group, timeout_s, budget_s
        self.dead: set[int] = set()  # slots given up in the current step
        self.deadline = 0.0  # the current step's recovery deadline

    def begin_step(self) -> None:
        self.dead = set()
        self.deadline = time.monotonic() + self.budget_s

    def end_step(self) -> None:
        """Fewer workers until restored (the trajectory does not depend on the count)."""
        if self.dead:
            self.group.slots = [sl for i, sl in enumerate(self.group.slots) if i not in self.dead]
        self.group.restore()

    def lost(self, s: int, sent_to: Slot, why: str) -> int:
        """A call to slot s (then `sent_to`) failed or timed out: the slot to send its plan to
        now, replacing the worker unless that already happened."""
        if s in self.dead:  # its worker was given up earlier in this step
            return self._reassign(s, why)
        if self.group.slots[s] is sent_to:
            return self._recover(s, why)
        return s  # the actor was replaced meanwhile: its replacement takes it

    def _recover(self, s: int, why: str) -> int:
        """Replace slot s; the replacement (or a survivor) recomputes the plan."""
        group = self.group
        group.failures += 1
        log.warning("worker %d (pid %s) %s; recomputing its chunks", s, group.slots[s].info.get("pid"), why)
        group.drop(group.slots[s])
        # Give a replacement a share of the budget only: if the cluster has no room for it
        # (its node is gone with its CPUs), a survivor must still have time to take over.
        replace_by = min(self.deadline, time.monotonic() + max(self.timeout_s, self.budget_s / 3))
        try:
            group.slots[s] = group.start(1, replace_by)[0]
        except WorkersLost as e:
            log.warning("no replacement for worker %d yet: %s", s, e)
            self.dead.add(s)
            return self._reassign(s, why)
        self.dead.discard(s)
        return s

    def _reassign(self, s: int, why: str) -> int:
        """Slot s is given up for this step: a survivor computes the plan, or with none left,
        a new worker started within the rest of the recovery budget."""
        group = self.group
        survivor = next((i for i in range(len(group.slots))
                         if i not in self.dead and group.alive(i, self.timeout_s)), None)
        if survivor is not None:
            log.warning("worker %d takes the chunks of worker %d", survivor, s)
            return survivor
        try:
            group.slots[s] = group.start(1, self.deadline)[0]
        except WorkersLost as e:
            raise WorkersLost(f"worker {s} {why} and no worker could take over its chunks within the "
                              f"{self.budget_s:g}s recovery budget ({e})") from None
        self.dead.discard(s)
        return s
