"""Ray workers for a job: start, dispatch with deadlines, recover, resize.

A step gives each worker one `Plan`. A worker that dies (its call raises) or misses the
deadline is killed and replaced, and its plan is recomputed by the replacement or, if
none can be started, by a surviving worker. Results are deterministic functions of
(weights, plan), so whoever computes a plan produces the same bits: recovery never rolls
back and never changes the trajectory. Every wait is bounded; a job whose workers cannot
be brought back within `recovery_budget_s` fails with `WorkersLost`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError, WorkerCrashedError

from workers.actor import RayShardWorker
from workers.shard import Partial, Plan

log = logging.getLogger(__name__)
_LOST = (RayActorError, WorkerCrashedError)


class WorkersLost(RuntimeError):
    """No worker could be (re)started within the recovery budget."""


@dataclass
class Slot:
    actor: Any
    info: dict[str, Any]


@dataclass
class Outcome:
    parts: list[Partial]
    compute_s: float
    total_s: float
    worker: int
    node: str


class WorkerPool:
    def __init__(self, actor_args: tuple, n_workers: int, cpus: float, timeout_s: float,
                 budget_s: float) -> None:
        self.actor_args = actor_args
        self.cpus = cpus
        self.timeout_s = timeout_s
        self.budget_s = budget_s
        self.failures = 0
        self.slots: list[Slot] = []
        self.resize(n_workers)

    # --- lifecycle ----------------------------------------------------------------
    def _start(self, count: int, deadline: float) -> list[Slot]:
        actors = [RayShardWorker.options(num_cpus=self.cpus, scheduling_strategy="SPREAD")
                  .remote(*self.actor_args) for _ in range(count)]
        refs = [a.info.remote() for a in actors]
        try:
            infos = ray.get(refs, timeout=max(0.1, deadline - time.monotonic()))
        except (GetTimeoutError, *_LOST) as e:
            for a in actors:
                ray.kill(a)
            raise WorkersLost(f"could not start {count} worker(s) within the recovery budget: {e}") from None
        return [Slot(a, i) for a, i in zip(actors, infos)]

    def resize(self, n: int) -> None:
        """Grow or shrink between steps; the trajectory does not depend on the count."""
        if n < 1:
            raise ValueError(f"workers: must be >= 1, got {n}")
        if n > len(self.slots):
            self.slots += self._start(n - len(self.slots), time.monotonic() + self.budget_s)
        while len(self.slots) > n:
            ray.kill(self.slots.pop().actor)

    def shutdown(self) -> None:
        for s in self.slots:
            ray.kill(s.actor)
        self.slots = []

    def nodes(self) -> list[dict[str, Any]]:
        return [{"worker": i, **s.info} for i, s in enumerate(self.slots)]

    # --- a step -----------------------------------------------------------------------
    def run(self, method: str, theta_ref: Any, plans: list[Plan]) -> list[Outcome]:
        """One plan per slot (in order); returns one Outcome per plan, recovering failures."""
        started = time.monotonic()
        recovery_deadline = started + self.budget_s
        outcomes: dict[int, Outcome] = {}
        pending: dict[Any, tuple[int, int, float]] = {}  # ref -> (plan, slot, dispatched at)

        def dispatch(p: int, s: int) -> None:
            ref = getattr(self.slots[s].actor, method).remote(theta_ref, plans[p])
            pending[ref] = (p, s, time.monotonic())

        self.dead: set[int] = set()
        for p in range(len(plans)):
            dispatch(p, p)
        while pending:
            now = time.monotonic()
            first_deadline = min(t + self.timeout_s for _, _, t in pending.values())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, first_deadline - now))
            for ref in ready:
                p, s, t = pending.pop(ref)
                try:
                    parts, compute_s = ray.get(ref)
                except _LOST as e:
                    self._recover(s, p, f"died: {type(e).__name__}", recovery_deadline, dispatch, pending)
                    continue
                except RayTaskError:
                    raise  # a bug or bad data, not a lost worker: let the job fail with it
                outcomes[p] = Outcome(parts, compute_s, time.monotonic() - t, s,
                                      self.slots[s].info.get("node_id", ""))
            now = time.monotonic()
            for ref, (p, s, t) in list(pending.items()):
                if now - t > self.timeout_s:
                    del pending[ref]
                    self._recover(s, p, f"missed the {self.timeout_s:g}s deadline", recovery_deadline,
                                  dispatch, pending)
        if self.dead:  # the job goes on with fewer workers; the trajectory is unchanged
            self.slots = [sl for i, sl in enumerate(self.slots) if i not in self.dead]
        return [outcomes[p] for p in range(len(plans))]

    def _recover(self, s: int, p: int, why: str, deadline: float, dispatch, pending) -> None:
        """Replace slot s and recompute plan p on the replacement (or on a survivor)."""
        self.failures += 1
        log.warning("worker %d (pid %s) %s; recomputing its chunks", s, self.slots[s].info.get("pid"), why)
        ray.kill(self.slots[s].actor, no_restart=True)
        try:
            self.slots[s] = self._start(1, deadline)[0]
            self.dead.discard(s)
            dispatch(p, s)
        except WorkersLost:
            self.dead.add(s)
            survivors = [i for i in range(len(self.slots)) if i not in self.dead and self._alive(i)]
            if not survivors or time.monotonic() > deadline:
                raise WorkersLost(f"worker {s} {why} and no worker could take over its chunks "
                                  f"within the {self.budget_s:g}s recovery budget") from None
            log.warning("no replacement for worker %d; worker %d takes its chunks", s, survivors[0])
            dispatch(p, survivors[0])

    def _alive(self, s: int) -> bool:
        try:
            ray.get(self.slots[s].actor.info.remote(), timeout=self.timeout_s)
            return True
        except (GetTimeoutError, *_LOST):
            return False
