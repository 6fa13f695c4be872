"""The job store interface: what the service must remember across restarts.

A job's record (spec, state, progress), its metrics history (so ``WatchJob`` can resume
from any step) and the registry of uploaded datasets. Two implementations share one
test suite (``tests/test_store.py``): :class:`~service.store.sqlite.SqliteJobStore`
(durable: an accepted job survives ``kill -9``) and
:class:`~service.store.memory.MemoryJobStore` (tests, ephemeral servers).

States and legal transitions (anything else raises :class:`IllegalTransition`)::

    QUEUED  -> RUNNING | CANCELLED
    RUNNING -> SUCCEEDED | FAILED | CANCELLED | QUEUED   (requeued after a server restart)
    SUCCEEDED, FAILED, CANCELLED: final
"""
from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
TRANSITIONS: dict[str, frozenset[str]] = {
    "QUEUED": frozenset({"RUNNING", "CANCELLED"}),
    "RUNNING": frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "QUEUED"}),
    **{s: frozenset() for s in TERMINAL},
}
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
UPDATABLE = frozenset({"name", "spec", "step", "total_steps", "epoch", "error", "checkpoint_step", "last_metrics"})
"""Fields :meth:`JobStore.update` may set; state and timestamps change only through transitions."""


class StoreError(Exception):
    """Base class of the store's errors."""


class JobNotFound(StoreError, KeyError):
    """No job with this id."""

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return f"job {self.args[0]!r} not found"


class DatasetNotFound(StoreError, KeyError):
    """No uploaded dataset with this id."""

    def __str__(self) -> str:
        return f"dataset {self.args[0]!r} not found"


class IllegalTransition(StoreError, ValueError):
    """A state change the lifecycle forbids, e.g. SUCCEEDED -> RUNNING."""


class InvalidPageToken(StoreError, ValueError):
    """A page token this store did not issue."""


@dataclass
class JobRecord:
    id: str
    name: str
    spec: dict[str, Any]  # the validated TrainConfig.to_dict()
    state: str = "QUEUED"
    created: float = 0.0  # unix seconds
    started: float | None = None  # first time it ran
    finished: float | None = None  # when it reached a final state
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    error: str | None = None
    checkpoint_step: int | None = None
    last_metrics: dict[str, Any] = field(default_factory=dict)


def new_job_id() -> str:
    """20 hex digits: milliseconds since the epoch, then 32 random bits (sortable by time)."""
    return f"{int(time.time() * 1000):012x}{os.urandom(4).hex()}"


def check_transition(job_id: str, old: str, new: str) -> None:
    if new not in STATES:
        raise ValueError(f"unknown state {new!r}; states: {list(STATES)}")
    if new not in TRANSITIONS[old]:
        allowed = sorted(TRANSITIONS[old]) or "none (final state)"
        raise IllegalTransition(f"job {job_id}: cannot go from {old} to {new}; allowed: {allowed}")


def transition_changes(rec: JobRecord, new: str, error: str | None, now: float) -> dict[str, Any]:
    """The fields a legal transition sets: timestamps, and the error if one is given."""
    check_transition(rec.id, rec.state, new)
    changes: dict[str, Any] = {"state": new}
    if new == "RUNNING" and rec.started is None:
        changes["started"] = now
    if new in TERMINAL:
        changes["finished"] = now
    if error is not None:
        changes["error"] = error
    return changes


def check_updates(fields: dict[str, Any]) -> None:
    bad = sorted(set(fields) - UPDATABLE)
    if bad:
        raise ValueError(f"cannot update {bad}; updatable: {sorted(UPDATABLE)} (state via transition())")


def page_args(states: Iterable[str] | None, page_size: int, page_token: str) -> tuple[tuple[str, ...], int, int]:
    """Validate list() arguments: (state filter, page size, last sequence number seen)."""
    wanted = tuple(states or ())
    for s in wanted:
        if s not in STATES:
            raise ValueError(f"unknown state {s!r}; states: {list(STATES)}")
    size = DEFAULT_PAGE_SIZE if page_size <= 0 else min(page_size, MAX_PAGE_SIZE)
    if not page_token:
        return wanted, size, 0
    if not page_token.isdigit():
        raise InvalidPageToken(f"invalid page token {page_token!r}")
    return wanted, size, int(page_token)


class JobStore(ABC):
    """Jobs, their metrics history and uploaded datasets. Safe to share between threads."""

    @abstractmethod
    def create(self, name: str, spec: dict[str, Any]) -> JobRecord:
        """Persist a new QUEUED job (durably, before the caller acknowledges it)."""

    @abstractmethod
    def get(self, job_id: str) -> JobRecord:
        """The job's record; :class:`JobNotFound` if unknown."""

    @abstractmethod
    def list(self, states: Iterable[str] | None = None, page_size: int = DEFAULT_PAGE_SIZE,
             page_token: str = "") -> tuple[list[JobRecord], str]:
        """One page of jobs in creation order and the next page's token ("" on the last).

        Paging is by creation sequence, so jobs created meanwhile never shift a page.
        """

    @abstractmethod
    def update(self, job_id: str, **fields: Any) -> JobRecord:
        """Set progress fields (see :data:`UPDATABLE`); returns the new record."""

    @abstractmethod
    def transition(self, job_id: str, new_state: str, error: str | None = None) -> JobRecord:
        """Atomically check and apply a state change (see the module docstring)."""

    @abstractmethod
    def append_metrics(self, job_id: str, items: list[tuple[int, dict[str, Any]]]) -> None:
        """Record steps' metrics in one transaction; the last become ``last_metrics`` and set
        ``step`` (and ``epoch`` when the metrics carry one).

        Batched because a durable write costs an fsync: the manager flushes about once a
        second and at every checkpoint. A step recorded again (replayed after resuming from
        a checkpoint) replaces the old entry.
        """

    @abstractmethod
    def metrics(self, job_id: str, from_step: int = 0) -> list[tuple[int, dict[str, Any]]]:
        """Recorded metrics of steps >= ``from_step``, in step order."""

    @abstractmethod
    def unfinished(self) -> list[JobRecord]:
        """QUEUED and RUNNING jobs in creation order: the work to resume after a crash."""

    @abstractmethod
    def add_dataset(self, info: dict[str, Any]) -> dict[str, Any]:
        """Register an uploaded dataset by ``info["id"]`` (its sha256).

        Adding an id again keeps the first entry (same bytes, same dataset) and returns it.
        ``created`` is filled in if missing.
        """

    @abstractmethod
    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        """A dataset's info; :class:`DatasetNotFound` if unknown."""

    @abstractmethod
    def list_datasets(self) -> list[dict[str, Any]]:
        """All datasets in registration order."""

    def close(self) -> None:
        """Release resources; the store is unusable afterwards."""

    def __enter__(self) -> "JobStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
