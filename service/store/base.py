"""The job store interface: what the service must remember across restarts.

A job's record (spec, state, progress), its metrics history (so ``WatchJob`` can resume
from any step) and the registry of uploaded datasets. Two implementations share one
test suite (``tests/test_store.py``): :class:`~dptrain.store.sqlite.SqliteJobStore`
(durable: an accepted job survives ``kill -9``) and
:class:`~dptrain.store.memory.MemoryJobStore` (tests, ephemeral servers).

States and legal transitions (anything else raises :class:`IllegalTransition`)::

    QUEUED    -> RUNNING | CANCELLED
    RUNNING   -> SUCCEEDED | FAILED | CANCELLED | QUEUED   (requeued after a server restart)
    FAILED    -> QUEUED   (ResumeJob: clears ``error`` and ``finished``)
    CANCELLED -> QUEUED   (ResumeJob: clears ``error`` and ``finished``)
    SUCCEEDED: final

:data:`TERMINAL` are the states a job rests in until someone acts (a WatchJob stream ends
there); only SUCCEEDED is final for good.

Errors: every store raises :class:`StoreError` subclasses. :class:`StoreUnavailable` means
the storage itself failed (disk full, I/O error, read-only file system): the request was
fine, retrying after the operator frees space succeeds, and the store needs no reopening.
Client-supplied ids are never echoed unbounded (:func:`clip`).
"""
from __future__ import annotations

import json
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from dptrain.engine.errors import show as clip


class JobState(str, Enum):
    """A job's state. A `str` too, equal to its name, so it is stored, compared and sent as text
    (the store's column, the proto's `JOB_STATE_<name>`) without conversions."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    def __str__(self) -> str:
        return self.value


STATES = tuple(JobState)
TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
ACTIVE = frozenset({JobState.QUEUED, JobState.RUNNING})
"""The work to resume after a crash."""
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.CANCELLED: frozenset({JobState.QUEUED}),
    JobState.SUCCEEDED: frozenset(),
}
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
UPDATABLE = frozenset({"name", "spec", "step", "total_steps", "epoch", "error", "checkpoint_step", "last_metrics",
                       "stats"})
"""Fields :meth:`JobStore.update` may set; state and timestamps change only through transitions."""
MIN_PREFIX = 4
"""The shortest job id prefix :meth:`JobStore.resolve_id` accepts."""
MAX_REQUEST_ID = 128
"""The longest idempotency key :meth:`JobStore.create` accepts."""
_ID = re.compile(r"[0-9a-f]{1,20}")  # what new_job_id() makes, or a prefix of it (fullmatch)


class StoreError(Exception):
    """Base class of the store's errors."""


class StoreUnavailable(StoreError):
    """The storage failed (disk full, I/O error, read-only file system), not the request.

    ``store`` names the store and its path (e.g. ``job store /x/jobs.sqlite``), ``action``
    what it could not do, ``cause`` the underlying error's text. Transient: once space
    returns the same store object works again.
    """

    def __init__(self, store: str, action: str, cause: BaseException | str) -> None:
        self.store, self.action, self.cause = store, action, str(cause)
        super().__init__(f"{store}: cannot {action}: {self.cause}")

    def __reduce__(self):  # picklable despite the three-argument constructor
        return type(self), (self.store, self.action, self.cause)


class JobNotFound(StoreError, KeyError):
    """No job with this id. ``job_id`` is what was asked for; the message clips it."""

    def __init__(self, job_id: object) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {clip(job_id)}")

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return str(self.args[0])

    def __reduce__(self):
        return type(self), (self.job_id,)


class AmbiguousId(StoreError, ValueError):
    """A job id prefix that is too short, or matches several jobs (``matches``: up to 5 of them)."""

    def __init__(self, message: str, matches: list[str] | None = None) -> None:
        self.matches = list(matches or [])
        super().__init__(message)

    def __reduce__(self):
        return type(self), (self.args[0], self.matches)


class RequestIdConflict(StoreError, ValueError):
    """An idempotency key reused for a different request (another name or spec)."""


class DatasetNotFound(StoreError, KeyError):
    """No uploaded dataset with this id."""

    def __init__(self, dataset_id: object) -> None:
        self.dataset_id = dataset_id
        super().__init__(f"no dataset with id {clip(dataset_id)}")

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self):
        return type(self), (self.dataset_id,)


class IllegalTransition(StoreError, ValueError):
    """A state change the lifecycle forbids, e.g. SUCCEEDED -> RUNNING."""


class InvalidPageToken(StoreError, ValueError):
    """A page token this store did not issue."""


@dataclass
class JobRecord:
    id: str
    name: str
    spec: dict[str, Any]  # the validated TrainConfig.to_dict()
    state: JobState = JobState.QUEUED
    created: float = 0.0  # unix seconds
    started: float | None = None  # first time it ran
    finished: float | None = None  # when it reached a final state
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    error: str | None = None
    checkpoint_step: int | None = None
    last_metrics: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)  # failures and the epoch ledger, as of the last checkpoint
    request_id: str | None = None  # the client's idempotency key, if it sent one


def new_job_id() -> str:
    """20 hex digits: milliseconds since the epoch, then 32 random bits (sortable by time)."""
    return f"{int(time.time() * 1000):012x}{os.urandom(4).hex()}"


def check_transition(job_id: str, old: str, new: str) -> None:
    if new not in STATES:
        raise ValueError(f"unknown state {new!r}; states: {[str(x) for x in STATES]}")
    if new not in TRANSITIONS[JobState(old)]:
        allowed = sorted(str(s) for s in TRANSITIONS[JobState(old)]) or "none (final state)"
        raise IllegalTransition(f"job {job_id}: cannot go from {old} to {new}; allowed: {allowed}")


