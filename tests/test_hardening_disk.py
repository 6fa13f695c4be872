"""A full disk under a live server: the job ends in a truthful state, health says
NOT_SERVING, SubmitJob says which store cannot write, and once space returns the same
server carries on (no restart) and the job resumes to the uninterrupted run's bits.

The state directory is a real, tiny tmpfs mounted for the test (needs root)."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import grpc
import pytest
from dptrain.client import Client
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .test_service_e2e import JOB, assert_same_bits, library_weights, state

SPEC = {**JOB, "epochs": 60, "checkpoint_every": 5}  # long enough to be running when the disk fills


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path) -> Path:
    """Write zeros until the disk is full. Unbuffered: a buffered file would keep the bytes the
    last write could not place and fail again in close(), out of this function."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def _health(c: Client) -> int:
    return health_pb2_grpc.HealthStub(c.channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def _until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.timeout(300)
def test_disk_full_mid_job_then_space_returns(ray_session, tiny_disk):
    from dptrain.server import ServerConfig, serve

    server = serve(ServerConfig(port=0, state_dir=tiny_disk))
    try:
        with Client(server.address) as c:
            job = c.submit(SPEC)
            for event in c.watch(job.id):
                if event.WhichOneof("event") == "metrics" and event.metrics.step >= 12:
                    break
            filler = _fill(tiny_disk)

            # The job cannot checkpoint: it ends FAILED, saying which store, and the health
            # check and new submissions say the storage is the problem.
            failed = _until(lambda: (j := c.get(job.id)) and state(j) == "FAILED" and j, 60, "job not FAILED")
            assert "checkpoint store" in failed.error or "job store" in failed.error, failed.error
            _until(lambda: _health(c) == health_pb2.HealthCheckResponse.NOT_SERVING, 10, "health still SERVING")
            with pytest.raises(grpc.RpcError) as e:
                c.submit({**JOB, "epochs": 1}, attempts=1)
            assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert "store" in e.value.details()
            assert server.manager.scheduler.is_alive()

            filler.unlink()  # space returns: the same server carries on
            _until(lambda: _health(c) == health_pb2.HealthCheckResponse.SERVING, 10, "health not SERVING again")
            assert state(c.get(job.id)) == "FAILED"
            c.resume(job.id)
            final = c.wait(job.id)
            assert state(final) == "SUCCEEDED", final.error
            _, _, weights = c.weights(job.id)
            other = c.wait(c.submit({**JOB, "epochs": 1}).id)
            assert state(other) == "SUCCEEDED"
    finally:
        server.stop()
    assert_same_bits(weights, library_weights(SPEC))
