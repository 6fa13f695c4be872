"""Ray workers for a job: start, dispatch with deadlines, recover, resize.

A step gives each worker one `Plan`. A worker that dies (its call raises) or misses the
deadline is killed and replaced, and its plan is recomputed by the replacement or, if
none can be started, by a surviving worker. Results are deterministic functions of
(weights, plan), so whoever computes a plan produces the same bits: recovery never rolls
back and never changes the trajectory. Every wait is bounded; a job whose workers cannot
be brought back within `recovery_budget_s` fails with `WorkersLost`.

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
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError, WorkerCrashedError

from service.warm import WARM, kill
from workers.actor import RayShardWorker
from workers.channel import Channel, ChannelError
from workers.shard import Partial, Plan, add_into
from workers.shm import Segment, ShmHost
from workers.tree import Node, cover, root

log = logging.getLogger(__name__)
_LOST = (RayActorError, WorkerCrashedError)
_MIXED_POLL_S = 0.002  # with both Ray calls and channel calls in flight, alternate this often
_WARM_LOAD_S = 10.0  # a warm actor that cannot take a job within this is replaced


def _submit(method: Any, *args: Any) -> Any:
    """`method.remote(*args)`, or None if Ray refuses it: it does so at once, with a plain
    Exception, for an actor it already knows is dead."""
    try:
        return method.remote(*args)
    except Exception:  # noqa: BLE001 - Ray raises no narrower type here
        return None


class WorkersLost(RuntimeError):
    """No worker could be (re)started within the recovery budget."""


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
class Outcome:
    """One plan's result. `parts` are the tree nodes tiling the plan's run, then any parent
    nodes the pool finished while waiting for other workers (see `_Reducer`)."""

    parts: list[Partial]
    compute_s: float
    total_s: float
    worker: int
    node: str


class _Reducer:
    """Finishes tree nodes as soon as both children are in, while other workers still compute.

    The value of a node is left + right (left first, into a buffer of its own): exactly the
    addition `tree_sum` performs, so the coordinator's reduction finds these nodes already
    done and the bits are unchanged. After the last result only the additions on its path
    to the root remain (log2 K of them, instead of K - 1, for K workers). The root's own
    addition is left to the trainer, which fuses it with the division (`service/tail.py`).
    """

    def __init__(self, n_chunks: int, scratch: dict[tuple, np.ndarray]) -> None:
        self.top = root(n_chunks)[1]
        self.known: dict[Node, Partial] = {}
        self.scratch = scratch

    def add(self, parts: list[Partial]) -> list[Partial]:
        done = []
        for p in parts:
            node = p.node
            self.known[node] = p
            while 2 * (node[1] - node[0]) < self.top:  # the parent is below the root
                size = node[1] - node[0]
                lo = node[0] - node[0] % (2 * size)
                left, right, parent = (lo, lo + size), (lo + size, lo + 2 * size), (lo, lo + 2 * size)
                if left not in self.known or right not in self.known or parent in self.known:
                    break
                a, b = self.known[left], self.known[right]
                key = (parent, a.grad.size, a.grad.dtype.str)
                out = self.scratch.get(key)
                if out is None:
                    out = self.scratch[key] = np.empty_like(a.grad)
                merged = replace(add_into(a, b, out), node=parent)
                self.known[parent] = merged
                done.append(merged)
                node = parent
        return done


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


@dataclass
class _Pending:
    p: int  # plan
    s: int  # slot index
    slot: Slot  # the slot as dispatched to (it may be replaced meanwhile)
    t: float  # dispatched at
    out: tuple[Segment | None, int] | None  # output file and first slot (shared-memory path)


class WorkerPool:
    def __init__(self, actor_args: tuple, n_workers: int, cpus: float, timeout_s: float,
                 budget_s: float, shm: ShmHost | None = None, channels: bool = True) -> None:
        self.actor_args = actor_args
        self.cpus = cpus
        self.timeout_s = timeout_s
        self.budget_s = budget_s
        self.failures = 0
        self.shm = shm
        self.channels = channels and shm is not None
        self.slots: list[Slot] = []
        self.dead: set[int] = set()
        self._theta_ref: Any = None  # the published weights in the object store, if needed
        self._theta_shared = False  # the published weights are in shared memory
        self._reduce_scratch: dict[tuple, np.ndarray] = {}  # one buffer per tree node, reused
        self._clean = True  # no step ended by an exception (calls may still be running)
        self.resize(n_workers)

    # --- lifecycle ----------------------------------------------------------------
    def _start(self, count: int, deadline: float) -> list[Slot]:
        actors = self._warm(count, deadline)
        if len(actors) < count:
            WARM.drain()  # idle actors of another size hold CPUs the new ones may need
            actors += [RayShardWorker.options(num_cpus=self.cpus, scheduling_strategy="SPREAD")
                       .remote(*self.actor_args) for _ in range(count - len(actors))]
        probe = self.shm.probe if self.shm is not None else None
        listen = [self.shm.socket_path() if self.channels else None for _ in actors]
        refs = [a.info.remote(probe, path) for a, path in zip(actors, listen)]
        try:
            infos = ray.get(refs, timeout=max(0.1, deadline - time.monotonic()))
        except (GetTimeoutError, *_LOST) as e:
            for a in actors:
                ray.kill(a)
            raise WorkersLost(f"could not start {count} worker(s) within the recovery budget: {e}") from None
        slots = []
        for a, i, path in zip(actors, infos, listen):
            shm = bool(self.shm is not None and i.pop("shm", False) and i.get("node_id") == self.shm.node_id)
            chan = None
            if shm and i.pop("channel", False):
                try:
                    chan = Channel(path, timeout_s=max(0.1, min(10.0, deadline - time.monotonic())))
                except OSError as e:
                    log.warning("no call channel to worker pid %s (%s); using Ray calls", i.get("pid"), e)
            i.pop("channel", None)
            i["transport"] = ("shm+socket" if chan else "shm") if shm else "object_store"
            slots.append(Slot(a, i, shm, chan))
        return slots

    def _warm(self, count: int, deadline: float) -> list[Any]:
        """Idle actors of an earlier job (`service/warm.py`), loaded with this one; any that
        cannot take it (gone while idle, or stuck) is killed and left out."""
        loading = [(a, _submit(a.load, *self.actor_args)) for a in WARM.take(self.cpus, count)]
        ready = []
        for a, ref in loading:
            try:
                if ref is not None:
                    ray.get(ref, timeout=max(0.1, min(_WARM_LOAD_S, deadline - time.monotonic())))
                    ready.append(a)
                    continue
            except (GetTimeoutError, RayTaskError, *_LOST) as e:
                log.info("warm worker unusable (%s); starting a new one", type(e).__name__)
            kill([a])
        return ready

    def _drop(self, slot: Slot) -> None:
        """Kill a slot's actor; its output file is unlinked once no call can name it."""
        ray.kill(slot.actor, no_restart=True)
        if slot.chan is not None:
            slot.chan.close()
        if self.shm is not None:
            self.shm.retire(slot.out)
        slot.out = None

    def resize(self, n: int) -> None:
        """Grow or shrink between steps; the trajectory does not depend on the count."""
        if n < 1:
            raise ValueError(f"workers: must be >= 1, got {n}")
        if n > len(self.slots):
            self.slots += self._start(n - len(self.slots), time.monotonic() + self.budget_s)
        while len(self.slots) > n:
            self._drop(self.slots.pop())

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
    def run(self, method: str, plans: list[Plan]) -> list[Outcome]:
        """One plan per slot (in order); returns one Outcome per plan, recovering failures.

        On the shared-memory path the returned partials' gradients are views of the
        workers' output files; those of nodes finished here live in the pool's buffers:
        either is valid until the next `run`.
        """
        self._clean = False
        started = time.monotonic()
        recovery_deadline = started + self.budget_s
        outcomes: dict[int, Outcome] = {}
        pending: dict[Any, _Pending] = {}  # Ray ObjectRef or _ChanCall -> what it computes
        train = len(plans) > 1 and all(pl.epoch >= 0 for pl in plans)
        reducer = _Reducer(plans[0].n_chunks(), self._reduce_scratch) if train else None
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
            now = time.monotonic()
            first_deadline = min(x.t + self.timeout_s for x in pending.values())
            for key in self._wait(list(pending), max(0.0, first_deadline - now)):
                x = pending.pop(key)
                try:
                    parts, compute_s = key.result() if isinstance(key, _ChanCall) else ray.get(key)
                except (*_LOST, _ChannelLost) as e:
                    self._lost(x, f"died: {type(e).__name__}", recovery_deadline, dispatch)
                    continue
                except (RayTaskError, ChannelError):
                    raise  # a bug or bad data, not a lost worker: let the job fail with it
                if x.out is not None and plans[x.p].epoch >= 0:
                    self._attach_grads(parts, plans[x.p], *x.out)
                if reducer is not None:
                    parts = parts + reducer.add(parts)
                outcomes[x.p] = Outcome(parts, compute_s, time.monotonic() - x.t, x.s,
                                        x.slot.info.get("node_id", ""))
            now = time.monotonic()
            for key, x in list(pending.items()):
                if now - x.t > self.timeout_s:
                    del pending[key]
                    self._lost(x, f"missed the {self.timeout_s:g}s deadline", recovery_deadline, dispatch)
        if self.dead:  # the job goes on with fewer workers; the trajectory is unchanged
            self.slots = [sl for i, sl in enumerate(self.slots) if i not in self.dead]
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
            live = {k.chan.fileno(): k.chan for k in chans if not k.chan.closed}
            poller = select.poll()
            for fd in live:
                poller.register(fd, select.POLLIN)
            left = max(0.0, end - time.monotonic())
            wait = min(left, _MIXED_POLL_S) if refs else left
            for fd, _ in poller.poll(math.ceil(wait * 1000)):
                live[fd].read_one()

    def _lost(self, x: _Pending, why: str, deadline: float, dispatch: Callable[[int, int], None]) -> None:
        """A call failed or timed out: replace its worker, unless that already happened."""
        if self.slots[x.s] is x.slot and x.s not in self.dead:
            self._recover(x.s, x.p, why, deadline, dispatch)
        elif x.s not in self.dead:  # the actor was replaced meanwhile: its replacement takes it
            dispatch(x.p, x.s)
        else:
            dispatch(x.p, self._survivor(x.s, why, deadline))

    def _shm_out(self, slot: Slot, s: int, plan: Plan) -> tuple[Segment | None, int] | None:
        """Where worker s writes this plan's sums: its output file from its next free slot
        (calls to one worker within a step never share a slot). None: use the object store."""
        n = plan.n_nodes() if plan.epoch >= 0 else 0
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
            self.dead.discard(s)
            dispatch(p, s)
        except WorkersLost:
            self.dead.add(s)
            dispatch(p, self._survivor(s, why, deadline))

    def _survivor(self, s: int, why: str, deadline: float) -> int:
        survivors = [i for i in range(len(self.slots)) if i not in self.dead and self._alive(i)]
        if not survivors or time.monotonic() > deadline:
            raise WorkersLost(f"worker {s} {why} and no worker could take over its chunks "
                              f"within the {self.budget_s:g}s recovery budget") from None
        log.warning("no replacement for worker %d; worker %d takes its chunks", s, survivors[0])
        return survivors[0]

    def _alive(self, s: int) -> bool:
        try:
            ray.get(self.slots[s].actor.info.remote(), timeout=self.timeout_s)
            return True
        except (GetTimeoutError, *_LOST):
            return False
