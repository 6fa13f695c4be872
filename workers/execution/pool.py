"""Ray workers for a job: start, dispatch with deadlines, recover, resize.

A step gives each worker one `Plan`. A worker that dies (its call raises) or misses the
deadline is killed and replaced, and its plan is recomputed by the replacement or, if
none can be started, by a surviving worker. Results are deterministic functions of
(weights, plan), so whoever computes a plan produces the same bits: recovery never rolls
back and never changes the trajectory. A worker lost while starting is started again
(after a short pause) until the recovery budget is spent; a slot given up for a step is
started again in the background, so the pool returns to the job's size. Every wait is
bounded, and cut into short slices that look at the job's cancel flag (`Cancelled`); a
job whose workers cannot be brought back within `recovery_budget_s` fails with
`WorkersLost`.

Transport is a per-worker choice that changes no bit. Workers on the coordinator's node
read the weights from and write their sums to shared memory (`workers/shm.py`), and take
the step's call over a Unix socket (`workers/channel.py`): a few hundred bytes each way.
Workers on other nodes (or all, with `$DPTRAIN_SHM=0`) get the weights' object-store
reference in a Ray call and return their sums through the object store.
"""
from __future__ import annotations

import logging
import math
import select
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import ray
from dptrain.core.backends import Outcome
from dptrain.core.reduce import Partial, Reduction, cover
from dptrain.core.shard import Plan
from dptrain.engine import SpecError
from dptrain.execution.actor import RayShardWorker
from dptrain.execution.capacity import cluster_cpus, fits
from dptrain.execution.channel import Channel, ChannelError
from dptrain.execution.shm import Segment, ShmHost
from dptrain.execution.warm import WARM, kill
from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

log = logging.getLogger(__name__)
_LOST = (RayActorError, WorkerCrashedError)
_MIXED_POLL_S = 0.002  # with both Ray calls and channel calls in flight, alternate this often
_WARM_LOAD_S = 10.0  # a warm actor that cannot take a job within this is replaced
_SLICE_S = 0.2  # the longest any wait runs before looking at the cancel flag again
_RETRY_S, _RETRY_MAX_S = 0.2, 2.0  # pause before starting a lost worker again (doubling)
_RESTORE_MAX_S = 30.0  # longest pause between background attempts to restore the pool's size


def _submit(method: Any, *args: Any) -> Any:
    """`method.remote(*args)`, or None if Ray refuses it: it does so at once, with a plain
    Exception, for an actor it already knows is dead."""
    try:
        return method.remote(*args)
    except Exception:  # noqa: BLE001 - Ray raises no narrower type here
        return None


class WorkersLost(RuntimeError):
    """No worker could be (re)started within the recovery budget."""


class Cancelled(Exception):
    """The job's cancel flag was set while the pool waited (for workers or for results)."""


class _ChannelLost(Exception):
    """The worker's end of its channel closed: the worker is gone."""


@dataclass
class Slot:
    actor: Any
    info: dict[str, Any]
    shm: bool = False  # same node and able to map the coordinator's files
    chan: Channel | None = None  # the step-call socket (shared-memory path only)
    out: Segment | None = None  # this actor's output file (shared-memory path)
    used: int = 0  # output slots handed out in the current step


@dataclass
class _Starting:
    """An actor asked where it runs (`info`): a slot once it answers."""

    actor: Any
    ref: Any  # the `info` call
    listen: str | None  # where it is asked to serve step calls


class _ChanCall:
    """A call in flight on a channel (the key of `pending`, like a Ray ObjectRef)."""

    __slots__ = ("chan", "seq")

    def __init__(self, chan: Channel, seq: int) -> None:
        self.chan, self.seq = chan, seq

    @property
    def ready(self) -> bool:
        return self.seq in self.chan.replies or self.chan.closed

    def result(self) -> Any:
        if self.seq in self.chan.replies:
            ok, result = self.chan.replies.pop(self.seq)
            if not ok:
                raise ChannelError(result)  # a bug or bad data, not a lost worker
            return result
        raise _ChannelLost("channel closed")


