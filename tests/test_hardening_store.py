"""Issue 10, the store's side: verified checkpoints (item 7), storage failures (item 6) and
the schema migration behind idempotent submits (item 9).

Real files throughout: checkpoints are damaged on disk, the disk is really filled (a tiny
tmpfs, mounted when the test runs as root; skipped with the reason otherwise).
"""
from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from dptrain.store import (
    CheckpointCorrupt,
    CheckpointStore,
    SqliteJobStore,
    StoreError,
    StoreUnavailable,
)
from dptrain.store import sqlite as sqlite_store

from tests.test_store import SPEC, _same, _state

# --------------------------------------------------------------------------- checkpoints (item 7)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_last_byte(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _zero_length(path: Path) -> None:
    path.write_bytes(b"")


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _npy_not_npz(path: Path) -> None:
    with open(path, "wb") as f:
        np.save(f, np.arange(10.0))


def _tampered_with_valid_crc(path: Path) -> None:
    """Other weights in a well-formed zip: only the checksum can tell."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["theta"] = arrays["theta"] + np.float32(1.0)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


DAMAGE = [_truncate, _drop_last_byte, _flip_middle_byte, _zero_length, _garbage, _npy_not_npz,
          _tampered_with_valid_crc]


def _path(root: Path, step: int) -> Path:
    return root / "j" / f"step-{step:09d}.npz"


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__.strip("_"))
def test_corrupt_newest_checkpoint_falls_back_to_newest_intact(tmp_path, caplog, damage):
    cs = CheckpointStore(tmp_path)
    states = {step: _state(step) for step in (1, 2, 3)}
    for state in states.values():
        cs.save("j", state)
    damage(_path(tmp_path, 3))
    with caplog.at_level(logging.WARNING, logger="dptrain.store.checkpoints"):
        got = cs.latest("j")
    assert _same(got, states[2])
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert str(_path(tmp_path, 3)) in warning and "step 3" in warning and "at step 2" in warning
    with pytest.raises(CheckpointCorrupt) as err:
        cs.load("j", 3)
    assert isinstance(err.value, StoreError) and isinstance(err.value, ValueError)
    assert str(_path(tmp_path, 3)) in str(err.value) and "step 3" in str(err.value)
    assert err.value.problems[0][:2] == (_path(tmp_path, 3), 3)
    assert _same(cs.load("j", 2), states[2])


def test_no_intact_checkpoint_names_every_file_and_step(tmp_path):
    cs = CheckpointStore(tmp_path)
    for step, damage in zip((1, 2, 3), (_zero_length, _truncate, _flip_middle_byte)):
        cs.save("j", _state(step))
        damage(_path(tmp_path, step))
    with pytest.raises(CheckpointCorrupt) as err:
        cs.latest("j")
    message = str(err.value)
    assert "no usable checkpoint" in message and "all 3 are corrupt" in message
    for step in (1, 2, 3):
        assert f"{_path(tmp_path, step)} (step {step})" in message
    assert [p[1] for p in err.value.problems] == [3, 2, 1]
    assert "empty file" in message and "not a zip archive" in message and "CRC" in message


def test_every_flipped_byte_is_caught_or_harmless(tmp_path):
    """Flip each byte of a small checkpoint in turn: loading either raises CheckpointCorrupt
    or returns the bitwise-identical state (a byte zip ignores, e.g. a timestamp). Never other weights."""
    cs = CheckpointStore(tmp_path)
    state = _state(4, n=8)
    path = cs.save("j", state)
    original = path.read_bytes()
    caught = 0
    for i in range(len(original)):
        data = bytearray(original)
        data[i] ^= 0x10
        path.write_bytes(bytes(data))
        try:
            got = cs.load("j", 4)
        except CheckpointCorrupt:
            caught += 1
            continue
        assert _same(got, state), f"byte {i} of {len(original)} changed the state unnoticed"
    assert caught > len(original) // 2


def test_format_1_checkpoints_without_checksum_still_load(tmp_path):
    """Files written before checksums: exactly the old layout (format 1, no sha256)."""
    cs = CheckpointStore(tmp_path)
    states = {step: _state(step) for step in (1, 2)}
    for step, s in states.items():
        _path(tmp_path, step).parent.mkdir(exist_ok=True)
        arrays = {"format": np.array(1, np.int64), "theta": s.theta,
                  **{c: np.array(getattr(s, c), np.int64) for c in ("step", "epoch", "position", "version")},
                  **{f"opt/{k}": v for k, v in s.optimizer.items()}}
        np.savez(_path(tmp_path, step), **arrays)
    assert _same(cs.load("j", 1), states[1]) and _same(cs.latest("j"), states[2])
    _flip_middle_byte(_path(tmp_path, 2))  # the zip CRC still guards a format-1 file
    with pytest.raises(CheckpointCorrupt, match="CRC"):
        cs.load("j", 2)
    assert _same(cs.latest("j"), states[1])
    cs.save("j", _state(3))  # new ones get the checksum; old ones stay loadable
    with zipfile.ZipFile(_path(tmp_path, 3)) as z:
        assert "sha256.npy" in z.namelist()


def test_structural_checks(tmp_path):
    cs = CheckpointStore(tmp_path)
    cs.save("j", _state(5, 10))
    os.rename(_path(tmp_path, 5), _path(tmp_path, 6))  # a file under another step's name
    with pytest.raises(CheckpointCorrupt, match="holds step 5, not the 6"):
        cs.load("j", 6)
    with open(_path(tmp_path, 7), "wb") as f:  # a format-2 file that lost its checksum
        np.savez(f, format=np.array(2), theta=np.zeros(3), step=np.array(7), epoch=np.array(0),
                 position=np.array(0), version=np.array(0))
    with pytest.raises(CheckpointCorrupt, match="without its 'sha256'"):
        cs.load("j", 7)


def test_retention_never_prunes_the_only_intact_checkpoint(tmp_path):
    cs = CheckpointStore(tmp_path, keep=2)
    states = {step: _state(step, 50) for step in range(1, 6)}
    for step in (1, 2, 3):
        cs.save("j", states[step])
    assert cs.steps("j") == [2, 3]
    _truncate(_path(tmp_path, 3))
    cs.save("j", states[4])  # keep = 2 intact ones: 4 and 2, not 4 and the corrupt 3
    assert cs.steps("j") == [2, 3, 4]
    _garbage(_path(tmp_path, 4))
    assert _same(cs.latest("j"), states[2])
    cs.save("j", states[5])
    cs.save("j", _state(6, 50))  # 6 and 5 are intact: the corrupt and the older go
    assert cs.steps("j") == [5, 6]


def test_retention_keeps_marked_and_skips_corrupt_in_the_count(tmp_path):
    cs = CheckpointStore(tmp_path, keep=1)
    cs.save("j", _state(1, 10), mark=True)
    cs.save("j", _state(2, 10))
    _zero_length(_path(tmp_path, 2))
    cs.save("j", _state(3, 10))
    assert cs.steps("j") == [1, 3] and cs.marked("j") == [1]


# --------------------------------------------------------------------------- schema migration (item 9)

V1_DDL = """
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
"""The schema dptrain wrote before request ids (schema_version 1), verbatim."""


