"""The same-node transport: the weights out and the gradient sums back through shared files.

A worker on the coordinator's node reads the published weights from one shared file and
writes its tree-node partial sums straight into its own shared output file (`segments`);
only small metadata (node, loss, count, correct, index sum, compute time) comes back. The
call itself (a `ShmCall` and the `Plan`, a few hundred bytes) goes over a Unix socket
(`channel`; `$DPTRAIN_SHM=calls`: a Ray actor call instead). Workers on other nodes use
`ray_calls` (`$DPTRAIN_SHM=0` makes every worker use it).
"""
from __future__ import annotations

import logging
import math
import os
import select
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from dptrain.core.reduce import Partial, cover
from dptrain.core.shard import Plan, ShardComputer
from dptrain.execution.transports import WorkerGone, channel
from dptrain.execution.transports.ray_calls import RayCall, RayLink
from dptrain.execution.transports.segments import (
    Segment,
    cleanup_stale,
    hold_lock,
    new_prefix,
    slot_stride,
    unlink_owned,
)

log = logging.getLogger(__name__)


# --- what travels in the call --------------------------------------------------------------
@dataclass(frozen=True)
class SegmentRef:
    path: str
    nonce: int


@dataclass(frozen=True)
class ShmCall:
    """One compute call on the fast path: where the weights are and where to write.

    The weights are `theta_count` items of `dtype` in `theta`, at `version`. Gradient sums
    go to `out`, one `theta_count`-sized slot per tree node of the run, from `out_slot`.
    """

    theta: SegmentRef
    version: int
    dtype: str
    theta_count: int
    out: SegmentRef | None
    out_slot: int


# --- the worker's end ------------------------------------------------------------------------
class ShmWorker:
    """This transport's actor methods (a mixin of the worker actor, which holds `computer`):
    the coordinator's files mapped by path, the weights read-only, its output writable."""

    computer: ShardComputer

    def detach_shm(self) -> None:
        """Forget the mapped files (a released worker must not hold a job's files)."""
        self._theta_seg: Segment | None = None
        self._out_seg: Segment | None = None

    def shm_info(self, probe: SegmentRef, listen: str | None) -> dict[str, bool]:
        """Whether this worker can map the coordinator's files (`shm`) and, asked to
        `listen`, whether it now serves calls on a Unix socket there (`channel`)."""
        try:
            Segment.attach(probe.path, probe.nonce, writable=False)
        except OSError:
            return {"shm": False}
        if listen is None:
            return {"shm": True}
        try:
            channel.serve(listen, self.compute_shm)
            return {"shm": True, "channel": True}
        except OSError:
            return {"shm": True, "channel": False}

    def compute_shm(self, call: ShmCall, plan: Plan) -> tuple[list[Partial], float]:
        """Partial sums for `plan`: the weights read from `call.theta`, the gradient sums
        written to slots `call.out_slot`, ... of `call.out` (in the order of the returned
        nodes); the returned partials carry no array (grad None)."""
        t0 = time.perf_counter()
        self.before_call()
        theta = self._theta(call)
        out = self._out_slots(call, plan.n_nodes() if plan.trains else 0)
        parts = self.computer.compute(theta, plan, out=out if out else None)
        for p in parts:
            p.grad = None
        return parts, time.perf_counter() - t0

    def before_call(self) -> None:
        """Hook run before each call's computation (fault injection)."""

    def _theta(self, call: ShmCall) -> np.ndarray:
        seg = self._theta_seg
        if seg is None or seg.path != call.theta.path:
            seg = self._theta_seg = Segment.attach(call.theta.path, call.theta.nonce, writable=False)
        if seg.version != call.version:
            raise RuntimeError(f"shared weights are at version {seg.version}, the call expects {call.version}")
        return seg.array(np.dtype(call.dtype), call.theta_count)

    def _out_slots(self, call: ShmCall, n: int) -> list[np.ndarray]:
        if n == 0:
            return []
        if call.out is None:
            raise RuntimeError("a training call on the shared-memory path needs an output segment")
        seg = self._out_seg
        if seg is None or seg.path != call.out.path:
            seg = self._out_seg = Segment.attach(call.out.path, call.out.nonce, writable=True)
        dtype = np.dtype(call.dtype)
        stride = slot_stride(call.theta_count * dtype.itemsize)
        if (call.out_slot + n) * stride > seg.nbytes:
            raise RuntimeError(f"output segment too small for slots {call.out_slot}..{call.out_slot + n}")
        return [seg.array(dtype, call.theta_count, (call.out_slot + j) * stride) for j in range(n)]


