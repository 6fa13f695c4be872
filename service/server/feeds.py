"""In-memory fan-out of a job's progress to any number of gRPC streams.

The training thread never waits for a reader: it appends and notifies. `JobFeed` keeps
the whole metrics history of a job (small dicts), so a reconnecting WatchJob resumes from
any step without gaps. `WeightsFeed` keeps the last few versions of the weights (copies),
so a slow StreamWeights reader falls behind, and at worst skips versions, without ever
slowing training.
"""
from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np


class JobFeed:
    """Steps' events in step order; each event is built once and shared by every watcher."""

    def __init__(self, state: str, history: list[tuple[int, Any]] | None = None) -> None:
        self.cond = threading.Condition()  # reentrant: snapshot() calls since()
        self.state = state
        self.message = ""
        self.metrics: list[tuple[int, Any]] = list(history or [])
        self.changes = 0  # bumped on every state change, so watchers notice each one

    def set_state(self, state: str, message: str = "") -> None:
        with self.cond:
            self.state, self.message = state, message
            self.changes += 1
            self.cond.notify_all()

    def add_metrics(self, step: int, event: Any) -> None:
        with self.cond:
            while self.metrics and self.metrics[-1][0] >= step:  # a resumed job re-runs steps
                self.metrics.pop()
            self.metrics.append((step, event))
            self.cond.notify_all()

    def since(self, step: int) -> list[tuple[int, Any]]:
        """Metrics of steps >= `step` (the list is ordered by step)."""
        with self.cond:
            return self.metrics[bisect.bisect_left(self.metrics, step, key=lambda item: item[0]):]

    def snapshot(self, step: int) -> tuple[int, str, str, list[tuple[int, Any]]]:
        """(changes, state, message, metrics of steps >= `step`), read together.

        The training thread records a step's metrics before any state that follows it, so
        when the state read here is final, the metrics read with it are complete: a watcher
        that sends them first and the final state last loses no step.
        """
        with self.cond:
            return self.changes, self.state, self.message, self.since(step)

    def wait(self, seen_step: int, seen_changes: int, timeout: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.changes != seen_changes or
                               (self.metrics and self.metrics[-1][0] > seen_step), timeout)


@dataclass
class Version:
    version: int
    step: int
    theta: np.ndarray


class WeightsFeed:
    def __init__(self, keep: int) -> None:
        self.cond = threading.Condition()
        self.ring: deque[Version] = deque(maxlen=keep)
        self.subscribers = 0
        self.closed = False
        self._snapshot_wanted = False
        self.snapshot: Version | None = None

    def publish(self, version: int, step: int, theta: np.ndarray) -> None:
        """Called by the training thread after each update; copies only if someone reads."""
        if not self.subscribers and not self._snapshot_wanted:
            return
        with self.cond:
            v = Version(version, step, theta.copy())
            if self.subscribers:
                self.ring.append(v)
            self.snapshot, self._snapshot_wanted = v, False
            self.cond.notify_all()

    def next_after(self, version: int, timeout: float) -> Version | None:
        """The oldest kept version newer than `version`, waiting up to `timeout`."""
        with self.cond:
            self.cond.wait_for(lambda: self.closed or (self.ring and self.ring[-1].version > version), timeout)
            for v in self.ring:
                if v.version > version:
                    return v
            return None

    def latest(self, timeout: float) -> Version | None:
        """A consistent copy of the current weights, taken at the next step boundary."""
        with self.cond:
            self._snapshot_wanted = True
            seen = self.snapshot.version if self.snapshot else -1
            self.cond.wait_for(lambda: self.closed or (self.snapshot and self.snapshot.version > seen), timeout)
            return self.snapshot

    def subscribe(self, delta: int) -> None:
        with self.cond:
            self.subscribers += delta

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
