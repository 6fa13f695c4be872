"""How a step's plan reaches a worker and its sums come back: one small interface, two transports.

A `Link` is the coordinator's end of one worker's transport; it `send`s a plan and returns
a `Call` in flight. `wait(calls, timeout_s)` returns those ready within the timeout (maybe
none), across transports; `Call.take()` returns the worker's tree-node sums and compute
seconds, or raises `WorkerGone` (the worker died: the failure policy replaces it) or the
worker's own error (a bug or bad data: the step fails with it). Which transport carried a
call changes no bit.

Implementations, each module with both of its ends (the coordinator's link and calls, the
worker's actor methods):

- `ray_calls`: plain Ray actor calls; the weights and the sums go through the object store
  (workers on other nodes, or all with `$DPTRAIN_SHM=0`);
- `shm`: same-node workers read the weights from and write their sums to shared files
  (`segments`), the call itself going over a Unix socket (`channel`) or a Ray call.
"""
from __future__ import annotations

import time
from typing import Callable, Protocol

from dptrain.core.reduce import Partial
from dptrain.core.shard import Plan

MIXED_POLL_S = 0.002  # with calls of several transports in flight, alternate this often


class WorkerGone(Exception):
    """The worker died or its connection closed: the call will never complete."""


class Call(Protocol):
    """A plan in flight to one worker. `waiter` waits for calls of its own kind."""

    waiter: Callable[[list["Call"], float], list["Call"]]

    def take(self) -> tuple[list[Partial], float]: ...


class Link(Protocol):
    """The coordinator's end of one worker's transport."""

    name: str  # reported per worker: "object_store", "shm" or "shm+socket"
    shared: bool  # reads the published weights from shared memory (needs no object-store copy)

    def begin_step(self) -> None: ...
    def send(self, plan: Plan) -> Call: ...
    def close(self) -> None: ...


def wait(calls: list[Call], timeout_s: float) -> list[Call]:
    """The calls ready within `timeout_s` (maybe none). With calls of one transport its
    waiter blocks for the whole timeout; with several, each gets short slices in turn."""
    groups: dict[Callable, list[Call]] = {}
    for c in calls:
        groups.setdefault(type(c).waiter, []).append(c)
    end = time.monotonic() + timeout_s
    while True:
        ready: list[Call] = []
        for waiter, group in groups.items():
            left = max(0.0, end - time.monotonic())
            ready += waiter(group, 0.0 if ready else (left if len(groups) == 1 else min(left, MIXED_POLL_S)))
        if ready or time.monotonic() >= end:
            return ready
