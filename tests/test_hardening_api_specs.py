"""Issue 10 (items 3, 16, 17), without a server: spec bounds, settings that do nothing,
the wire conversion, and the watch feed's ordering."""
from __future__ import annotations

import math

import pytest
from dptrain.core.config import TrainConfig
from dptrain.core.optim import OptimizerSpec
from dptrain.core.schedules import ScheduleSpec
from dptrain.engine import SpecError
from dptrain.rpc import convert, pb

GOOD = {
    "model": {"input": 64, "layers": ["linear 16", "relu", "linear 10"], "loss": "cross_entropy"},
    "dataset": {"name": "digits", "val_fraction": 0.2}, "optimizer": {"name": "sgd", "lr": 0.1}, "steps": 2,
}


def _field_of(d: dict) -> str:
    with pytest.raises(SpecError) as info:
        TrainConfig.from_dict(d)
    return info.value.field


# --- item 17: values that could only fail at run time are refused at submit -------------
@pytest.mark.parametrize("key, value", [
    ("workers", 1_000_000_000), ("workers", 257),
    ("cpus_per_worker", 1e308), ("cpus_per_worker", 1e-9), ("cpus_per_worker", 2048),
    ("worker_timeout_s", 5e-324), ("worker_timeout_s", 1e9),
    ("recovery_budget_s", 1e-300), ("recovery_budget_s", 1e12),
    ("batch_size", 2**40), ("chunk_size", 2**40), ("epochs", 10**12), ("steps", 2**62),
    ("seed", 2**63), ("val_every", 2**62), ("checkpoint_every", 2**62),
])
def test_execution_numbers_are_bounded(key, value):
    spec = {**GOOD, key: value}
    if key == "epochs":
        spec.pop("steps")
    assert _field_of(spec) == f"job.{key}"


def test_the_bounds_themselves_are_accepted():
    c = TrainConfig.from_dict({**GOOD, "workers": 256, "cpus_per_worker": 0.01, "worker_timeout_s": 0.1,
                               "recovery_budget_s": 1, "seed": 2**63 - 1, "steps": 10**9})
    assert (c.workers, c.seed) == (256, 2**63 - 1)


@pytest.mark.parametrize("optimizer, field", [
    ({"name": "adam", "momentum": 0.9}, "optimizer.momentum"),  # the default value, set explicitly: still inert
    ({"name": "adamw", "alpha": 0.5}, "optimizer.alpha"),
    ({"name": "rmsprop", "momentum": 0.5}, "optimizer.momentum"),
    ({"name": "rmsprop", "beta1": 0.5}, "optimizer.beta1"),
    ({"name": "sgd", "beta2": 0.5}, "optimizer.beta2"),
    ({"name": "sgd", "eps": 1e-6}, "optimizer.eps"),
    ({"name": "sgd", "momentum": 0}, "optimizer.momentum"),
    ({"name": "momentum", "beta1": 0.5}, "optimizer.beta1"),
    ({"name": "nesterov", "eps": 1e-6}, "optimizer.eps"),
    ({"name": "sgd", "schedule": {"name": "constant", "gamma": 0.5}}, "optimizer.schedule.gamma"),
    ({"name": "sgd", "schedule": {"name": "constant", "step_size": 5}}, "optimizer.schedule.step_size"),
    ({"name": "sgd", "schedule": {"name": "cosine", "gamma": 0.5}}, "optimizer.schedule.gamma"),
    ({"name": "sgd", "schedule": {"name": "step", "min_lr": 0.0}}, "optimizer.schedule.min_lr"),
    ({"name": "sgd", "schedule": {"name": "step", "total_steps": 10}}, "optimizer.schedule.total_steps"),
    ({"name": "sgd", "schedule": {"name": "constant", "min_lr": 0.01}}, "optimizer.schedule.min_lr"),
])
def test_settings_that_do_nothing_are_errors(optimizer, field):
    with pytest.raises(SpecError) as info:
        OptimizerSpec.from_dict(optimizer)
    assert info.value.field == field and "remove it" in info.value.message
    assert _field_of({**GOOD, "optimizer": optimizer}) == field


def test_val_every_without_a_validation_split_is_an_error():
    assert _field_of({**GOOD, "dataset": {"name": "digits"}, "val_every": 5}) == "job.val_every"
    TrainConfig.from_dict({**GOOD, "val_every": 5})  # with a split it is used


@pytest.mark.parametrize("optimizer", [
    {"name": "rmsprop", "alpha": math.inf}, {"name": "rmsprop", "alpha": math.nan},
    {"name": "adam", "eps": math.inf}, {"name": "sgd", "lr": math.inf}, {"name": "sgd", "weight_decay": math.inf},
    {"name": "sgd", "clip_norm": math.inf}, {"name": "sgd", "schedule": {"name": "step", "gamma": math.nan}},
    {"name": "sgd", "schedule": {"name": "cosine", "min_lr": math.inf}},
    {"name": "sgd", "schedule": {"name": "step", "step_size": 2**62}},
    {"name": "sgd", "schedule": {"name": "constant", "warmup_steps": 2**62}},
    {"name": "sgd", "schedule": {"name": "cosine", "total_steps": 2**62}},
])
def test_optimizer_numbers_are_finite_and_bounded(optimizer):
    with pytest.raises(SpecError):
        OptimizerSpec.from_dict(optimizer)