# --- the coordinator's end: its files --------------------------------------------------------
class ShmHost:
    """The coordinator's segments: a probe, the published weights, workers' output files.

    Only the coordinator creates and unlinks files. Every worker (every actor instance:
    a replacement gets a new one) writes into its own output file, so a killed worker
    that is still running for a moment can never write into data the coordinator reads.
    """

    def __init__(self, node_id: str) -> None:
        cleanup_stale()
        self.node_id = node_id
        self.prefix = new_prefix()
        self._count = 0
        self._theta: Segment | None = None
        self._theta_view: np.ndarray | None = None
        self.version = 0
        self._retired: list[Segment] = []
        self._lock: int | None = hold_lock(self.prefix)  # our files are in use while held
        try:
            self._probe = self._create("probe", 8)
        except BaseException:
            self.close()
            raise

    def _create(self, what: str, nbytes: int) -> Segment:
        self._count += 1
        return Segment.create(self.prefix, f"{self._count}-{what}", nbytes)

    @property
    def probe(self) -> SegmentRef:
        return SegmentRef(self._probe.path, self._probe.nonce)

    def publish(self, theta: np.ndarray) -> np.ndarray:
        """Copy `theta` into the shared weights (a new file if its size or type changed) and
        return them. Given the shared weights themselves (the coordinator updates them in
        place between steps), publishing is only a version bump.

        Raises OSError if a needed file cannot be created (the caller falls back)."""
        view = self._theta_view
        if view is None or view.dtype != theta.dtype or view.size != theta.size:
            seg = self._create("theta", theta.nbytes)
            if self._theta is not None:
                self.retire(self._theta)
            self._theta, self._theta_view = seg, seg.array(theta.dtype, theta.size)
            view = self._theta_view
        if theta is not view:
            np.copyto(view, theta)
        self.version += 1
        self._theta.set_version(self.version)
        return view

    @property
    def theta(self) -> np.ndarray | None:
        """The published weights (the coordinator's view of the shared file)."""
        return self._theta_view

    def call(self, out: Segment | None, out_slot: int) -> ShmCall:
        view = self._theta_view
        return ShmCall(SegmentRef(self._theta.path, self._theta.nonce), self.version, view.dtype.str,
                       view.size, None if out is None else SegmentRef(out.path, out.nonce), out_slot)

    def new_output(self, slots: int) -> Segment:
        """An output file of `slots` gradient-sized slots (OSError if there is no room)."""
        return self._create("out", slots * self.slot_stride)

    @property
    def slot_stride(self) -> int:
        return slot_stride(self._theta_view.nbytes)

    def socket_path(self) -> str:
        """A fresh name for a worker's call socket (the worker binds it)."""
        self._count += 1
        return f"{self.prefix}-{self._count}-sock"

    def output_views(self, seg: Segment, first: int, n: int) -> list[np.ndarray]:
        view, stride = self._theta_view, self.slot_stride
        return [seg.array(view.dtype, view.size, (first + j) * stride) for j in range(n)]

    def retire(self, seg: Segment | None) -> None:
        """Unlink `seg` at the next `collect` (when no call in flight can still name it)."""
        if seg is not None:
            self._retired.append(seg)

    def collect(self) -> None:
        for seg in self._retired:
            seg.unlink()
        self._retired.clear()

    def close(self) -> None:
        """Unlink every file of ours, then release the lock (idempotent)."""
        self._retired.clear()
        unlink_owned(self.prefix)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


# --- the coordinator's end: one worker's link, its calls -------------------------------------
def offer(host: ShmHost | None, channels: bool) -> tuple[SegmentRef | None, str | None]:
    """What a starting worker is asked (`info`): a probe file to map, and where to listen."""
    if host is None:
        return None, None
    return host.probe, host.socket_path() if channels else None


def connect(host: ShmHost | None, actor: Any, info: dict[str, Any], listen: str | None, deadline: float,
            theta_ref: Callable[[], Any]) -> RayLink | ShmLink:
    """The link to a started worker, from its `info` answer (whose transport keys it pops):
    shared memory if it runs on this node and mapped the probe, over its socket if it listens."""
    fallback = RayLink(actor, theta_ref)
    shm = bool(host is not None and info.pop("shm", False) and info.get("node_id") == host.node_id)
    chan = None
    if shm and info.pop("channel", False):
        try:
            chan = channel.Channel(listen, timeout_s=max(0.1, min(10.0, deadline - time.monotonic())))
        except OSError as e:
            log.warning("no call channel to worker pid %s (%s); using Ray calls", info.get("pid"), e)
    info.pop("channel", None)
    return ShmLink(actor, host, chan, fallback, info.get("pid")) if shm else fallback


