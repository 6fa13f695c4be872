"""Warm workers: a finished job's actors serve the next job, which still gets exactly the
in-process loop's weights; idle actors are replaced when dead and killed when in the way."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from dptrain.core.config import TrainConfig
from dptrain.core.trainer import Trainer
from dptrain.execution.warm import WARM

JOB = {
    "model": {"input": 64, "layers": ["linear 32", "tanh", "linear 10"], "loss": "cross_entropy"},
    "dataset": {"name": "digits", "val_fraction": 0.2},
    "optimizer": {"name": "adam", "lr": 0.003},
    "batch_size": 100, "chunk_size": 16, "epochs": 1, "workers": 2, "cpus_per_worker": 0.25,
}
OTHER = {**JOB, "model": {"input": 64, "layers": ["linear 16", "relu", "linear 10"], "loss": "cross_entropy"},
         "optimizer": {"name": "momentum", "lr": 0.05}, "seed": 7}


def train(job: dict, backend: str = "ray") -> tuple[np.ndarray, list[int]]:
    t = Trainer(TrainConfig.from_dict(job), backend=backend)
    try:
        for _ in t.run():
            pass
        return t.theta.copy(), [w["pid"] for w in t.backend.nodes()] if backend == "ray" else []
    finally:
        t.close()


@pytest.fixture
def cold(ray_session):
    WARM.drain()
    yield
    WARM.drain()


def test_the_next_job_reuses_the_workers_and_gets_the_same_bits(cold):
    first, pids = train(OTHER)
    assert len(WARM) == 2
    theta, again = train(JOB)
    assert sorted(again) == sorted(pids)  # the same processes, now on another job
    assert theta.tobytes() == train(JOB, backend="local")[0].tobytes()
    assert first.tobytes() == train(OTHER, backend="local")[0].tobytes()


def test_a_worker_that_died_while_idle_is_replaced(cold):
    _, pids = train(JOB)
    os.kill(pids[0], signal.SIGKILL)
    time.sleep(0.5)
    theta, again = train(JOB)
    assert pids[0] not in again and len(again) == 2
    assert theta.tobytes() == train(JOB, backend="local")[0].tobytes()


def test_workers_ray_knows_are_dead_are_replaced(cold):
    """Ray refuses calls to an actor it knows is gone (at submission, not at ray.get)."""
    _, pids = train(JOB)
    import ray

    for idle in WARM._idle:
        ray.kill(idle.actor)
    time.sleep(0.5)
    theta, again = train(JOB)
    assert not set(pids) & set(again) and len(again) == 2
    assert theta.tobytes() == train(JOB, backend="local")[0].tobytes()


def test_a_worker_lost_after_the_last_step_does_not_break_the_next_job(cold):
    import ray

    t = Trainer(TrainConfig.from_dict(JOB), backend="ray")
    for _ in t.run():
        pass
    dead = t.backend.pool.slots[0].info["pid"]
    ray.kill(t.backend.pool.slots[0].actor)
    time.sleep(0.5)
    t.close()  # the job's workers go back warm: one of them is dead
    theta, pids = train(JOB)
    assert dead not in pids and len(pids) == 2
    assert theta.tobytes() == train(JOB, backend="local")[0].tobytes()


def test_idle_workers_of_another_size_make_room(cold):
    train(JOB)  # leaves 2 idle actors of 0.25 CPU
    theta, pids = train({**JOB, "cpus_per_worker": 1.0})  # needs both CPUs of the session
    assert len(pids) == 2 and len(WARM) == 2  # the small ones were killed; these stay warm
    assert theta.tobytes() == train(JOB, backend="local")[0].tobytes()


def test_warm_workers_can_be_turned_off(cold, monkeypatch):
    monkeypatch.setenv("DPTRAIN_WARM_S", "0")
    _, pids = train(JOB)
    assert len(WARM) == 0
    _, again = train(JOB)
    assert not set(pids) & set(again)


def test_idle_workers_expire(cold, monkeypatch):
    monkeypatch.setenv("DPTRAIN_WARM_S", "1")
    train(JOB)
    deadline = time.monotonic() + 15
    while len(WARM) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(WARM) == 0