def test_stored_specs_round_trip_and_old_records_still_load():
    """to_dict keeps only what is used, so a record (and a Job.spec sent back) validates;
    a record written before these checks, with every field, still loads (from_stored)."""
    for opt in ({"name": "adam", "lr": 0.003}, {"name": "rmsprop", "alpha": 0.9},
                {"name": "nesterov", "momentum": 0.5, "schedule": {"name": "step", "step_size": 3, "gamma": 0.5}},
                {"name": "sgd", "schedule": {"name": "cosine", "warmup_steps": 2, "min_lr": 0.001}}):
        c = TrainConfig.from_dict({**GOOD, "optimizer": opt})
        assert TrainConfig.from_dict(c.to_dict()) == c
        assert TrainConfig.from_dict(convert.job_spec_to_dict(convert.dict_to_job_spec(c.to_dict()))) == c
    old = TrainConfig.from_dict({**GOOD, "optimizer": {"name": "adam"}}).to_dict()
    old["optimizer"].update(momentum=0.9, alpha=0.99)
    old["optimizer"]["schedule"] = {"name": "constant", "warmup_steps": 0, "step_size": 1000, "gamma": 0.1,
                                    "total_steps": None, "min_lr": 0.0}
    old.update(dataset={"name": "digits", "params": {}, "val_fraction": 0.0, "seed": 0}, val_every=7)
    with pytest.raises(SpecError):
        TrainConfig.from_dict(old)
    loaded = TrainConfig.from_stored(old)
    assert loaded.optimizer == OptimizerSpec("adam") and loaded.val_every == 0


def test_schedule_to_dict_round_trips():
    for s in (ScheduleSpec("constant", 3), ScheduleSpec("step", 1, 5, 0.5), ScheduleSpec("cosine", 2, total_steps=9,
                                                                                       min_lr=0.1)):
        assert ScheduleSpec.from_dict(s.to_dict()) == s


# --- the wire conversion ------------------------------------------------------------------
def test_request_id_is_not_part_of_the_training_config():
    spec = convert.dict_to_job_spec(GOOD, name="x")
    spec.request_id = "retry-1"
    d = convert.job_spec_to_dict(spec)
    assert "request_id" not in d and "name" not in d
    TrainConfig.from_dict(d)


def test_only_fields_the_client_set_are_converted():
    spec = convert.dict_to_job_spec({**GOOD, "optimizer": {"name": "adam", "schedule": {"name": "cosine"}}})
    d = convert.job_spec_to_dict(spec)
    assert d["optimizer"] == {"name": "adam", "schedule": {"name": "cosine"}}
    assert TrainConfig.from_dict(d).optimizer.name == "adam"


def test_stats_to_pb_maps_the_ledger_and_the_workers():
    stats = {"epochs": [{"epoch": 0, "examples": 10, "used_once": 10, "unused": 0, "duplicated": 0},
                        {"epoch": 1, "examples": 10, "used_once": 4, "unused": 6, "duplicated": 0,
                         "complete": False}],
             "workers": [{"worker": 0, "node_id": "ab12", "pid": 77, "transport": "shm+socket", "shm": True}],
             "failures": 3, "steps": 5, "total_steps": 9}
    msg = convert.stats_to_pb(stats)
    assert msg.failures == 3
    assert [(e.epoch, e.used_once, e.unused, e.duplicated, e.complete) for e in msg.epochs] == \
        [(0, 10, 0, 0, True), (1, 4, 6, 0, False)]
    assert [(w.worker, w.node, w.pid, w.transport) for w in msg.workers] == [(0, "ab12", 77, "shm+socket")]


# --- item 16: the final state is always the stream's last event ----------------------------
def test_watch_sends_the_final_state_after_every_step(tmp_path):
    """The training thread records the last steps and then the final state between two
    wake-ups of a watcher: the watcher must send the steps first (max_batch 0 did not)."""
    from dptrain.server import handlers
    from dptrain.server.config import Limits
    from dptrain.server.datasets import DatasetRegistry
    from dptrain.server.manager import JobManager, metrics_event
    from dptrain.store.checkpoints import CheckpointStore
    from dptrain.store.memory import MemoryJobStore

    store = MemoryJobStore()
    manager = JobManager(store, CheckpointStore(tmp_path / "ckpt"), DatasetRegistry(store, tmp_path / "ds", Limits()))
    job_id = store.create("w", TrainConfig.from_dict(GOOD).to_dict()).id
    feed = manager.feed(job_id)
    feed.set_state("RUNNING")
    for s in range(1, 4):
        feed.add_metrics(s, metrics_event(job_id, {"step": s, "epoch": 0, "loss": 1.0}))
    events = handlers.watch_job(manager, pb.WatchJobRequest(job_id=job_id, max_batch=0), lambda: True, batch_s=0)
    got = [next(events) for _ in range(4)]
    assert got[0].WhichOneof("event") == "state" and got[0].state.state == pb.JOB_STATE_RUNNING
    for s in range(4, 44):  # the job's last steps, then its end, while the watcher is between wake-ups
        feed.add_metrics(s, metrics_event(job_id, {"step": s, "epoch": 0, "loss": 1.0}))
    feed.set_state("SUCCEEDED")
    got += list(events)
    assert got[-1].WhichOneof("event") == "state" and got[-1].state.state == pb.JOB_STATE_SUCCEEDED
    assert [e.metrics.step for e in got[1:-1]] == list(range(1, 44))
    assert all(e.job_id == job_id for e in got)
    # Watched after the end: the recorded steps, then the final state, last.
    replay = list(handlers.watch_job(manager, pb.WatchJobRequest(job_id=job_id, max_batch=16), lambda: True, 0))
    assert replay[-1].state.state == pb.JOB_STATE_SUCCEEDED
    assert [m.step for e in replay[:-1] for m in e.metrics_batch.steps] == list(range(1, 44))
