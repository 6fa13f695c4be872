"""One suite for every JobStore (as Flower's linkstate tests), plus SQLite durability and checkpoints."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from dptrain.core.trainer import TrainState
from dptrain.store import (
    AmbiguousId,
    CheckpointNotFound,
    CheckpointStore,
    DatasetNotFound,
    IllegalTransition,
    InvalidPageToken,
    JobNotFound,
    MemoryJobStore,
    RequestIdConflict,
    SqliteJobStore,
)

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"model": {"input": 4, "nodes": [{"name": "l", "op": "linear", "inputs": ["x"], "units": 2}], "output": "l"},
        "dataset": {"name": "blobs", "params": {"n": 100, "label": None}}, "optimizer": {"name": "sgd", "lr": 0.1},
        "steps": 10, "epochs": None}


@pytest.fixture(params=["sqlite", "memory"])
def store(request, tmp_path):
    s = SqliteJobStore(tmp_path / "jobs.db") if request.param == "sqlite" else MemoryJobStore()
    yield s
    s.close()


# --------------------------------------------------------------------------- shared suite


def test_create_and_get(store):
    t0 = time.time()
    rec = store.create("first", SPEC)
    assert rec.state == "QUEUED" and rec.name == "first" and rec.spec == SPEC
    assert t0 - 1 <= rec.created <= time.time() + 1
    assert (rec.started, rec.finished, rec.error, rec.checkpoint_step) == (None, None, None, None)
    assert (rec.step, rec.total_steps, rec.epoch, rec.last_metrics) == (0, 0, 0, {})
    assert store.get(rec.id) == rec


def test_ids_are_unique_and_sortable(store):
    ids = [store.create(f"j{i}", SPEC).id for i in range(20)]
    assert len(set(ids)) == 20
    assert ids[0][:12] <= ids[-1][:12]  # by the millisecond; within one, the random bits decide


def test_get_unknown_raises_job_not_found(store):
    with pytest.raises(JobNotFound) as err:
        store.get("nope")
    assert isinstance(err.value, KeyError) and str(err.value) == "no job with id 'nope'"
    assert err.value.args[0] == str(err.value) and err.value.job_id == "nope"  # the servicer sends args[0]
    for call in (lambda: store.update("nope", step=1), lambda: store.transition("nope", "RUNNING"),
                 lambda: store.append_metrics("nope", [(1, {})]), lambda: store.metrics("nope")):
        with pytest.raises(JobNotFound):
            call()


def test_records_are_copies(store):
    rec = store.create("a", SPEC)
    rec.spec["steps"] = 999
    rec.last_metrics["x"] = 1
    assert store.get(rec.id).spec["steps"] == 10 and store.get(rec.id).last_metrics == {}


def test_update(store):
    rec = store.create("a", SPEC)
    new = store.update(rec.id, step=3, total_steps=10, epoch=1, checkpoint_step=2, error="warn",
                       last_metrics={"loss": 0.5}, name="renamed", spec={**SPEC, "workers": 4})
    assert (new.step, new.total_steps, new.epoch, new.checkpoint_step) == (3, 10, 1, 2)
    assert (new.error, new.last_metrics, new.name, new.spec["workers"]) == ("warn", {"loss": 0.5}, "renamed", 4)
    assert store.get(rec.id) == new
    assert store.update(rec.id) == new
    for bad in ({"state": "RUNNING"}, {"created": 0.0}, {"bogus": 1}):
        with pytest.raises(ValueError):
            store.update(rec.id, **bad)


def test_legal_transitions_set_timestamps(store):
    rec = store.create("a", SPEC)
    running = store.transition(rec.id, "RUNNING")
    assert running.state == "RUNNING" and running.started is not None and running.finished is None
    requeued = store.transition(rec.id, "QUEUED")  # server restart
    assert requeued.state == "QUEUED" and requeued.started == running.started
    store.transition(rec.id, "RUNNING")
    failed = store.transition(rec.id, "FAILED", error="worker lost")
    assert failed.state == "FAILED" and failed.error == "worker lost" and failed.finished >= failed.started
    assert store.get(rec.id) == failed
    for path in (["CANCELLED"], ["RUNNING", "SUCCEEDED"], ["RUNNING", "CANCELLED"]):
        job = store.create("b", SPEC)
        for state in path:
            job = store.transition(job.id, state)
        assert job.state == path[-1] and job.finished is not None


@pytest.mark.parametrize("path, bad", [
    ([], "SUCCEEDED"), ([], "FAILED"), ([], "QUEUED"), (["RUNNING"], "RUNNING"),
    (["RUNNING", "SUCCEEDED"], "RUNNING"), (["RUNNING", "SUCCEEDED"], "CANCELLED"),
    (["CANCELLED"], "RUNNING"), (["RUNNING", "FAILED"], "RUNNING"), (["RUNNING", "FAILED"], "SUCCEEDED"),
    (["RUNNING", "SUCCEEDED"], "QUEUED"), (["RUNNING", "CANCELLED"], "CANCELLED"),
])
def test_illegal_transitions(store, path, bad):
    rec = store.create("a", SPEC)
    for state in path:
        store.transition(rec.id, state)
    before = store.get(rec.id)
    with pytest.raises(IllegalTransition, match=f"to {bad}"):
        store.transition(rec.id, bad)
    assert store.get(rec.id) == before


def test_unknown_state_is_rejected(store):
    rec = store.create("a", SPEC)
    with pytest.raises(ValueError, match="unknown state"):
        store.transition(rec.id, "PAUSED")
    with pytest.raises(ValueError, match="unknown state"):
        store.list(states=["PAUSED"])


def test_concurrent_cancel_and_start_apply_exactly_one(store):
    for _ in range(10):
        rec = store.create("race", SPEC)
        results = []

        def go(state):
            try:
                store.transition(rec.id, state)
                results.append(state)
            except IllegalTransition:
                pass

        threads = [threading.Thread(target=go, args=(s,)) for s in ("CANCELLED", "RUNNING", "CANCELLED")]
        [t.start() for t in threads]
        [t.join() for t in threads]
        # Whatever the interleaving, the job ends CANCELLED exactly once, via a legal path.
        assert store.get(rec.id).state == "CANCELLED"
        assert results in (["CANCELLED"], ["RUNNING", "CANCELLED"])


def test_list_pages_in_creation_order(store):
    ids = [store.create(f"j{i}", SPEC).id for i in range(7)]
    seen, token, pages = [], "", 0
    while True:
        page, token = store.list(page_size=3, page_token=token)
        seen += [r.id for r in page]
        pages += 1
        if pages == 1:
            store.create("late", SPEC)  # jobs created meanwhile go to the end, never shift a page
        if not token:
            break
    assert seen[:7] == ids and pages == 3 and len(seen) == 8
    everything, token = store.list()
    assert [r.id for r in everything][:7] == ids and token == ""


def test_list_exact_multiple_has_no_empty_last_page(store):
    for i in range(4):
        store.create(f"j{i}", SPEC)
    page, token = store.list(page_size=2)
    page2, token2 = store.list(page_size=2, page_token=token)
    assert len(page) == len(page2) == 2 and token2 == ""


def test_list_filters_by_state(store):
    a, b, c, d = (store.create(n, SPEC) for n in "abcd")
    store.transition(b.id, "RUNNING")
    store.transition(c.id, "CANCELLED")
    store.transition(d.id, "RUNNING")
    running, token = store.list(states=["RUNNING"])
    assert [r.id for r in running] == [b.id, d.id] and token == ""
    page, token = store.list(states=["RUNNING", "QUEUED"], page_size=2)
    rest, token2 = store.list(states=["RUNNING", "QUEUED"], page_size=2, page_token=token)
    assert [r.id for r in page + rest] == [a.id, b.id, d.id] and token2 == ""
    assert store.list(states=["FAILED"]) == ([], "")


def test_list_page_size_defaults_and_bad_token(store):
    for i in range(3):
        store.create(f"j{i}", SPEC)
    assert len(store.list(page_size=0)[0]) == 3
    with pytest.raises(InvalidPageToken):
        store.list(page_token="not-a-token")


def test_metrics_history(store):
    rec = store.create("a", SPEC)
    assert store.metrics(rec.id) == []
    for step in (1, 2, 3, 4):
        store.append_metrics(rec.id, [(step, {"loss": 1.0 / step, "workers": [{"worker": 0}], "accuracy": None})])
    got = store.get(rec.id)
    assert got.step == 4 and got.last_metrics == {"loss": 0.25, "workers": [{"worker": 0}], "accuracy": None}
    assert [s for s, _ in store.metrics(rec.id)] == [1, 2, 3, 4]
    assert store.metrics(rec.id, from_step=3) == [(3, {"loss": 1 / 3, "workers": [{"worker": 0}], "accuracy": None}),
                                                   (4, {"loss": 0.25, "workers": [{"worker": 0}], "accuracy": None})]
    assert store.metrics(rec.id, from_step=9) == []
    store.append_metrics(rec.id, [(3, {"loss": 9.0})])  # replayed after resuming from a checkpoint
    assert store.metrics(rec.id, from_step=3)[0] == (3, {"loss": 9.0})
    other = store.create("b", SPEC)
    assert store.metrics(other.id) == []


def test_unfinished_in_creation_order(store):
    a, b, c, d, e = (store.create(n, SPEC) for n in "abcde")
    store.transition(a.id, "RUNNING")
    store.transition(b.id, "CANCELLED")
    store.transition(d.id, "RUNNING")
    store.transition(d.id, "SUCCEEDED")
    assert [r.id for r in store.unfinished()] == [a.id, c.id, e.id]


def test_datasets(store):
    assert store.list_datasets() == []
    info = {"id": "aa" * 32, "format": "csv", "n": 10, "n_features": 3, "task": "classification", "n_classes": 2,
            "size_bytes": 120, "filename": "x.csv"}
    first = store.add_dataset(info)
    assert first["created"] > 0 and {k: first[k] for k in info} == info
    again = store.add_dataset({**info, "filename": "renamed.csv"})  # same bytes: first entry wins
    assert again == first
    second = store.add_dataset({"id": "bb" * 32, "format": "npz", "created": 5.0})
    assert store.get_dataset("aa" * 32) == first and second["created"] == 5.0
    assert [d["id"] for d in store.list_datasets()] == ["aa" * 32, "bb" * 32]
    with pytest.raises(DatasetNotFound):
        store.get_dataset("cc")
    with pytest.raises(ValueError):
        store.add_dataset({"format": "npz"})


def test_resume_requeues_failed_and_cancelled_jobs(store):
    rec = store.create("a", SPEC)
    store.transition(rec.id, "RUNNING")
    store.update(rec.id, step=7, checkpoint_step=5)
    failed = store.transition(rec.id, "FAILED", error="OSError: disk full")
    resumed = store.transition(rec.id, "QUEUED")  # ResumeJob
    assert (resumed.state, resumed.error, resumed.finished) == ("QUEUED", None, None)
    assert (resumed.started, resumed.step, resumed.checkpoint_step) == (failed.started, 7, 5)
    assert [r.id for r in store.unfinished()] == [rec.id] and store.get(rec.id) == resumed
    assert store.transition(rec.id, "RUNNING").started == failed.started
    assert store.transition(rec.id, "SUCCEEDED").finished is not None
    cancelled = store.create("b", SPEC)
    store.transition(cancelled.id, "CANCELLED", error="by user")
    again = store.transition(cancelled.id, "QUEUED")
    assert (again.state, again.error, again.finished, again.started) == ("QUEUED", None, None, None)


def test_create_with_request_id_is_idempotent(store):
    first = store.create("a", SPEC, request_id="req-1")
    assert first.request_id == "req-1"
    assert store.create("a", SPEC, request_id="req-1") == first  # a retry gets the same job
    other = store.create("a", SPEC, request_id="req-2")
    plain = [store.create("a", SPEC, request_id=r) for r in (None, "", None)]  # "" is proto3's "unset"
    assert len({first.id, other.id, *(p.id for p in plain)}) == 5
    assert all(p.request_id is None for p in plain)
    assert len(store.list()[0]) == 5 and store.get(first.id).request_id == "req-1"
    store.transition(first.id, "CANCELLED")  # a key keeps its job whatever its state
    assert store.create("a", SPEC, request_id="req-1").state == "CANCELLED"


def test_request_id_compares_specs_as_stored(store):
    spec = {**SPEC, "shape": (2, 3), "alpha": float("nan")}  # tuples come back as lists from JSON
    first = store.create("a", spec, request_id="k")
    assert store.create("a", {**spec, "shape": [2, 3]}, request_id="k").id == first.id
    for name, other in (("b", spec), ("a", {**spec, "steps": 11})):
        with pytest.raises(RequestIdConflict, match=f"already used by job {first.id}"):
            store.create(name, other, request_id="k")
    assert len(store.list()[0]) == 1


def test_concurrent_creates_with_one_request_id_make_one_job(store):
    ids, barrier = [], threading.Barrier(8)

    def go():
        barrier.wait()
        ids.append(store.create("a", SPEC, request_id="same").id)

    threads = [threading.Thread(target=go) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(ids) == 8 and len(set(ids)) == 1 and len(store.list()[0]) == 1


def test_request_id_is_bounded(store):
    for bad in ("x" * 129, "a\nb", "\x00"):
        with pytest.raises(ValueError, match="request_id") as err:
            store.create("a", SPEC, request_id=bad)
        assert len(str(err.value)) < 200
    assert store.create("a", SPEC, request_id="x" * 128).request_id == "x" * 128
    assert len(store.list()[0]) == 1


def test_job_not_found_clips_the_id(store):
    with pytest.raises(JobNotFound) as err:
        store.get("x" * 100_000)
    assert str(err.value).startswith("no job with id 'xxxx") and len(str(err.value)) < 120
    with pytest.raises(DatasetNotFound, match="^no dataset with id 'yyy") as err:
        store.get_dataset("y" * 100_000)
    assert len(str(err.value)) < 120


def test_resolve_id_prefix(store):
    ids = [store.create(f"j{i}", SPEC).id for i in range(7)]
    for job_id in ids:
        assert store.resolve_id(job_id) == job_id and store.resolve_id(job_id.upper()) == job_id
    common = os.path.commonprefix(ids)
    assert len(common) >= 4, ids  # created within a second: the millisecond clock's high digits agree
    for job_id in ids:  # each by its shortest unique prefix
        unique = next(job_id[:n] for n in range(4, 21) if sum(i.startswith(job_id[:n]) for i in ids) == 1)
        assert store.resolve_id(unique) == job_id
    with pytest.raises(AmbiguousId, match=f"'{common}' matches 7 jobs") as err:
        store.resolve_id(common)
    assert len(err.value.matches) == 5 and set(err.value.matches) <= set(ids) and "..." in str(err.value)
    with pytest.raises(AmbiguousId, match="at least 4"):
        store.resolve_id(ids[0][:3])
    missing = "f" * 20 if not any(i.startswith("ffff") for i in ids) else "0" * 20
    for bad in (missing, missing[:4], ids[0] + "0", "zzzz", "../../etc", "a" * 10_000, "", ids[0] + "\n"):
        with pytest.raises(JobNotFound) as err:
            store.resolve_id(bad)
        assert len(str(err.value)) < 120


def test_store_is_writable(store):
    store.check_writable()
    assert store.writable()

# --------------------------------------------------------------------------- SQLite durability


def test_sqlite_persists_across_reopen(tmp_path):
    path = tmp_path / "jobs.db"
    with SqliteJobStore(path) as s:
        rec = s.create("a", SPEC)
        s.transition(rec.id, "RUNNING")
        s.append_metrics(rec.id, [(1, {"loss": 0.5})])
        s.add_dataset({"id": "d1", "format": "npz"})
        expected = s.get(rec.id)
    with SqliteJobStore(path) as s:
        assert s.get(rec.id) == expected
        assert s.metrics(rec.id) == [(1, {"loss": 0.5})]
        assert [r.id for r in s.unfinished()] == [rec.id]
        assert s.get_dataset("d1")["format"] == "npz"


def test_sqlite_pragmas_and_schema_version(tmp_path):
    with SqliteJobStore(tmp_path / "jobs.db") as s:
        assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert s._conn.execute("SELECT version FROM schema_version").fetchall() == [(4,)]


def test_sqlite_job_survives_kill_9(tmp_path):
    path = tmp_path / "jobs.db"
    child = textwrap.dedent(f"""
        import os, sys, time
        from dptrain.store.sqlite import SqliteJobStore
        s = SqliteJobStore({str(path)!r})
        rec = s.create("survivor", {{"steps": 3}})
        s.transition(rec.id, "RUNNING")
        s.append_metrics(rec.id, [(1, {{"loss": 2.0}})])
        print(rec.id, flush=True)
        time.sleep(60)  # killed here, connection never closed
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        job_id = proc.stdout.readline().strip()
        assert job_id, "child did not create a job"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    with SqliteJobStore(path) as s:
        rec = s.get(job_id)
        assert (rec.name, rec.state, rec.spec, rec.step) == ("survivor", "RUNNING", {"steps": 3}, 1)
        assert s.metrics(job_id) == [(1, {"loss": 2.0})]
        assert s.transition(job_id, "QUEUED").state == "QUEUED"  # requeued on restart


