"""The durable JobStore: one SQLite file, WAL mode, ``synchronous=FULL``.

An accepted job must survive ``kill -9`` of the server (and a power cut), so every
write is a committed transaction that is fsynced before the call returns. The gRPC
server is multi-threaded: one connection is shared behind a lock (SQLite serialises
writers anyway), and read-check-write sequences such as :meth:`transition` run in a
``BEGIN IMMEDIATE`` transaction so they are atomic even across processes.

Specs, metrics and dataset infos are JSON text columns.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from .base import (
    DEFAULT_PAGE_SIZE,
    DatasetNotFound,
    JobNotFound,
    JobRecord,
    JobStore,
    StoreError,
    check_updates,
    new_job_id,
    page_args,
    transition_changes,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- creation order, the paging key
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,                     -- JSON: the validated TrainConfig.to_dict()
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    epoch INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    checkpoint_step INTEGER,
    last_metrics TEXT NOT NULL DEFAULT '{}'  -- JSON
);
CREATE INDEX jobs_state ON jobs (state, seq);
CREATE TABLE metrics (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    step INTEGER NOT NULL,
    data TEXT NOT NULL,                     -- JSON
    PRIMARY KEY (job_id, step)
) WITHOUT ROWID;
CREATE TABLE datasets (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    info TEXT NOT NULL                      -- JSON
);
"""
_COLUMNS = ("id", "name", "spec", "state", "created", "started", "finished", "step", "total_steps",
            "epoch", "error", "checkpoint_step", "last_metrics")
_JSON = ("spec", "last_metrics")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM jobs"


class SqliteJobStore(JobStore):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        with self._tx() as c:
            exists = c.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'").fetchone()
            if not exists:
                for stmt in filter(str.strip, _SCHEMA.split(";")):  # executescript would COMMIT
                    c.execute(stmt)
                c.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                log.info("created job store schema v%d in %s", SCHEMA_VERSION, self.path)
                return
            row = c.execute("SELECT version FROM schema_version").fetchone()
            if row is None or row[0] != SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema version {row and row[0]} is not the supported "
                                 f"{SCHEMA_VERSION}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed (and fsynced) on exit, rolled back on error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    @staticmethod
    def _to_record(row: tuple) -> JobRecord:
        d = dict(zip(_COLUMNS, row))
        for key in _JSON:
            d[key] = json.loads(d[key])
        return JobRecord(**d)

    def _get(self, c: sqlite3.Connection, job_id: str) -> JobRecord:
        row = c.execute(f"{_SELECT} WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return self._to_record(row)

    def _set(self, c: sqlite3.Connection, job_id: str, fields: dict[str, Any]) -> None:
        values = [json.dumps(v) if k in _JSON else v for k, v in fields.items()]
        assignments = ", ".join(f"{k} = ?" for k in fields)  # keys come from UPDATABLE / transitions only
        c.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values, job_id))

    # --- JobStore ---------------------------------------------------------------------
    def create(self, name: str, spec: dict[str, Any]) -> JobRecord:
        rec = JobRecord(id=new_job_id(), name=name, spec=spec, created=time.time())
        with self._tx() as c:
            while c.execute("SELECT 1 FROM jobs WHERE id = ?", (rec.id,)).fetchone():
                rec.id = new_job_id()
            c.execute("INSERT INTO jobs (id, name, spec, state, created) VALUES (?, ?, ?, ?, ?)",
                      (rec.id, name, json.dumps(spec), rec.state, rec.created))
            return self._get(c, rec.id)

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            return self._get(self._conn, job_id)

    def list(self, states: Iterable[str] | None = None, page_size: int = DEFAULT_PAGE_SIZE,
             page_token: str = "") -> tuple[list[JobRecord], str]:
        wanted, size, after = page_args(states, page_size, page_token)
        where, args = "seq > ?", [after]
        if wanted:
            where += f" AND state IN ({', '.join('?' * len(wanted))})"
            args += wanted
        rows = self._read(f"SELECT seq, {', '.join(_COLUMNS)} FROM jobs WHERE {where} ORDER BY seq LIMIT ?",
                          (*args, size + 1))
        token = str(rows[size - 1][0]) if len(rows) > size else ""
        return [self._to_record(r[1:]) for r in rows[:size]], token

    def update(self, job_id: str, **fields: Any) -> JobRecord:
        check_updates(fields)
        with self._tx() as c:
            self._get(c, job_id)
            if fields:
                self._set(c, job_id, fields)
            return self._get(c, job_id)

    def transition(self, job_id: str, new_state: str, error: str | None = None) -> JobRecord:
        with self._tx() as c:
            rec = self._get(c, job_id)
            self._set(c, job_id, transition_changes(rec, new_state, error, time.time()))
            return self._get(c, job_id)

    def append_metrics(self, job_id: str, items: list[tuple[int, dict[str, Any]]]) -> None:
        if not items:
            return
        rows = [(job_id, int(step), json.dumps(metrics)) for step, metrics in items]
        last_step, last = items[-1]
        with self._tx() as c:
            rec = self._get(c, job_id)
            c.executemany("INSERT OR REPLACE INTO metrics (job_id, step, data) VALUES (?, ?, ?)", rows)
            c.execute("UPDATE jobs SET step = ?, last_metrics = ?, epoch = ? WHERE id = ?",
                      (int(last_step), rows[-1][2], int(last.get("epoch", rec.epoch)), job_id))

    def metrics(self, job_id: str, from_step: int = 0) -> list[tuple[int, dict[str, Any]]]:
        with self._lock:
            self._get(self._conn, job_id)
            rows = self._read("SELECT step, data FROM metrics WHERE job_id = ? AND step >= ? ORDER BY step",
                              (job_id, int(from_step)))
        return [(step, json.loads(data)) for step, data in rows]

    def unfinished(self) -> list[JobRecord]:
        rows = self._read(f"{_SELECT} WHERE state IN ('QUEUED', 'RUNNING') ORDER BY seq")
        return [self._to_record(r) for r in rows]

    def add_dataset(self, info: dict[str, Any]) -> dict[str, Any]:
        dataset_id = info.get("id")
        if not isinstance(dataset_id, str) or not dataset_id:
            raise ValueError(f"dataset info needs a non-empty string 'id', got {dataset_id!r}")
        text = json.dumps({**info, "created": info.get("created") or time.time()})
        with self._tx() as c:
            c.execute("INSERT OR IGNORE INTO datasets (id, info) VALUES (?, ?)", (dataset_id, text))
            return json.loads(c.execute("SELECT info FROM datasets WHERE id = ?", (dataset_id,)).fetchone()[0])

    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        rows = self._read("SELECT info FROM datasets WHERE id = ?", (dataset_id,))
        if not rows:
            raise DatasetNotFound(dataset_id)
        return json.loads(rows[0][0])

    def list_datasets(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self._read("SELECT info FROM datasets ORDER BY seq")]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
