"""Bounded waits that honour a job's cancel flag, and the two ways a wait for workers ends badly.

Every wait of the worker group, dispatch and the failure policy is cut into slices of at
most `SLICE_S` that look at the flag, so a cancelled job stops within a fraction of a
second (`Cancelled`), and is bounded by a deadline; a job whose workers cannot be brought
back within its recovery budget fails with `WorkersLost`.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import ray

SLICE_S = 0.2  # the longest any wait runs before looking at the cancel flag again


class WorkersLost(RuntimeError):
    """No worker could be (re)started within the recovery budget."""


class Cancelled(Exception):
    """The job's cancel flag was set while the pool waited (for workers or for results)."""


class Waits:
    """The job's cancel flag, and waits that end early (`Cancelled`) once it is set."""

    def __init__(self, cancel: threading.Event | None = None) -> None:
        self.cancel = cancel or threading.Event()

    def check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("the job was cancelled")

    def pause(self, seconds: float) -> None:
        if self.cancel.wait(seconds):
            raise Cancelled("the job was cancelled")

    def refs(self, refs: list[Any], deadline: float) -> list[Any]:
        """Wait until every Ray ref is ready or the deadline passes; returns those not ready."""
        left = list(refs)
        while left:
            self.check()
            wait = deadline - time.monotonic()
            if wait <= 0:
                break
            _, left = ray.wait(left, num_returns=len(left), timeout=min(SLICE_S, wait))
        return left


def submit(method: Any, *args: Any) -> Any:
    """`method.remote(*args)`, or None if Ray refuses it: it does so at once, with a plain
    Exception, for an actor it already knows is dead."""
    try:
        return method.remote(*args)
    except Exception:  # noqa: BLE001 - Ray raises no narrower type here
        return None
