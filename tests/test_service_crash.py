"""Nothing accepted is lost: kill -9 the server mid-job, start it again, and the job
resumes from its checkpoint by itself and ends with the uninterrupted run's weights."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from dptrain.client import Client
from dptrain.rpc import convert

from .test_service_e2e import assert_same_bits, library_weights

JOB = {
    "model": {"input": 64, "layers": ["linear 32", "tanh", "linear 10"], "loss": "cross_entropy"},
    "dataset": {"name": "digits", "val_fraction": 0.2},
    "optimizer": {"name": "adam", "lr": 0.003},
    "batch_size": 50, "chunk_size": 16, "epochs": 12, "workers": 2, "cpus_per_worker": 0.5,
    "checkpoint_every": 7,  # 29 steps an epoch: checkpoints fall mid-epoch too
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(state_dir, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dptrain.cli", "serve", "--port", str(port),
           "--state-dir", str(state_dir), "--ray-num-cpus", "2"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with Client(f"127.0.0.1:{port}") as c:
        deadline = time.monotonic() + 90
        while not c.healthy(timeout=1):
            assert proc.poll() is None, "server exited"
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
    return proc


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.mark.timeout(600)
def test_kill_9_mid_job_then_resume_bitwise(tmp_path):
    port = free_port()
    server = start_server(tmp_path, port)
    try:
        with Client(f"127.0.0.1:{port}") as c:
            job = c.submit(JOB, name="crash")
            for event in c.watch(job.id):
                if event.WhichOneof("event") == "metrics" and event.metrics.step >= 100:
                    break
            before = c.get(job.id)
        os.kill(server.pid, signal.SIGKILL)  # the server process itself, mid-job
        server.wait(timeout=30)
    finally:
        kill_group(server)  # and whatever it had started (its embedded Ray)
    assert convert.state_from_pb(before.state) == "RUNNING" and before.checkpoint_step >= 98

    server = start_server(tmp_path, port)
    try:
        with Client(f"127.0.0.1:{port}") as c:
            final = c.wait(job.id)
            assert convert.state_from_pb(final.state) == "SUCCEEDED", final.error
            assert final.step == final.total_steps == 12 * 29
            _, _, weights = c.weights(job.id)
            steps = [e.metrics.step for e in c.watch(job.id) if e.WhichOneof("event") == "metrics"]
    finally:
        kill_group(server)
    assert steps == list(range(1, 12 * 29 + 1))  # the history has no gap across the crash
    assert_same_bits(weights, library_weights(JOB))
