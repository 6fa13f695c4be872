"""N Ray workers give bitwise the weights of the in-process loop: any N, uneven shards,
failures, deadlines and resizes."""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
from dptrain.core.config import TrainConfig
from dptrain.core.trainer import Trainer
from dptrain.execution.waiting import WorkersLost

DIGITS_JOB = {
    "model": {"input": 64, "layers": ["linear 32", "tanh", "linear 10"], "loss": "cross_entropy"},
    "dataset": {"name": "digits", "val_fraction": 0.2},  # 1438 training examples
    "optimizer": {"name": "adam", "lr": 0.003},
    "batch_size": 100,  # 15 steps an epoch, the last one of 38 examples
    "chunk_size": 16,  # 7 chunks a batch (the last short): shards are uneven for most N
    "epochs": 2,
    "cpus_per_worker": 0.25,
}


def config(**over) -> TrainConfig:
    return TrainConfig.from_dict({**DIGITS_JOB, **over})


def local_weights(cfg: TrainConfig) -> np.ndarray:
    t = Trainer(cfg, backend="local")
    for _ in t.run():
        pass
    return t.theta.copy()


@pytest.fixture(scope="module")
def reference():
    return local_weights(config())


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("workers", [1, 2, 3, 4])
def test_n_workers_equal_the_in_process_loop_bitwise(ray_session, reference, workers):
    t = Trainer(config(workers=workers), backend="ray")
    try:
        metrics = list(t.run())
    finally:
        t.close()
    assert len(metrics) == 30 and metrics[14].batch == 38  # the uneven last batch was used
    assert same_bits(t.theta, reference)


def test_eight_workers_tiny_model(ray_session):
    job = {"model": {"input": 2, "layers": ["linear 8", "relu", "linear 3"], "loss": "cross_entropy"},
           "dataset": {"name": "spirals", "params": {"n": 300}}, "optimizer": {"name": "momentum", "lr": 0.1},
           "batch_size": 64, "chunk_size": 4, "steps": 25, "cpus_per_worker": 0.25}
    ref = local_weights(TrainConfig.from_dict(job))
    t = Trainer(TrainConfig.from_dict({**job, "workers": 8}), backend="ray")
    try:
        for _ in t.run():
            pass
    finally:
        t.close()
    assert same_bits(t.theta, ref)


def test_in_process_loop_equals_the_plain_formula():
    """With one chunk per batch the trainer is exactly: g = grad_sum / n; adam step."""
    from dptrain.core.optim import make_optimizer
    from dptrain.core.shard import epoch_permutation

    cfg = config(chunk_size=100, steps=5, epochs=None)
    t = Trainer(cfg, backend="local")
    for _ in t.run():
        pass
    model = cfg.build_model()
    theta = model.init_params(cfg.seed)
    opt = make_optimizer(cfg.optimizer, model.num_params, model.dtype)
    perm = epoch_permutation(cfg.seed, 0, t.train.n)
    for step in range(5):
        idx = perm[step * 100:(step + 1) * 100]
        g = model.grad_sum(theta, t.train.X[idx], t.train.y[idx]).grad / 100
        opt.step(theta, g.astype(model.dtype), cfg.optimizer.lr_at(step, t.total_steps))
    assert same_bits(t.theta, theta)


def _pids(t: Trainer) -> list[int]:
    return [n["pid"] for n in t.backend.nodes()]


def test_worker_sigkilled_mid_step_changes_nothing(ray_session, reference):
    t = Trainer(config(workers=2), backend="ray")
    try:
        for _ in range(5):
            t.step()
        victim = _pids(t)[1]
        ray_session.get(t.backend.pool.slots[1].actor.inject_delay.remote([2.0]))
        result: dict = {}
        stepper = threading.Thread(target=lambda: result.setdefault("m", t.step()))
        stepper.start()
        time.sleep(0.7)  # the step is now running; worker 1 is inside its call
        os.kill(victim, signal.SIGKILL)
        stepper.join(timeout=60)
        assert result["m"].failures == 1
        for _ in t.run():
            pass
        assert victim not in _pids(t)
        assert t.backend.failures == 1
    finally:
        t.close()
    assert same_bits(t.theta, reference)


def test_worker_past_the_deadline_is_replaced(ray_session, reference):
    t = Trainer(config(workers=2, worker_timeout_s=2.0), backend="ray")
    try:
        for _ in range(3):
            t.step()
        ray_session.get(t.backend.pool.slots[0].actor.inject_delay.remote([60.0]))
        started = time.monotonic()
        m = t.step()
        assert m.failures == 1 and time.monotonic() - started < 30
        for _ in t.run():
            pass
    finally:
        t.close()
    assert same_bits(t.theta, reference)


def test_resize_mid_run(ray_session, reference):
    t = Trainer(config(workers=2), backend="ray")
    try:
        sizes = {4: 3, 11: 1, 20: 4}
        for m in t.run():
            if m.step in sizes:
                t.resize(sizes[m.step])
                assert t.backend.size == sizes[m.step]
    finally:
        t.close()
    assert same_bits(t.theta, reference)


def test_workers_that_cannot_come_back_fail_the_job_clearly(ray_session):
    """All CPUs taken by others: a dead worker cannot be replaced within the budget."""

    @ray_session.remote(num_cpus=1)
    class Blocker:
        def ping(self):
            return True

    t = Trainer(config(workers=1, cpus_per_worker=1.0, recovery_budget_s=3.0), backend="ray")
    blockers = [Blocker.remote()]
    try:
        ray_session.get(blockers[0].ping.remote(), timeout=30)
        blockers.append(Blocker.remote())  # queued: it takes the worker's CPU once freed
        t.step()
        os.kill(_pids(t)[0], signal.SIGKILL)
        ray_session.get(blockers[1].ping.remote(), timeout=30)
        started = time.monotonic()
        with pytest.raises(WorkersLost, match="recovery budget"):
            t.step()
        assert time.monotonic() - started < 20
    finally:
        for b in blockers:
            ray_session.kill(b)
        t.close()


BN_DROPOUT = {**DIGITS_JOB, "model": {"input": 64, "layers": ["linear 32", "batch_norm", "relu", "dropout 0.2",
                                                               "linear 10"], "loss": "cross_entropy"},
              "val_every": 5}


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_batch_norm_and_dropout_are_exact_across_workers(ray_session, workers):
    """Chunk statistics (reduced along the tree for the running averages) and hashed dropout
    masks: any worker count gives the in-process loop's bits, running statistics included."""
    ref = local_weights(TrainConfig.from_dict(BN_DROPOUT))
    t = Trainer(TrainConfig.from_dict({**BN_DROPOUT, "workers": workers}), backend="ray")
    try:
        for _ in t.run():
            pass
    finally:
        t.close()
    assert same_bits(t.theta, ref)
    running = t.model.views(t.theta)["batch_norm1.running_var"]
    assert not np.allclose(running, 1.0)  # the running statistics did move