def _read_replies(chans: set[Channel], wait_s: float) -> int:
    """Block in poll(2) up to `wait_s` for the open channels; read one reply from each that
    is readable (end-of-file closes it). Returns how many were readable."""
    live = {c.fileno(): c for c in chans if not c.closed}
    poller = select.poll()
    for fd in live:
        poller.register(fd, select.POLLIN)
    events = poller.poll(math.ceil(wait_s * 1000)) if live else []
    for fd, _ in events:
        live[fd].read_one()
    return len(events)


@dataclass
class _Pending:
    p: int  # plan
    s: int  # slot index
    slot: Slot  # the slot as dispatched to (it may be replaced meanwhile)
    t: float  # dispatched at
    out: tuple[Segment | None, int] | None  # output file and first slot (shared-memory path)


class WorkerPool:
    def __init__(self, job: Any, n_workers: int, cpus: float, timeout_s: float,
                 budget_s: float, shm: ShmHost | None = None, channels: bool = True,
                 cancel: threading.Event | None = None) -> None:
        self.job = job  # a WorkerJob, or its object-store reference
        self.cpus = cpus
        self.timeout_s = timeout_s
        self.budget_s = budget_s
        self.cancel = cancel or threading.Event()  # set: every wait raises Cancelled
        self.failures = 0
        self.shm = shm
        self.channels = channels and shm is not None
        self.slots: list[Slot] = []
        self.target = 0  # the job's worker count, which the pool returns to after losses
        self.dead: set[int] = set()
        self._starting: list[_Starting] = []  # started in the background to restore `target`
        self._restore_at, self._restore_pause = 0.0, _RETRY_S
        self._theta_ref: Any = None  # the published weights in the object store, if needed
        self._theta_shared = False  # the published weights are in shared memory
        self._clean = True  # no step ended by an exception (calls may still be running)
        self.resize(n_workers)

    # --- waiting ------------------------------------------------------------------------
    def _check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("the job was cancelled")

    def _pause(self, seconds: float) -> None:
        if self.cancel.wait(seconds):
            raise Cancelled("the job was cancelled")

    def _await(self, refs: list[Any], deadline: float) -> list[Any]:
        """Wait until every ref is ready or the deadline passes; returns those not ready."""
        left = list(refs)
        while left:
            self._check()
            wait = deadline - time.monotonic()
            if wait <= 0:
                break
            _, left = ray.wait(left, num_returns=len(left), timeout=min(_SLICE_S, wait))
        return left

    # --- lifecycle ----------------------------------------------------------------
    def _start(self, count: int, deadline: float) -> list[Slot]:
        """`count` new slots by `deadline`: actors lost while starting (killed, their node
        gone) are started again after a short pause until then."""
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
                self._pause(pause)
                pause = min(2 * pause, _RETRY_MAX_S)
        except BaseException:
            for sl in slots:
                self._drop(sl)
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
            late = self._await([x.ref for x in starting], deadline)
            for x in starting:
                slot = None if x.ref in late else self._adopt(x, deadline)
                if slot is not None:
                    slots.append(slot)
        except BaseException:
            for sl in slots:
                self._drop(sl)
            kill(actors)
            raise
        if late:
            for sl in slots:
                self._drop(sl)
            kill([x.actor for x in starting if x.ref in late])
            raise WorkersLost(f"could not start {count} worker(s) within the recovery budget: {len(late)} "
                              f"did not answer in time (no room in the cluster?)")
        return slots

    def _new(self, count: int) -> list[Any]:
        return [RayShardWorker.options(num_cpus=self.cpus, scheduling_strategy="SPREAD").remote(self.job)
                for _ in range(count)]

    def _ask(self, actors: list[Any]) -> list[_Starting]:
        probe = self.shm.probe if self.shm is not None else None
        listen = [self.shm.socket_path() if self.channels else None for _ in actors]
        return [_Starting(a, a.info.remote(probe, path), path) for a, path in zip(actors, listen)]

    def _adopt(self, x: _Starting, deadline: float) -> Slot | None:
        """The slot of an actor whose `info` call is done, or None if it was lost meanwhile.
        Raises WorkersLost if its constructor raised (that would only happen again)."""
        try:
            i = ray.get(x.ref)
        except _LOST as e:
            kill([x.actor])
            if isinstance(e, RayActorError) and e.actor_init_failed:
                raise WorkersLost(f"a worker failed to start: {str(e)[:500]}") from None
            self.failures += 1
            log.warning("a new worker was lost while starting (%s)", type(e).__name__)
            return None
        shm = bool(self.shm is not None and i.pop("shm", False) and i.get("node_id") == self.shm.node_id)
        chan = None
        if shm and i.pop("channel", False):
            try:
                chan = Channel(x.listen, timeout_s=max(0.1, min(10.0, deadline - time.monotonic())))
            except OSError as e:
                log.warning("no call channel to worker pid %s (%s); using Ray calls", i.get("pid"), e)
        i.pop("channel", None)
        i["transport"] = ("shm+socket" if chan else "shm") if shm else "object_store"
        return Slot(x.actor, i, shm, chan)

    def _warm(self, count: int, deadline: float) -> list[Any]:
        """Idle actors of an earlier job (`service/warm.py`), loaded with this one; any that
        cannot take it (gone while idle, or stuck) is killed and left out."""
        taken = WARM.take(self.cpus, count)
        loading = [(a, _submit(a.load, self.job)) for a in taken]
        try:
            late = self._await([r for _, r in loading if r is not None],
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
            except (RayTaskError, *_LOST) as e:
                log.info("warm worker unusable (%s); starting a new one", type(e).__name__)
            kill([a])
        return ready

    def _drop(self, slot: Slot) -> None:
        """Kill a slot's actor; its output file is unlinked once no call can name it."""
        kill([slot.actor])
        if slot.chan is not None:
            slot.chan.close()
        if self.shm is not None:
            self.shm.retire(slot.out)
        slot.out = None

    def resize(self, n: int) -> None:
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
            self.slots += self._start(n - len(self.slots), time.monotonic() + self.budget_s)
        while len(self.slots) > n:
            self._drop(self.slots.pop())

    def _restore(self) -> None:
        """Between steps, without making the job wait: slots given up during a step (no
        replacement started in time, e.g. no room in the cluster) are started again in the
        background, and join the pool once they answer. Attempts that fail are repeated,
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

    def shutdown(self) -> None:
        """Stop the job's workers: emptied and kept warm for the next job if the last step
        ended cleanly (no call can still be running), killed otherwise."""
        for s in self.slots:
            if s.chan is not None:
                s.chan.close()
        actors = [s.actor for s in self.slots]
        if self._clean:  # release runs before any call of the next job's (calls run in order)
            released = [(a, _submit(a.release)) for a in actors]
            kill([a for a, ref in released if ref is None])
            WARM.give(self.cpus, [a for a, ref in released if ref is not None])
        else:
            kill(actors)
        self._abandon_restore()
        self.slots = []
        self._theta_ref = None
        if self.shm is not None:
            self.shm.close()

    def nodes(self) -> list[dict[str, Any]]:
        return [{"worker": i, **s.info} for i, s in enumerate(self.slots)]

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
        if not self._theta_shared or any(not sl.shm for sl in self.slots):
            self._theta_ref = ray.put(theta)
        return shared if self._theta_shared else theta

    def _disable_shm(self) -> None:
        for sl in self.slots:
            if sl.chan is not None:
                sl.chan.close()
            sl.shm, sl.chan, sl.out = False, None, None
            sl.info["transport"] = "object_store"
        self.shm.close()
        self.shm, self.channels = None, False

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
        method = "compute"
        self._clean = False
        started = time.monotonic()
        recovery_deadline = started + self.budget_s
        outcomes: dict[int, Outcome] = {}
        pending: dict[Any, _Pending] = {}  # Ray ObjectRef or _ChanCall -> what it computes
        for sl in self.slots:
            sl.used = 0
        if self.shm is not None:
            self.shm.collect()  # files retired last step: no call can name them any more

        def dispatch(p: int, s: int) -> None:
            slot, plan, t = self.slots[s], plans[p], time.monotonic()  # before the worker can start
            out = self._shm_out(slot, s, plan) if slot.shm and self._theta_shared else None
            if out is None:
                key: Any = getattr(slot.actor, method).remote(self.theta_ref(), plan)
            elif slot.chan is not None and not slot.chan.closed:
                key = _ChanCall(slot.chan, slot.chan.call(method + "_shm", self.shm.call(*out), plan))
            else:
                key = getattr(slot.actor, method + "_shm").remote(self.shm.call(*out), plan)
            pending[key] = _Pending(p, s, slot, t, out)

        self.dead = set()
        for p in range(len(plans)):
            dispatch(p, p)
        while pending:
            self._check()
            now = time.monotonic()
            first_deadline = min(x.t + self.timeout_s for x in pending.values())
            for key in self._wait(list(pending), min(_SLICE_S, max(0.0, first_deadline - now))):
                x = pending.pop(key)
                try:
                    parts, compute_s = key.result() if isinstance(key, _ChanCall) else ray.get(key)
                except (*_LOST, _ChannelLost) as e:
                    self._lost(x, f"died: {type(e).__name__}", recovery_deadline, dispatch)
                    continue
                except (RayTaskError, ChannelError):
                    raise  # a bug or bad data, not a lost worker: let the job fail with it
                if x.out is not None and plans[x.p].trains:
                    self._attach_grads(parts, plans[x.p], *x.out)
                into.add(parts)
                outcomes[x.p] = Outcome(compute_s, time.monotonic() - x.t, x.s,
                                        x.slot.info.get("node_id", ""))
            now = time.monotonic()
            late = [key for key, x in pending.items() if now - x.t > self.timeout_s]
            answered = self._answered(late) if late else set()  # in while this loop was recovering
            for key in late:
                if key not in answered:
                    self._lost(pending.pop(key), f"missed the {self.timeout_s:g}s deadline", recovery_deadline,
                               dispatch)
        if self.dead:  # fewer workers until restored (the trajectory does not depend on the count)
            self.slots = [sl for i, sl in enumerate(self.slots) if i not in self.dead]
        self._restore()
        self._clean = True
        return [outcomes[p] for p in range(len(plans))]

    def _wait(self, keys: list[Any], timeout: float) -> list[Any]:
        """Keys ready within `timeout` (maybe none): Ray calls via ray.wait, channel calls by
        blocking in poll(2) on their sockets; with both kinds, alternating every 2 ms."""
        chans = [k for k in keys if isinstance(k, _ChanCall)]
        refs = [k for k in keys if not isinstance(k, _ChanCall)]
        end = time.monotonic() + timeout
        while True:
            ready: list[Any] = [k for k in chans if k.ready]
            left = max(0.0, end - time.monotonic())
            if refs:
                wait = 0.0 if ready else (min(left, _MIXED_POLL_S) if chans else left)
                ready += ray.wait(refs, num_returns=1, timeout=wait)[0]
            if ready or time.monotonic() >= end or not chans:
                return ready
            left = max(0.0, end - time.monotonic())
            _read_replies({k.chan for k in chans}, min(left, _MIXED_POLL_S) if refs else left)

    def _answered(self, keys: list[Any]) -> set[Any]:
        """Those of `keys` whose result is in, looked at without waiting (a call can look late
        only because the loop was busy recovering another worker meanwhile)."""
        chans = {k.chan for k in keys if isinstance(k, _ChanCall)}
        while _read_replies(chans, 0.0):  # a channel may hold several replies
            pass
        refs = [k for k in keys if not isinstance(k, _ChanCall)]
        done = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else set()
        return done | {k for k in keys if isinstance(k, _ChanCall) and k.ready}

    def _lost(self, x: _Pending, why: str, deadline: float, dispatch: Callable[[int, int], None]) -> None:
        """A call failed or timed out: replace its worker, unless that already happened."""
        if x.s in self.dead:  # its worker was given up earlier in this step
            self._reassign(x.s, x.p, why, deadline, dispatch)
        elif self.slots[x.s] is x.slot:
            self._recover(x.s, x.p, why, deadline, dispatch)
        else:  # the actor was replaced meanwhile: its replacement takes it
            dispatch(x.p, x.s)

    def _shm_out(self, slot: Slot, s: int, plan: Plan) -> tuple[Segment | None, int] | None:
        """Where worker s writes this plan's sums: its output file from its next free slot
        (calls to one worker within a step never share a slot). None: use the object store."""
        n = plan.n_nodes() if plan.trains else 0
        first = slot.used
        if n == 0:
            return slot.out, first
        need = (first + n) * self.shm.slot_stride
        if slot.out is None or slot.out.nbytes < need:
            try:
                seg = self.shm.new_output(first + n)
            except OSError as e:
                log.warning("no shared memory for worker %d's output (%s); using the object store", s, e)
                return None
            self.shm.retire(slot.out)  # earlier calls of this step keep their (mapped) views
            slot.out = seg
        slot.used = first + n
        return slot.out, first

    def _attach_grads(self, parts: list[Partial], plan: Plan, seg: Segment, first: int) -> None:
        nodes = [p.node for p in parts]
        if nodes != cover(*plan.run, plan.n_chunks()) or any(p.grad is not None for p in parts):
            raise RuntimeError(f"worker returned nodes {nodes} for run {plan.run} on the shared-memory path")
        for p, g in zip(parts, self.shm.output_views(seg, first, len(parts))):
            p.grad = g

    def _recover(self, s: int, p: int, why: str, deadline: float, dispatch: Callable[[int, int], None]) -> None:
        """Replace slot s and recompute plan p on the replacement (or on a survivor)."""
        self.failures += 1
        log.warning("worker %d (pid %s) %s; recomputing its chunks", s, self.slots[s].info.get("pid"), why)
        self._drop(self.slots[s])
        # Give a replacement a share of the budget only: if the cluster has no room for it
        # (its node is gone with its CPUs), a survivor must still have time to take over.
        replace_by = min(deadline, time.monotonic() + max(self.timeout_s, self.budget_s / 3))
        try:
            self.slots[s] = self._start(1, replace_by)[0]
        except WorkersLost as e:
            log.warning("no replacement for worker %d yet: %s", s, e)
            self.dead.add(s)
            self._reassign(s, p, why, deadline, dispatch)
            return
        self.dead.discard(s)
        dispatch(p, s)

    def _reassign(self, s: int, p: int, why: str, deadline: float, dispatch: Callable[[int, int], None]) -> None:
        """Slot s is given up for this step: a survivor computes plan p, or with none left,
        a new worker started within the rest of the recovery budget."""
        survivor = next((i for i in range(len(self.slots)) if i not in self.dead and self._alive(i)), None)
        if survivor is not None:
            log.warning("worker %d takes the chunks of worker %d", survivor, s)
            dispatch(p, survivor)
            return
        try:
            self.slots[s] = self._start(1, deadline)[0]
        except WorkersLost as e:
            raise WorkersLost(f"worker {s} {why} and no worker could take over its chunks within the "
                              f"{self.budget_s:g}s recovery budget ({e})") from None
        self.dead.discard(s)
        dispatch(p, s)

    def _alive(self, s: int) -> bool:
        ref = _submit(self.slots[s].actor.info)
        if ref is None or self._await([ref], time.monotonic() + self.timeout_s):
            return False
        try:
            ray.get(ref)
            return True
        except _LOST:
            return False
