"""An in-process JobStore: dicts behind one lock. For tests and ephemeral servers.

Records are deep-copied in and out, so callers never share mutable state with the
store (the same isolation the SQLite store gets from serialising to JSON).
"""
from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from .base import (
    ACTIVE,
    DEFAULT_PAGE_SIZE,
    DatasetNotFound,
    JobNotFound,
    JobRecord,
    JobStore,
    check_prefix,
    check_request_id,
    check_updates,
    new_job_id,
    page_args,
    same_request,
    transition_changes,
    unique_match,
)


class MemoryJobStore(JobStore):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, JobRecord] = {}  # insertion order = creation order
        self._seq: dict[str, int] = {}
        self._next_seq = 1
        self._metrics: dict[str, dict[int, dict[str, Any]]] = {}
        self._events: list[dict[str, Any]] = []
        self._datasets: dict[str, dict[str, Any]] = {}
        self._requests: dict[str, str] = {}  # idempotency key -> job id

    def _record(self, job_id: str) -> JobRecord:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobNotFound(job_id) from None

    def create(self, name: str, spec: dict[str, Any], request_id: str | None = None) -> JobRecord:
        request_id = check_request_id(request_id)
        with self._lock:
            if request_id is not None and request_id in self._requests:
                return copy.deepcopy(same_request(self._jobs[self._requests[request_id]], name, spec))
            rec = JobRecord(id=new_job_id(), name=name, spec=copy.deepcopy(spec), created=time.time(),
                            request_id=request_id)
            while rec.id in self._jobs:  # two ids in one millisecond with equal random bits
                rec.id = new_job_id()
            self._jobs[rec.id] = rec
            if request_id is not None:
                self._requests[request_id] = rec.id
            self._seq[rec.id] = self._next_seq
            self._next_seq += 1
            self._metrics[rec.id] = {}
            return copy.deepcopy(rec)

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            return copy.deepcopy(self._record(job_id))

    def resolve_id(self, prefix: str) -> str:
        p = check_prefix(prefix)
        with self._lock:
            matches = sorted(job_id for job_id in self._jobs if job_id.startswith(p))
        return unique_match(prefix, matches, len(matches))

    def list(self, states: Iterable[str] | None = None, page_size: int = DEFAULT_PAGE_SIZE,
             page_token: str = "") -> tuple[list[JobRecord], str]:
        wanted, size, after = page_args(states, page_size, page_token)
        with self._lock:
            page, token = [], ""
            for job_id, rec in self._jobs.items():
                seq = self._seq[job_id]
                if seq <= after or (wanted and rec.state not in wanted):
                    continue
                if len(page) == size:
                    token = str(self._seq[page[-1].id])
                    break
                page.append(rec)
            return copy.deepcopy(page), token

    def update(self, job_id: str, **fields: Any) -> JobRecord:
        check_updates(fields)
        with self._lock:
            rec = replace(self._record(job_id), **copy.deepcopy(fields))
            self._jobs[job_id] = rec
            return copy.deepcopy(rec)

    def transition(self, job_id: str, new_state: str, error: str | None = None) -> JobRecord:
        with self._lock:
            rec = self._record(job_id)
            rec = replace(rec, **transition_changes(rec, new_state, error, time.time()))
            self._jobs[job_id] = rec
            return copy.deepcopy(rec)

    def append_metrics(self, job_id: str, items: list[tuple[int, dict[str, Any]]]) -> None:
        with self._lock:
            rec = self._record(job_id)
            for step, metrics in items:
                self._metrics[job_id][int(step)] = copy.deepcopy(metrics)
            if items:
                step, last = items[-1]
                self._jobs[job_id] = replace(rec, step=int(step), last_metrics=copy.deepcopy(last),
                                             epoch=int(last.get("epoch", rec.epoch)))

    def metrics(self, job_id: str, from_step: int = 0, limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
        with self._lock:
            self._record(job_id)
            history = self._metrics[job_id]
            steps = [s for s in sorted(history) if s >= from_step][:limit]
            return [(s, copy.deepcopy(history[s])) for s in steps]

    def append_events(self, job_id: str, lines: list[tuple[float, str, str]]) -> None:
        with self._lock:
            self._record(job_id)
            for t, kind, message in lines:
                self._events.append({"seq": len(self._events) + 1, "time": float(t), "kind": kind,
                                     "message": message, "job_id": job_id})

    def events(self, job_id: str, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            self._record(job_id)
            found = [{k: v for k, v in e.items() if k != "job_id"} for e in self._events
                     if e["job_id"] == job_id and e["seq"] > after]
            return found[:limit]

    def unfinished(self) -> list[JobRecord]:
        with self._lock:
            return [copy.deepcopy(r) for r in self._jobs.values() if r.state in ACTIVE]

    def add_dataset(self, info: dict[str, Any]) -> dict[str, Any]:
        dataset_id = info.get("id")
        if not isinstance(dataset_id, str) or not dataset_id:
            raise ValueError(f"dataset info needs a non-empty string 'id', got {dataset_id!r}")
        with self._lock:
            if dataset_id not in self._datasets:
                self._datasets[dataset_id] = {**copy.deepcopy(info), "created": info.get("created") or time.time()}
            return copy.deepcopy(self._datasets[dataset_id])

    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        with self._lock:
            try:
                return copy.deepcopy(self._datasets[dataset_id])
            except KeyError:
                raise DatasetNotFound(dataset_id) from None

    def list_datasets(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(list(self._datasets.values()))
