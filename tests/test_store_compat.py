"""A server state directory written before the `dptrain` restructure (commit 615d8bf) is read
by today's code: its jobs, states, steps, checkpoints and uploaded dataset, and its cancelled
job resumes to bitwise the weights the old code reached (tests/data/README.md). The store was
written in /tmp/oldstore, and its jobs' specs name their upload there: the copy read here is
elsewhere, so the resumed job finds its upload by id (`DatasetRegistry.relocate`)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from dptrain.client import Client
from dptrain.rpc import pb
from dptrain.server import ServerConfig, serve

DATA = Path(__file__).parent / "data"
OLD = json.loads((DATA / "store-615d8bf.json").read_text())


def digest(weights: dict[str, np.ndarray]) -> dict[str, str]:
    return {k: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for k, a in sorted(weights.items())}


@pytest.fixture
def old_server(ray_session, tmp_path):
    state = tmp_path / "state"
    shutil.copytree(DATA / "store-615d8bf", state)
    srv = serve(ServerConfig(port=0, state_dir=state, max_running_jobs=1))
    yield srv
    srv.stop()


def test_an_old_store_is_read_and_its_job_resumes_to_the_same_bits(old_server):
    with Client(old_server.address) as c:
        jobs = {j.id: j for j in c.list()}
        assert set(jobs) == set(OLD["jobs"])
        for job_id, want in OLD["jobs"].items():
            got = jobs[job_id]
            assert (got.state, got.step, got.total_steps, got.checkpoint_step) == (
                want["state"], want["step"], want["total_steps"], want["checkpoint_step"]), job_id
        assert jobs[OLD["finished"]].state == pb.JOB_STATE_SUCCEEDED
        assert jobs[OLD["cancelled"]].state == pb.JOB_STATE_CANCELLED
        assert digest(c.weights(OLD["finished"])[2]) == OLD["finished_weights"]
        assert OLD["dataset"] in [d.id for d in c.datasets()]

        c.resume(OLD["cancelled"])
        final = c.wait(OLD["cancelled"])
        assert (final.state, final.step) == (OLD["resumed_state"], OLD["resumed_step"]), final.error
        assert digest(c.weights(OLD["cancelled"])[2]) == OLD["resumed_weights"]