def transition_changes(rec: JobRecord, new: str, error: str | None, now: float) -> dict[str, Any]:
    """The fields a legal transition sets: timestamps, and the error if one is given."""
    check_transition(rec.id, rec.state, new)
    changes: dict[str, Any] = {"state": JobState(new)}
    if new == JobState.RUNNING and rec.started is None:
        changes["started"] = now
    if new in TERMINAL:
        changes["finished"] = now
    if new == JobState.QUEUED and rec.state in TERMINAL:  # resumed: it is neither finished nor failed now
        changes.update(finished=None, error=None)
    if error is not None:
        changes["error"] = error
    return changes


def check_request_id(request_id: str | None) -> str | None:
    """The idempotency key to store: None for none ("" included, as proto3 sends it)."""
    if request_id is None or request_id == "":
        return None
    if not isinstance(request_id, str) or len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
        raise ValueError(f"request_id must be at most {MAX_REQUEST_ID} printable characters, got {clip(request_id)}")
    return request_id


def same_request(rec: JobRecord, name: str, spec: dict[str, Any]) -> JobRecord:
    """``rec`` if it was created by this request (same name and spec), else :class:`RequestIdConflict`.

    Compared as JSON text, the form the durable store keeps (tuples become lists, NaN equals NaN).
    """
    if rec.name != name or _canonical(rec.spec) != _canonical(spec):
        raise RequestIdConflict(f"request_id {clip(rec.request_id)} was already used by job {rec.id} "
                                f"with a different name or spec")
    return rec


def _canonical(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True)


def check_prefix(prefix: str) -> str:
    """A job id prefix, lowercased; :class:`AmbiguousId` if too short, :class:`JobNotFound` if no id can match."""
    if not isinstance(prefix, str):
        raise JobNotFound(prefix)
    p = prefix.lower()
    if not _ID.fullmatch(p):
        raise JobNotFound(prefix)
    if len(p) < MIN_PREFIX:
        raise AmbiguousId(f"job id prefix {clip(prefix)} is too short: give at least {MIN_PREFIX} characters")
    return p


def unique_match(prefix: str, matches: list[str], total: int) -> str:
    """The one id in ``matches`` (up to 5 of the ``total`` ids starting with ``prefix``)."""
    if total == 0:
        raise JobNotFound(prefix)
    if total > 1:
        shown = ", ".join(matches[:5]) + (", ..." if total > 5 else "")
        raise AmbiguousId(f"job id prefix {clip(prefix)} matches {total} jobs: {shown}", matches[:5])
    return matches[0]


def check_updates(fields: dict[str, Any]) -> None:
    bad = sorted(set(fields) - UPDATABLE)
    if bad:
        raise ValueError(f"cannot update {bad}; updatable: {sorted(UPDATABLE)} (state via transition())")


def page_args(states: Iterable[str] | None, page_size: int, page_token: str) -> tuple[tuple[str, ...], int, int]:
    """Validate list() arguments: (state filter, page size, last sequence number seen)."""
    wanted = tuple(states or ())
    for s in wanted:
        if s not in STATES:
            raise ValueError(f"unknown state {s!r}; states: {[str(x) for x in STATES]}")
    size = DEFAULT_PAGE_SIZE if page_size <= 0 else min(page_size, MAX_PAGE_SIZE)
    if not page_token:
        return wanted, size, 0
    if not page_token.isdigit():
        raise InvalidPageToken(f"invalid page token {page_token!r}")
    return wanted, size, int(page_token)


class JobStore(ABC):
    """Jobs, their metrics history and uploaded datasets. Safe to share between threads."""

    @abstractmethod
    def create(self, name: str, spec: dict[str, Any], request_id: str | None = None) -> JobRecord:
        """Persist a new QUEUED job (durably, before the caller acknowledges it).

        With a ``request_id`` (a client's idempotency key, at most :data:`MAX_REQUEST_ID`
        printable characters; "" means none) a retry returns the job the first call created,
        atomically: two concurrent calls with one key create one job. Reusing a key with
        another name or spec raises :class:`RequestIdConflict`.
        """

    @abstractmethod
    def get(self, job_id: str) -> JobRecord:
        """The job's record; :class:`JobNotFound` if unknown."""

    @abstractmethod
    def resolve_id(self, prefix: str) -> str:
        """The id of the one job whose id starts with ``prefix`` (case-insensitive).

        :class:`JobNotFound` if none does (or ``prefix`` cannot be part of an id),
        :class:`AmbiguousId` if several do (listing up to 5) or the prefix is shorter
        than :data:`MIN_PREFIX`. A full id resolves to itself.
        """

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
    def metrics(self, job_id: str, from_step: int = 0, limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
        """Recorded metrics of steps >= ``from_step``, in step order; at most ``limit`` of them."""

    @abstractmethod
    def append_events(self, job_id: str, lines: list[tuple[float, str, str]]) -> None:
        """Add lines (time, kind, message) to the job's log (``dptrain logs``), in one
        transaction: what happened to it, in order."""

    @abstractmethod
    def events(self, job_id: str, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """The job's log lines with ``seq > after``, oldest first: dicts of seq, time, kind, message."""

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

    def check_writable(self) -> None:
        """Prove the store can write now, cheaply (call it every few seconds for health).

        Raises :class:`StoreUnavailable` naming the store and the cause. Stores that
        cannot fail (in memory) return at once.
        """

    def writable(self) -> bool:
        """:meth:`check_writable` as a yes/no answer."""
        try:
            self.check_writable()
        except StoreUnavailable:
            return False
        return True

    def close(self) -> None:
        """Release resources; the store is unusable afterwards."""

    def __enter__(self) -> "JobStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
