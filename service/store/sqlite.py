"""The durable JobStore: one SQLite file, WAL mode, ``synchronous=FULL``.

An accepted job must survive ``kill -9`` of the server (and a power cut), so every
write is a committed transaction that is fsynced before the call returns. The gRPC
server is multi-threaded: one connection is shared behind a lock (SQLite serialises
writers anyway), and read-check-write sequences such as :meth:`transition` run in a
``BEGIN IMMEDIATE`` transaction so they are atomic even across processes.

Specs, metrics and dataset infos are JSON text columns.

Schema versions: every store file starts from :data:`_SCHEMA_V1` (the first schema, kept
verbatim) and is brought up to :data:`SCHEMA_VERSION` by the steps in :data:`_MIGRATIONS`,
in one transaction when it is opened; a new file takes the same path, so the migrations
run on every test. v2 added ``jobs.request_id`` (SubmitJob's idempotency key, unique when
set) and the ``probe`` row that :meth:`SqliteJobStore.check_writable` rewrites; v3
``jobs.stats`` (the job's execution statistics, kept after it ends); v4 the ``events``
table (each job's log).

Storage failures (SQLite's FULL, IOERR, READONLY, CANTOPEN) raise
:class:`~dptrain.store.base.StoreUnavailable` naming this file; the transaction is rolled
back and the same connection works again once the disk does.
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
    JobState,
    JobStore,
    StoreError,
    StoreUnavailable,
    check_prefix,
    check_request_id,
    check_updates,
    new_job_id,
    page_args,
    same_request,
    transition_changes,
    unique_match,
)
from .disk import probe_dir

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
_SCHEMA_V1 = """
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
_MIGRATIONS: dict[int, str] = {  # version -> the statements that take a store from it to the next
    1: """
ALTER TABLE jobs ADD COLUMN request_id TEXT;  -- the client's idempotency key
CREATE UNIQUE INDEX jobs_request_id ON jobs (request_id) WHERE request_id IS NOT NULL;
CREATE TABLE probe (id INTEGER PRIMARY KEY CHECK (id = 0), at REAL NOT NULL);
""",
    2: """
ALTER TABLE jobs ADD COLUMN stats TEXT NOT NULL DEFAULT '{}';  -- JSON: failures and the epoch ledger
""",
    3: """
CREATE TABLE events (                       -- each job's log: what happened to it, in order
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX events_job ON events (job_id, seq);
""",
}
_UNAVAILABLE = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY,
                          sqlite3.SQLITE_CANTOPEN})
"""Primary result codes that mean the disk failed, not the request."""
_COLUMNS = ("id", "name", "spec", "state", "created", "started", "finished", "step", "total_steps",
            "epoch", "error", "checkpoint_step", "last_metrics", "request_id", "stats")
_JSON = ("spec", "last_metrics", "stats")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM jobs"


def _statements(script: str) -> list[str]:
    """A DDL script split into statements (executescript would COMMIT). Comments hold no ';'."""
    return [stmt for stmt in script.split(";") if stmt.strip()]


