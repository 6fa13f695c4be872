"""`dptrain logs`: a job's own events, in order, over the API and the CLI, with the cause
of a failure; --follow prints lines as they come until the job ends."""
from __future__ import annotations

import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
from dptrain.client import Client
from dptrain.server import ServerConfig, serve

JOB = {"model": {"input": 64, "layers": ["linear 32", "relu", "linear 10"], "loss": "cross_entropy"},
       "dataset": {"name": "digits", "val_fraction": 0.2}, "optimizer": {"name": "adam", "lr": 0.003},
       "batch_size": 64, "chunk_size": 16, "workers": 2, "cpus_per_worker": 0.5}


@pytest.fixture(scope="module")
def one_at_a_time(ray_session, tmp_path_factory):
    srv = serve(ServerConfig(port=0, state_dir=tmp_path_factory.mktemp("log"), max_running_jobs=1))
    yield srv
    srv.stop()


def kinds(c: Client, job_id: str) -> list[str]:
    return [line.kind for line in c.log(job_id)]


def test_a_jobs_log_tells_its_story(one_at_a_time):
    with Client(one_at_a_time.address) as c:
        job = c.submit({**JOB, "steps": 30, "val_every": 10, "checkpoint_every": 20}, name="story")
        for _ in c.watch(job.id):
            pass
        lines = list(c.log(job.id))
        assert [line.kind for line in lines] == ["submitted", "started", "workers", "validation", "validation",
                                                 "checkpoint", "validation", "checkpoint", "succeeded"]
        assert "accepted as 'story': 2 workers, digits data" in lines[0].message
        assert lines[2].message.startswith("2 workers: #0 pid ")
        assert lines[3].message.startswith("step 10: validation loss ")
        assert lines[7].message == "checkpoint at step 30 (final)"
        assert [line.kind for line in c.log(job.id, after=lines[6].seq)] == ["checkpoint", "succeeded"]
        with pytest.raises(grpc.RpcError) as e:
            list(c.log("0000000000000000000f"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_failure_is_logged_with_its_cause_and_follow_ends_with_the_job(one_at_a_time, tmp_path):
    """The second job's uploaded file is lost while it waits (a failing disk): it fails when it
    starts, and its log says why. `dptrain logs --follow`, started while it waits, ends with it."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", X=rng.random((60, 4)), y=rng.integers(0, 2, 60))
    with Client(one_at_a_time.address) as c:
        first = c.submit({**JOB, "steps": 100_000}, name="long")
        info = c.upload_dataset(tmp_path / "d.npz")
        job = c.submit({**JOB, "model": {**JOB["model"], "input": 4}, "steps": 5,
                        "dataset": {"name": "npz", "params": {"path": info.id}}}, name="doomed")
        follow = subprocess.Popen([sys.executable, "-m", "dptrain.cli", "logs", job.id, "--follow",
                                   "--address", one_at_a_time.address], stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        one_at_a_time.manager.datasets.path_of(one_at_a_time.manager.store.get_dataset(info.id)).unlink()
        c.cancel(first.id)
        out, _ = follow.communicate(timeout=60)
        assert follow.returncode == 0
        assert kinds(c, first.id)[-2:] == ["checkpoint", "cancelled"] and "cancel" in kinds(c, first.id)
        assert kinds(c, job.id) == ["submitted", "started", "failed"]
        failed = list(c.log(job.id))[-1].message
        assert failed.startswith("failed: ") and "not found" in failed and info.id[:12] in failed
    printed = out.strip().splitlines()
    assert [line.split()[2] for line in printed] == ["submitted", "started", "failed"]
