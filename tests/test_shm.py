"""The same-node fast path (shared memory + socket channel) changes no bit, and the
object-store path it replaces stays exact when forced ($DPTRAIN_SHM=0)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from dptrain.core.config import TrainConfig
from dptrain.core.reduce import cover
from dptrain.core.shard import Plan, ShardComputer, WorkerJob
from dptrain.core.trainer import Trainer
from dptrain.execution.transports import segments as shm
from dptrain.execution.transports.ray_calls import RayLink
from dptrain.execution.waiting import WorkersLost

import tests.test_core_exactness as core
from tests.test_core_exactness import config, local_weights, same_bits


@pytest.fixture(scope="module")
def reference():
    return local_weights(config())


def train(cfg: TrainConfig, during=None) -> tuple[np.ndarray, list[str], Trainer]:
    t = Trainer(cfg, backend="ray")
    try:
        transports = [n["transport"] for n in t.backend.nodes()]
        for m in t.run():
            if during:
                during(t, m)
    finally:
        t.close()
    return t.theta.copy(), transports, t


def shm_files(t: Trainer) -> list[str]:
    host = t.backend.pool.shm
    prefix = host.prefix if host is not None else None
    return [f for f in os.listdir(shm.shm_dir()) if prefix and os.path.join(shm.shm_dir(), f).startswith(prefix)]


@pytest.mark.parametrize("mode, transport", [("0", "object_store"), ("calls", "shm"), ("1", "shm+socket")])
@pytest.mark.parametrize("workers", [2, 3])
def test_every_transport_equals_the_in_process_loop(ray_session, reference, monkeypatch, mode, transport, workers):
    monkeypatch.setenv("DPTRAIN_SHM", mode)
    theta, transports, _ = train(config(workers=workers))
    assert transports == [transport] * workers
    assert same_bits(theta, reference)


def test_failures_and_resizes_on_the_object_store_path(ray_session, reference, monkeypatch):
    """The path workers on other nodes take: SIGKILL, deadline and resize stay exact."""
    monkeypatch.setenv("DPTRAIN_SHM", "0")
    core.test_worker_sigkilled_mid_step_changes_nothing(ray_session, reference)
    core.test_worker_past_the_deadline_is_replaced(ray_session, reference)
    core.test_resize_mid_run(ray_session, reference)


def test_mixed_transports_in_one_step(ray_session, reference):
    """A worker on the object store next to shared-memory workers (as on another node)."""

    def demote(t, m):
        if m.step == 3:
            pool = t.backend.pool
            sl = pool.slots[1]
            sl.link.close()
            sl.link = RayLink(sl.actor, pool.theta_ref)

    theta, _, _ = train(config(workers=3), during=demote)
    assert same_bits(theta, reference)


def test_sigkill_with_the_channel_changes_nothing(ray_session, reference):
    t = Trainer(config(workers=2), backend="ray")
    try:
        for _ in range(4):
            t.step()
        old = t.backend.pool.slots[1]
        assert old.link.name == "shm+socket"
        old_out = old.link.out.path
        ray_session.get(old.actor.inject_delay.remote([2.0]))
        os.kill(old.info["pid"], signal.SIGKILL)
        m = t.step()
        assert m.failures == 1
        new = t.backend.pool.slots[1]
        assert new.link.out is not None and new.link.out.path != old_out  # a fresh file for the new actor
        t.step()
        assert not os.path.exists(old_out)  # the dead actor's file is gone by the next step
        for _ in t.run():
            pass
    finally:
        t.close()
    assert same_bits(t.theta, reference)


def test_survivor_takes_a_lost_plan_into_distinct_output_slots(ray_session, reference):
    """No replacement can start: worker 0 computes both plans of the step, on the fast path."""
    t = Trainer(config(workers=2), backend="ray")
    pool = t.backend.pool
    try:
        for _ in range(3):
            t.step()
        real_start = pool.group.start

        def no_replacement(count, deadline):
            raise WorkersLost("test: no capacity")

        pool.group.start = no_replacement
        os.kill(pool.slots[1].info["pid"], signal.SIGKILL)
        m = t.step()
        assert m.failures == 1 and t.backend.size == 1
        assert pool.slots[0].link.used == 2  # two calls, two output slots
        pool.group.start = real_start
        for _ in t.run():
            pass
    finally:
        t.close()
    assert same_bits(t.theta, reference)


def test_files_are_removed_on_close(ray_session):
    t = Trainer(config(workers=2, steps=2, epochs=None), backend="ray")
    for _ in t.run():
        pass
    prefix = t.backend.pool.shm.prefix
    assert shm_files(t)  # probe, weights, two outputs
    t.close()
    assert not [f for f in os.listdir(shm.shm_dir()) if os.path.join(shm.shm_dir(), f).startswith(prefix)]


def test_stale_files_of_dead_coordinators_are_cleaned(tmp_path, monkeypatch):
    monkeypatch.setenv("DPTRAIN_SHM_DIR", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ns = shm.owner_tag().split(".", 1)[1]
    stale = tmp_path / f"dptrain-{dead.pid}.{ns}-abcd-1-theta"
    live = tmp_path / f"dptrain-{os.getpid()}.{ns}-abcd-1-theta"
    foreign = tmp_path / f"dptrain-{dead.pid}.1-abcd-1-theta"  # another PID namespace: not ours to judge
    for f in (stale, live, foreign):
        f.write_bytes(b"x")
    assert shm.cleanup_stale() == [str(stale)]
    assert not stale.exists() and live.exists() and foreign.exists()


def test_segment_checks_the_nonce_and_reserves_space(tmp_path):
    seg = shm.Segment.create(str(tmp_path / "dptrain-1.1-t"), "out", 4096)
    assert os.stat(seg.path).st_blocks * 512 >= 4096  # fallocated: tmpfs full fails here, not later
    other = shm.Segment.attach(seg.path, seg.nonce, writable=True)
    other.array(np.float32, 4)[:] = [1, 2, 3, 4]
    assert seg.array(np.float32, 4).tolist() == [1, 2, 3, 4]
    with pytest.raises(OSError, match="nonce"):
        shm.Segment.attach(seg.path, seg.nonce + 1, writable=False)
    ro = shm.Segment.attach(seg.path, seg.nonce, writable=False)
    assert not ro.array(np.float32, 4).flags.writeable


def test_sums_written_into_given_buffers_have_the_same_bits():
    cfg = config()
    model = cfg.build_model()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 64)).astype(np.float32)
    y = rng.integers(0, 10, 400)
    theta = model.init_params(0)
    comp = ShardComputer(WorkerJob(cfg.model.to_dict(), "float32", X, y, None, None, 0))
    for run in [(0, 7), (1, 6), (3, 4), (2, 7)]:
        plan = Plan(0, 0, 100, 16, run)
        want = [(p.node, p.grad.copy(), p.loss) for p in comp.compute(theta, plan)]
        outs = [np.full(theta.size, np.nan, np.float32) for _ in cover(*run, 7)]
        got = comp.compute(theta, plan, out=outs)
        assert len(got) == len(want) == plan.n_nodes()
        for g, o, (node, grad, loss) in zip(got, outs, want):
            assert g.node == node and g.grad is o and g.loss == loss
            assert o.tobytes() == grad.tobytes()


def test_eight_workers_on_the_fast_path(ray_session):
    job = {"model": {"input": 2, "layers": ["linear 8", "relu", "linear 3"], "loss": "cross_entropy"},
           "dataset": {"name": "spirals", "params": {"n": 300}}, "optimizer": {"name": "adamw", "lr": 0.01,
                                                                               "clip_norm": 0.5},
           "batch_size": 64, "chunk_size": 4, "steps": 12, "cpus_per_worker": 0.25}
    ref = local_weights(TrainConfig.from_dict(job))
    theta, transports, _ = train(TrainConfig.from_dict({**job, "workers": 8}))
    assert set(transports) == {"shm+socket"}
    assert same_bits(theta, ref)


def test_a_worker_error_on_the_channel_fails_the_step_not_the_worker(ray_session):
    """Like a RayTaskError: an exception in the worker is a bug or bad data, not a lost
    worker, so it is raised (with the worker's traceback) instead of retried."""
    from dataclasses import replace

    from dptrain.execution.transports.channel import ChannelError

    t = Trainer(config(workers=2), backend="ray")
    pool = t.backend.pool
    try:
        t.step()
        real_call = pool.shm.call
        pool.shm.call = lambda *a: replace(real_call(*a), version=-5)  # weights at a version never published
        with pytest.raises(ChannelError, match="shared weights are at version"):
            t.step()
        assert pool.failures == 0
    finally:
        t.close()