# --------------------------------------------------------------------------- checkpoints


def _state(step: int, n: int = 1000) -> TrainState:
    rng = np.random.default_rng(step)
    return TrainState(theta=rng.standard_normal(n).astype(np.float32),
                      optimizer={"step": np.array(step, np.int64), "exp_avg": rng.standard_normal(n).astype(np.float32),
                                 "exp_avg_sq": rng.random(n).astype(np.float32)},
                      step=step, epoch=step // 4, position=32 * (step % 4), version=step + 1)


def _bits(a: np.ndarray) -> tuple:
    return a.dtype.str, a.shape, a.tobytes()


def _same(a: TrainState, b: TrainState) -> bool:
    """Bitwise equality of two training states, dtypes and shapes included."""
    return (_bits(a.theta) == _bits(b.theta)
            and {k: _bits(v) for k, v in a.optimizer.items()} == {k: _bits(v) for k, v in b.optimizer.items()}
            and (a.step, a.epoch, a.position, a.version) == (b.step, b.epoch, b.position, b.version))


def test_checkpoint_round_trip_bitwise(tmp_path):
    cs = CheckpointStore(tmp_path)
    assert cs.latest("job1") is None and cs.steps("job1") == []
    for dtype in (np.float32, np.float64):
        state = _state(5)
        state.theta = state.theta.astype(dtype)
        path = cs.save("job1", state)
        assert path == tmp_path / "job1" / "step-000000005.npz"
        assert _same(cs.load("job1", 5), state) and _same(cs.latest("job1"), state)
    empty = TrainState(theta=np.zeros(3), step=0)
    cs.save("job2", empty)
    assert _same(cs.latest("job2"), empty)
    with pytest.raises(CheckpointNotFound):
        cs.load("job1", 6)


def test_checkpoint_keeps_last_k_plus_marked(tmp_path):
    cs = CheckpointStore(tmp_path, keep=3)
    for step in range(1, 8):
        cs.save("j", _state(step, 10), mark=(step == 2))
    assert cs.steps("j") == [2, 5, 6, 7] and cs.marked("j") == [2]
    cs.mark("j", 5)
    cs.save("j", _state(8, 10))
    cs.save("j", _state(9, 10))
    assert cs.steps("j") == [2, 5, 7, 8, 9]
    assert cs.latest("j").step == 9
    with pytest.raises(CheckpointNotFound):
        cs.mark("j", 3)
    cs.delete("j")
    assert cs.steps("j") == [] and cs.latest("j") is None


def test_checkpoint_ignores_leftover_temp_files(tmp_path):
    cs = CheckpointStore(tmp_path)
    cs.save("j", _state(1, 10))
    job_dir = tmp_path / "j"
    partial = job_dir / ".step-000000002.npz.abc123.tmp"  # a crash mid-write
    partial.write_bytes(b"PK\x03\x04 truncated")
    assert cs.steps("j") == [1] and cs.latest("j").step == 1
    cs.save("j", _state(3, 10))
    assert not partial.exists() and cs.steps("j") == [1, 3]
    assert sorted(p.name for p in job_dir.iterdir()) == ["step-000000001.npz", "step-000000003.npz"]


def test_checkpoint_save_failure_leaves_nothing(tmp_path, monkeypatch):
    cs = CheckpointStore(tmp_path)
    cs.save("j", _state(1, 10))
    bad = _state(2, 10)
    bad.optimizer["weird"] = np.array([object()])  # would need pickle to read back
    with pytest.raises(ValueError, match="weird"):
        cs.save("j", bad)

    def crash(f, **arrays):  # dies halfway through writing
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        cs.save("j", _state(2, 10))
    assert cs.steps("j") == [1] and cs.latest("j").step == 1
    assert sorted(p.name for p in (tmp_path / "j").iterdir()) == ["step-000000001.npz"]


def test_checkpoint_refuses_pickled_content(tmp_path):
    cs = CheckpointStore(tmp_path)
    cs.save("j", _state(1, 10))
    path = tmp_path / "j" / "step-000000001.npz"
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(path, "a") as z:
        z.write(obj, "opt/evil.npy")
    with pytest.raises(ValueError, match="allow_pickle"):
        cs.load("j", 1)


def test_checkpoint_rejects_path_like_job_ids(tmp_path):
    cs = CheckpointStore(tmp_path)
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(ValueError):
            cs.save(bad, _state(1, 10))


def test_job_log(store):
    rec, other = store.create("a", SPEC), store.create("b", SPEC)
    assert store.events(rec.id) == []
    store.append_events(rec.id, [(1.0, "submitted", "accepted")])
    store.append_events(other.id, [(2.0, "submitted", "accepted too")])
    store.append_events(rec.id, [(3.0, "failed", "failed: the disk is full")])
    store.append_events(rec.id, [])  # nothing to write
    lines = store.events(rec.id)
    assert [(e["kind"], e["message"]) for e in lines] == [("submitted", "accepted"),
                                                          ("failed", "failed: the disk is full")]
    assert lines[0]["seq"] < lines[1]["seq"] and (lines[0]["time"], lines[1]["time"]) == (1.0, 3.0)
    assert store.events(rec.id, after=lines[0]["seq"]) == lines[1:] and store.events(rec.id, limit=1) == lines[:1]
    with pytest.raises(JobNotFound):
        store.events("0000000000000000000f")
    with pytest.raises(JobNotFound):
        store.append_events("0000000000000000000f", [(1.0, "x", "y")])