def wait_channels(calls: list[ChannelCall], timeout_s: float) -> list[ChannelCall]:
    """Calls whose reply is in: if none is yet, block in poll(2) up to `timeout_s` on their
    sockets; then read every reply already there (end-of-file closes a channel)."""
    if not any(c.ready for c in calls):
        _read_replies({c.chan for c in calls}, timeout_s)
    while _read_replies({c.chan for c in calls}, 0.0):  # a channel may hold several replies
        pass
    return [c for c in calls if c.ready]


def _read_replies(chans: set[channel.Channel], wait_s: float) -> int:
    """Read one reply from each open channel readable within `wait_s`; returns how many."""
    live = {c.fileno(): c for c in chans if not c.closed}
    poller = select.poll()
    for fd in live:
        poller.register(fd, select.POLLIN)
    events = poller.poll(math.ceil(wait_s * 1000)) if live else []
    for fd, _ in events:
        live[fd].read_one()
    return len(events)


class ChannelCall:
    """A call in flight on a worker's socket."""

    waiter = staticmethod(wait_channels)

    def __init__(self, chan: channel.Channel, seq: int, finish: Callable[[list[Partial]], None] | None) -> None:
        self.chan, self.seq, self.finish = chan, seq, finish

    @property
    def ready(self) -> bool:
        return self.seq in self.chan.replies or self.chan.closed

    def take(self) -> tuple[list[Partial], float]:
        if self.seq not in self.chan.replies:
            raise WorkerGone("channel closed")
        ok, result = self.chan.replies.pop(self.seq)
        if not ok:
            raise channel.ChannelError(result)  # a bug or bad data, not a lost worker
        parts, compute_s = result
        if self.finish is not None:
            self.finish(parts)
        return parts, compute_s


class ShmLink:
    """One same-node worker: calls name the shared weights and this worker's output file.

    Every worker (every actor instance: a replacement gets a new one) writes into its own
    output file, and calls to it within a step never share a slot of it, so a killed worker
    still running for a moment can never write into data the coordinator reads.
    """

    shared = True

    def __init__(self, actor: Any, host: ShmHost, chan: channel.Channel | None, fallback: RayLink,
                 pid: Any = None) -> None:
        self.actor, self.host, self.chan, self.fallback, self.pid = actor, host, chan, fallback, pid
        self.out: Segment | None = None  # this worker's output file
        self.used = 0  # output slots handed out in the current step

    @property
    def name(self) -> str:
        return "shm+socket" if self.chan is not None else "shm"

    def begin_step(self) -> None:
        self.used = 0

    def send(self, plan: Plan) -> ChannelCall | RayCall:
        out = self._reserve(plan)
        if out is None:
            return self.fallback.send(plan)
        call = self.host.call(*out)
        finish = (lambda parts: self._attach(parts, plan, *out)) if plan.trains else None
        if self.chan is not None and not self.chan.closed:
            return ChannelCall(self.chan, self.chan.call(call, plan), finish)
        return RayCall(self.actor.compute_shm.remote(call, plan), finish)

    def _reserve(self, plan: Plan) -> tuple[Segment | None, int] | None:
        """Where this plan's sums go: the output file from its next free slot (None: no room,
        use the object store for this call)."""
        n = plan.n_nodes() if plan.trains else 0
        first = self.used
        if n == 0:
            return self.out, first
        if self.out is None or self.out.nbytes < (first + n) * self.host.slot_stride:
            try:
                seg = self.host.new_output(first + n)
            except OSError as e:
                log.warning("no shared memory for worker pid %s's output (%s); using the object store", self.pid, e)
                return None
            self.host.retire(self.out)  # earlier calls of this step keep their (mapped) views
            self.out = seg
        self.used = first + n
        return self.out, first

    def _attach(self, parts: list[Partial], plan: Plan, seg: Segment, first: int) -> None:
        nodes = [p.node for p in parts]
        if nodes != cover(*plan.run, plan.n_chunks()) or any(p.grad is not None for p in parts):
            raise RuntimeError(f"worker returned nodes {nodes} for run {plan.run} on the shared-memory path")
        for p, g in zip(parts, self.host.output_views(seg, first, len(parts))):
            p.grad = g

    def close(self) -> None:
        """Close the socket; the output file is unlinked once no call can name it."""
        if self.chan is not None:
            self.chan.close()
        self.host.retire(self.out)
        self.out = None