def _storage_failure(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _UNAVAILABLE  # extended codes (IOERR_WRITE, ...) keep the primary in the low byte
    text = str(e).lower()
    return any(s in text for s in ("disk is full", "disk i/o error", "readonly database", "unable to open"))


class SqliteJobStore(JobStore):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.label = f"job store {self.path}"
        self._lock = threading.RLock()
        with self._errors("open"):
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    def _migrate(self) -> None:
        with self._tx() as c:
            exists = c.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'").fetchone()
            if not exists:
                for stmt in _statements(_SCHEMA_V1):
                    c.execute(stmt)
                c.execute("INSERT INTO schema_version (version) VALUES (1)")
            row = c.execute("SELECT version FROM schema_version").fetchone()
            found = row and row[0]
            if not isinstance(found, int) or not 1 <= found <= SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema version {found} is not one this server can read "
                                 f"(1 to {SCHEMA_VERSION}); was it written by a newer dptrain?")
            for version in range(found, SCHEMA_VERSION):
                for stmt in _statements(_MIGRATIONS[version]):
                    c.execute(stmt)
            c.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        if not exists:
            log.info("created %s (schema v%d)", self.label, SCHEMA_VERSION)
        elif found != SCHEMA_VERSION:
            log.info("migrated %s from schema v%d to v%d", self.label, found, SCHEMA_VERSION)

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Re-raise a storage failure as :class:`StoreUnavailable` naming this store; other errors unchanged."""
        try:
            yield
        except sqlite3.Error as e:
            if _storage_failure(e):
                raise StoreUnavailable(self.label, action, e) from e
            raise

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed (and fsynced) on exit, rolled back on error."""
        with self._lock, self._errors("write"):
            self._rollback()  # one a failed ROLLBACK left open would block every later BEGIN
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        """End an open transaction. SQLite may already have rolled it back itself (after
        FULL or IOERR); a ROLLBACK that fails must not hide the error that caused it."""
        if not self._conn.in_transaction:
            return
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error as e:
            log.warning("%s: rollback failed: %s", self.label, e)

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors("read"):
            yield self._conn

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._reading() as c:
            return c.execute(sql, args).fetchall()

    @staticmethod
    def _to_record(row: tuple) -> JobRecord:
        d = dict(zip(_COLUMNS, row))
        for key in _JSON:
            d[key] = json.loads(d[key])
        d["state"] = JobState(d["state"])
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
    def create(self, name: str, spec: dict[str, Any], request_id: str | None = None) -> JobRecord:
        request_id = check_request_id(request_id)
        rec = JobRecord(id=new_job_id(), name=name, spec=spec, created=time.time())
        text = json.dumps(spec)  # before the transaction: a spec that is not JSON fails here
        with self._tx() as c:
            if request_id is not None:
                row = c.execute(f"{_SELECT} WHERE request_id = ?", (request_id,)).fetchone()
                if row is not None:  # a retry: the job its first attempt created
                    return same_request(self._to_record(row), name, spec)
            while c.execute("SELECT 1 FROM jobs WHERE id = ?", (rec.id,)).fetchone():
                rec.id = new_job_id()
            c.execute("INSERT INTO jobs (id, name, spec, state, created, request_id) VALUES (?, ?, ?, ?, ?, ?)",
                      (rec.id, name, text, rec.state, rec.created, request_id))
            return self._get(c, rec.id)

    def get(self, job_id: str) -> JobRecord:
        with self._reading() as c:
            return self._get(c, job_id)

    def resolve_id(self, prefix: str) -> str:
        p = check_prefix(prefix)
        # ids are lowercase hex, so every id starting with p sorts in [p, p + "g"): an index range scan
        where, args = "id >= ? AND id < ?", (p, p + "g")
        with self._reading() as c:
            total = c.execute(f"SELECT count(*) FROM jobs WHERE {where}", args).fetchone()[0]
            matches = [r[0] for r in c.execute(f"SELECT id FROM jobs WHERE {where} ORDER BY id LIMIT 5", args)]
        return unique_match(prefix, matches, total)

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

    def metrics(self, job_id: str, from_step: int = 0, limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
        with self._reading() as c:
            self._get(c, job_id)
            rows = self._read("SELECT step, data FROM metrics WHERE job_id = ? AND step >= ? ORDER BY step LIMIT ?",
                              (job_id, int(from_step), -1 if limit is None else int(limit)))
        return [(step, json.loads(data)) for step, data in rows]

    def append_events(self, job_id: str, lines: list[tuple[float, str, str]]) -> None:
        if not lines:
            return
        with self._tx() as c:
            self._get(c, job_id)
            c.executemany("INSERT INTO events (job_id, time, kind, message) VALUES (?, ?, ?, ?)",
                          [(job_id, float(t), kind, message) for t, kind, message in lines])

    def events(self, job_id: str, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        with self._reading() as c:
            self._get(c, job_id)
            rows = self._read("SELECT seq, time, kind, message FROM events WHERE job_id = ? AND seq > ? ORDER BY seq "
                              "LIMIT ?", (job_id, int(after), -1 if limit is None else int(limit)))
        return [{"seq": seq, "time": t, "kind": kind, "message": message} for seq, t, kind, message in rows]

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

    def check_writable(self) -> None:
        """Rewrite the probe row in a committed transaction, then :func:`probe_dir` next to the file.

        Any SQLite error counts (a lock held elsewhere for 30 s is also "cannot write").
        """
        try:
            with self._tx() as c:
                c.execute("INSERT OR REPLACE INTO probe (id, at) VALUES (0, ?)", (time.time(),))
        except sqlite3.Error as e:
            raise StoreUnavailable(self.label, "write", e) from e
        probe_dir(os.path.dirname(os.path.abspath(self.path)), self.label)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