def _v1_store(path: Path) -> None:
    """A store file as the v1 code left it: one failed job with metrics, one dataset."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(V1_DDL)
    conn.execute("INSERT INTO schema_version (version) VALUES (1)")
    conn.execute("INSERT INTO jobs (id, name, spec, state, created, started, finished, step, error, checkpoint_step, "
                 "last_metrics) VALUES ('0190000000000abcdef0', 'old', ?, 'FAILED', 1.0, 2.0, 3.0, 4, 'OSError: x', 3, "
                 "'{\"loss\": 0.5}')", (sqlite_store.json.dumps(SPEC),))
    conn.execute("INSERT INTO metrics VALUES ('0190000000000abcdef0', 4, '{\"loss\": 0.5}')")
    conn.execute("INSERT INTO datasets (id, info) VALUES ('d1', '{\"id\": \"d1\", \"format\": \"npz\"}')")
    conn.commit()
    conn.close()


def test_v1_migration_base_is_frozen():
    assert sqlite_store._SCHEMA_V1 == V1_DDL  # stores in the field were made from this text


def test_v1_store_opens_migrates_and_works(tmp_path):
    path = tmp_path / "jobs.sqlite"
    _v1_store(path)
    with SqliteJobStore(path) as s:
        old = s.get("0190000000000abcdef0")
        assert (old.name, old.state, old.step, old.error, old.request_id) == ("old", "FAILED", 4, "OSError: x", None)
        assert s.metrics(old.id) == [(4, {"loss": 0.5})] and s.get_dataset("d1")["format"] == "npz"
        assert s.resolve_id("0190000000000abc") == old.id
        assert s.transition(old.id, "QUEUED").error is None  # resumable
        new = s.create("new", SPEC, request_id="r1")
        assert s.create("new", SPEC, request_id="r1") == new
        assert s._conn.execute("SELECT version FROM schema_version").fetchall() == [(4,)]
        assert old.stats == {} and s.update(old.id, stats={"failures": 2}).stats == {"failures": 2}  # v3
        s.check_writable()
    with SqliteJobStore(path) as s:  # reopening a migrated store migrates nothing
        assert [r.id for r in s.list()[0]] == [old.id, new.id]
        assert s._conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        with pytest.raises(sqlite3.IntegrityError):  # the unique index the migration made
            s._conn.execute("UPDATE jobs SET request_id = 'r1' WHERE id = ?", (old.id,))


def test_store_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "jobs.sqlite"
    SqliteJobStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = ?", (sqlite_store.SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=f"schema version {sqlite_store.SCHEMA_VERSION + 1} .* newer"):
        SqliteJobStore(path)


def test_request_id_is_atomic_across_connections(tmp_path):
    """Two store objects (as two server processes would) on one file: one job per key."""
    path = tmp_path / "jobs.sqlite"
    stores = [SqliteJobStore(path) for _ in range(4)]
    ids, barrier = [], threading.Barrier(len(stores))

    def go(s):
        barrier.wait()
        ids.append(s.create("a", SPEC, request_id="k").id)

    threads = [threading.Thread(target=go, args=(s,)) for s in stores]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(ids) == 4 and len(set(ids)) == 1 and len(stores[0].list()[0]) == 1
    for s in stores:
        s.close()


# --------------------------------------------------------------------------- storage failures (item 6)


@pytest.fixture
def tiny_fs(tmp_path):
    """A 256 KiB tmpfs: a disk that really fills up."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill a disk needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(directory: Path) -> Path:
    """Write a file until the disk is full; returns it (remove it to free the space)."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == 28, e  # ENOSPC
    return filler


def test_sqlite_disk_full_is_unavailable_and_recovers_without_reopening(tiny_fs):
    path = tiny_fs / "jobs.sqlite"
    s = SqliteJobStore(path)
    rec = s.create("before", SPEC)
    s.append_metrics(rec.id, [(1, {"loss": 1.0})])
    assert s.writable()
    filler = _fill(tiny_fs)
    big = {**SPEC, "notes": "x" * 65536}  # more than any slack left in the WAL's last page
    for write in (lambda: s.create("during", big), lambda: s.append_metrics(rec.id, [(2, {"blob": "y" * 65536})]),
                  lambda: s.transition(rec.id, "RUNNING")):
        with pytest.raises(StoreUnavailable) as err:
            write()
        assert str(err.value).startswith(f"job store {path}: cannot write: ")
        assert err.value.store == f"job store {path}" and err.value.action == "write"
    assert not s.writable()
    with pytest.raises(StoreUnavailable, match=f"^job store {path}: cannot write: .*(full|No space)"):
        s.check_writable()
    assert s.get(rec.id).state == "QUEUED" and len(s.list()[0]) == 1  # reads work, nothing half-written
    assert s.metrics(rec.id) == [(1, {"loss": 1.0})]
    filler.unlink()  # space returns: the same store object carries on
    assert s.writable()
    after = s.create("after", big)
    s.append_metrics(rec.id, [(2, {"loss": 0.5})])
    assert s.transition(rec.id, "RUNNING").state == "RUNNING"
    assert [r.name for r in s.list()[0]] == ["before", "after"] and s.get(after.id).spec == big
    s.close()
    with SqliteJobStore(path) as s:
        assert s._conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert s.metrics(rec.id) == [(1, {"loss": 1.0}), (2, {"loss": 0.5})]


def test_checkpoint_disk_full_is_unavailable_and_recovers(tiny_fs):
    root = tiny_fs / "checkpoints"
    cs = CheckpointStore(root)
    cs.save("j", _state(1, 100))
    assert cs.writable()
    filler = _fill(tiny_fs)
    with pytest.raises(StoreUnavailable) as err:
        cs.save("j", _state(2, 5000))
    assert str(err.value).startswith(f"checkpoint store {root}: cannot write step-000000002.npz of job j: ")
    assert "No space left on device" in str(err.value)
    assert sorted(p.name for p in (root / "j").iterdir()) == ["step-000000001.npz"]  # nothing partial
    assert _same(cs.latest("j"), _state(1, 100))
    assert not cs.writable()
    with pytest.raises(StoreUnavailable, match=f"^checkpoint store {root}: cannot write: .*No space"):
        cs.check_writable()
    filler.unlink()
    assert cs.writable()
    cs.save("j", _state(2, 5000))
    assert _same(cs.latest("j"), _state(2, 5000))


def test_checkpoint_read_only_disk_is_unavailable(tiny_fs):
    root = tiny_fs / "checkpoints"
    cs = CheckpointStore(root)
    cs.save("j", _state(1, 10))
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    try:
        with pytest.raises(StoreUnavailable, match="cannot write step-000000002.npz of job j: .*Read-only"):
            cs.save("j", _state(2, 10))
        assert not cs.writable() and _same(cs.latest("j"), _state(1, 10))
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tiny_fs)], check=True)
    assert cs.writable()
    cs.save("j", _state(2, 10))


def test_other_errors_keep_their_types(tmp_path):
    path = tmp_path / "jobs.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError) as err:
        SqliteJobStore(path)
    assert not isinstance(err.value, StoreUnavailable)
    cs = CheckpointStore(tmp_path / "c")
    with pytest.raises(ValueError):
        cs.save("../x", _state(1, 10))


def test_probes_are_cheap(tmp_path):
    with SqliteJobStore(tmp_path / "jobs.sqlite") as s:
        cs = CheckpointStore(tmp_path / "checkpoints")
        t0 = time.perf_counter()
        for _ in range(20):
            s.check_writable()
            cs.check_writable()
        assert time.perf_counter() - t0 < 5.0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "jobs.sqlite", "jobs.sqlite-shm",
                                                               "jobs.sqlite-wal"]  # no probe files left behind
        assert list((tmp_path / "checkpoints").iterdir()) == []
