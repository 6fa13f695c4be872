"""The worker group: a job's Ray actors, started (warm ones first), resized, restored, stopped.

Each actor fills a `Slot` with its `Link` (the transport the coordinator reaches it by,
chosen once it says where it runs: `transports.shm.connect`). An actor lost while
starting (killed, its node gone) is started again after a short pause until the
deadline; a slot the failure policy gave up during a step is started again in the
background (`restore`), so the group returns to the job's size without making it wait.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import ray
from dptrain.engine import SpecError
from dptrain.execution.actor import RayShardWorker
from dptrain.execution.capacity import cluster_cpus, fits
from dptrain.execution.transports import Link
from dptrain.execution.transports.ray_calls import LOST
from dptrain.execution.transports.shm import ShmHost, connect, offer
from dptrain.execution.waiting import Waits, WorkersLost, submit
from dptrain.execution.warm import WARM, kill
from ray.exceptions import RayActorError, RayTaskError

log = logging.getLogger(__name__)
_WARM_LOAD_S = 10.0  # a warm actor that cannot take a job within this is replaced
_RETRY_S, _RETRY_MAX_S = 0.2, 2.0  # pause before starting a lost worker again (doubling)
_RESTORE_MAX_S = 30.0  # longest pause between background attempts to restore the group's size


@dataclass
class Slot:
    actor: Any
    info: dict[str, Any]  # where it runs: pid, node_id, ip
    link: Link


@dataclass
class _Starting:
    """An actor asked where it runs (`info`): a slot once it answers."""

    actor: Any
    ref: Any  # the `info` call
    listen: str | None  # where it is asked to serve step calls


class WorkerGroup:
    """`job` (a WorkerJob or its object-store reference) is loaded into every actor."""

    def __init__(self, job: Any, cpus: float, waits: Waits, shm: ShmHost | None, channels: bool,
                 theta_ref: Callable[[], Any]) -> None:
        self.job, self.cpus, self.waits = job, cpus, waits
        self.shm, self.channels = shm, channels and shm is not None
        self.theta_ref = theta_ref  # the published weights' object-store reference, for Ray-call links
        self.slots: list[Slot] = []
        self.target = 0  # the job's worker count, which the group returns to after losses
        self.failures = 0  # workers lost (while starting, here; during steps, counted by the failure policy)
        self._starting: list[_Starting] = []  # started in the background to restore `target`
        self._restore_at, self._restore_pause = 0.0, _RETRY_S

    # --- starting -------------------------------------------------------------------------
    def start(self, count: int, deadline: float) -> list[Slot]:
        """`count` new slots by `deadline`: actors lost while starting are started again
        after a short pause until then."""
        slots: list[Slot] = []
        pause = _RETRY_S
        try:
            while True:
                slots += self._launch(count - len(slots), deadline)
                if len(slots) == count:
                    return slots
                if time.monotonic() + pause >= deadline:
                    raise WorkersLost(f"{count - len(slots)} of {count} worker(s) were lost while starting "
                                      f"until the recovery budget ran out")
                self.waits.pause(pause)
                pause = min(2 * pause, _RETRY_MAX_S)
        except BaseException:
            for sl in slots:
                self.drop(sl)
            raise

    def _launch(self, count: int, deadline: float) -> list[Slot]:
        """One attempt: warm actors first, then new ones. Returns the slots of those that
        started (the others were lost); raises WorkersLost if some did not answer in time."""
        actors = self._warm(count, deadline)
        if len(actors) < count:
            WARM.release_other_sizes(self.cpus)  # idle actors of another size hold CPUs these may need
            actors += self._new(count - len(actors))
        starting = self._ask(actors)
        slots: list[Slot] = []
        try:
            late = self.waits.refs([x.ref for x in starting], deadline)
            for x in starting:
                slot = None if x.ref in late else self._adopt(x, deadline)
                if slot is not None:
                    slots.append(slot)
        except BaseException:
            for sl in slots:
                self.drop(sl)
            kill(actors)
            raise
        if late:
            for sl in slots:
                self.drop(sl)
            kill([x.actor for x in starting if x.ref in late])
            raise WorkersLost(f"could not start {count} worker(s) within the recovery budget: {len(late)} "
                              f"did not answer in time (no room in the cluster?)")
        return slots

    def _new(self, count: int) -> list[Any]:
        return [RayShardWorker.options(num_cpus=self.cpus, scheduling_strategy="SPREAD").remote(self.job)
                for _ in range(count)]

    def _ask(self, actors: list[Any]) -> list[_Starting]:
        out = []
        for a in actors:
            probe, listen = offer(self.shm, self.channels)
            out.append(_Starting(a, a.info.remote(probe, listen), listen))
        return out

    def _adopt(self, x: _Starting, deadline: float) -> Slot | None:
        """The slot of an actor whose `info` call is done, or None if it was lost meanwhile.
        Raises WorkersLost if its constructor raised (that would only happen again)."""
        try:
            info = ray.get(x.ref)
        except LOST as e:
            kill([x.actor])
            if isinstance(e, RayActorError) and e.actor_init_failed:
                raise WorkersLost(f"a worker failed to start: {str(e)[:500]}") from None
            self.failures += 1
            log.warning("a new worker was lost while starting (%s)", type(e).__name__)
            return None
        return Slot(x.actor, info, connect(self.shm, x.actor, info, x.listen, deadline, self.theta_ref))

    def _warm(self, count: int, deadline: float) -> list[Any]:
        """Idle actors of an earlier job (`warm.py`), loaded with this one; any that cannot
        take it (gone while idle, or stuck) is killed and left out."""
        taken = WARM.take(self.cpus, count)
        loading = [(a, submit(a.load, self.job)) for a in taken]
        try:
            late = self.waits.refs([r for _, r in loading if r is not None],
                                   min(deadline, time.monotonic() + _WARM_LOAD_S))
        except BaseException:
            kill(taken)
            raise
        ready = []
        for a, ref in loading:
            try:
                if ref is not None and ref not in late:
                    ray.get(ref)
                    ready.append(a)
                    continue
                log.info("warm worker unusable (%s); starting a new one", "gone" if ref is None else "stuck")
            except (RayTaskError, *LOST) as e:
                log.info("warm worker unusable (%s); starting a new one", type(e).__name__)
            kill([a])
        return ready

    def drop(self, slot: Slot) -> None:
        """Kill a slot's actor and close its link."""
        kill([slot.actor])
        slot.link.close()

    def alive(self, s: int, timeout_s: float) -> bool:
        """Whether slot s's actor answers a ping within `timeout_s`."""
        ref = submit(self.slots[s].actor.info)
        if ref is None or self.waits.refs([ref], time.monotonic() + timeout_s):
            return False
        try:
            ray.get(ref)
            return True
        except LOST:
            return False

    # --- size -----------------------------------------------------------------------------
    def resize(self, n: int, budget_s: float) -> None:
        """Grow or shrink between steps; the trajectory does not depend on the count."""
        if n < 1:
            raise SpecError("workers", f"must be >= 1, got {n}")
        total = cluster_cpus()
        if not fits(n, self.cpus, total):  # it would wait for the whole budget, then fail
            raise SpecError("workers", f"{n} workers x {self.cpus:g} CPUs (cpus_per_worker) need "
                                       f"{n * self.cpus:g} CPUs; the Ray cluster has {total:g}")
        self.target = n
        self._abandon_restore()
        if n > len(self.slots):
            self.slots += self.start(n - len(self.slots), time.monotonic() + budget_s)
        while len(self.slots) > n:
            self.drop(self.slots.pop())

    def restore(self) -> None:
        """Between steps, without making the job wait: slots given up during a step (no
        replacement started in time, e.g. no room in the cluster) are started again in the
        background, and join the group once they answer. Attempts that fail are repeated,
        less and less often."""
        if self._starting:
            done, _ = ray.wait([x.ref for x in self._starting], num_returns=len(self._starting), timeout=0)
            for x in [x for x in self._starting if x.ref in done]:
                self._starting.remove(x)
                try:
                    slot = self._adopt(x, time.monotonic() + 1.0)
                except WorkersLost as e:
                    log.warning("could not restore a worker: %s", e)
                    slot = None
                if slot is None:
                    self._restore_at = time.monotonic() + self._restore_pause
                    self._restore_pause = min(2 * self._restore_pause, _RESTORE_MAX_S)
                    continue
                self.slots.append(slot)
                self._restore_pause = _RETRY_S
                log.info("worker pid %s joined: %d of %d workers", slot.info.get("pid"), len(self.slots), self.target)
        missing = self.target - len(self.slots) - len(self._starting)
        if missing > 0 and time.monotonic() >= self._restore_at:
            log.info("starting %d worker(s) in the background to restore %d workers", missing, self.target)
            self._starting += self._ask(self._new(missing))

    def _abandon_restore(self) -> None:
        kill([x.actor for x in self._starting])
        self._starting = []

    # --- stopping -------------------------------------------------------------------------
    def shutdown(self, clean: bool) -> None:
        """Stop the job's workers: emptied and kept warm for the next job if the last step
        ended `clean`ly (no call can still be running), killed otherwise."""
        for s in self.slots:
            s.link.close()
        actors = [s.actor for s in self.slots]
        if clean:  # release runs before any call of the next job's (calls run in order)
            released = [(a, submit(a.release)) for a in actors]
            kill([a for a, ref in released if ref is None])
            WARM.give(self.cpus, [a for a, ref in released if ref is not None])
        else:
            kill(actors)
        self._abandon_restore()
        self.slots = []

    def nodes(self) -> list[dict[str, Any]]:
        return [{"worker": i, **s.info, "transport": s.link.name} for i, s in enumerate(self.slots)]
