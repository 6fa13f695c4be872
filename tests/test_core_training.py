"""The coordinator's bookkeeping: the epoch ledger, telemetry, convergence on digits."""
from __future__ import annotations

import time

import numpy as np
import pytest
from dptrain.core.config import TrainConfig
from dptrain.core.ledger import EpochLedger, LedgerError
from dptrain.core.trainer import Trainer
from dptrain.engine import SpecError

JOB = {
    "model": {"input": 64, "layers": ["linear 32", "relu", "linear 10"], "loss": "cross_entropy"},
    "dataset": {"name": "digits", "val_fraction": 0.2},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "batch_size": 100,
}


@pytest.mark.parametrize("drop_last", [False, True])
def test_ledger_every_example_exactly_once_per_epoch(drop_last):
    t = Trainer(TrainConfig.from_dict({**JOB, "epochs": 3, "drop_last": drop_last}), backend="local")
    batches = [m.batch for m in t.run()]
    n = t.train.n  # 1438: 14 full batches and a partial one of 38
    reports = t.stats()["epochs"]
    assert [r["epoch"] for r in reports] == [0, 1, 2]
    for r in reports:
        assert r["duplicated"] == 0 and r["examples"] == n
        assert (r["used_once"], r["unused"]) == ((1400, 38) if drop_last else (n, 0))
    assert batches.count(38) == (0 if drop_last else 3)


def test_ledger_counts_duplicates_and_gaps():
    ledger = EpochLedger(5)
    ledger.record(0, np.array([0, 1, 1]))
    ledger.record(0, np.array([3]))
    r = ledger.close()
    assert (r.used_once, r.unused, r.duplicated) == (2, 2, 1)


def test_ledger_rejects_indices_outside_the_dataset():
    ledger = EpochLedger(5)
    ledger.record(0, np.array([0, 5]))
    with pytest.raises(LedgerError, match="outside"):
        ledger.close()


def test_step_metrics_are_complete():
    t = Trainer(TrainConfig.from_dict({**JOB, "steps": 4, "val_every": 2}), backend="local")
    ms = list(t.run())
    assert [m.step for m in ms] == [1, 2, 3, 4] and [m.version for m in ms] == [1, 2, 3, 4]
    assert ms[1].val_loss is not None and ms[0].val_loss is None
    for m in ms:
        assert m.loss > 0 and 0 <= m.accuracy <= 1 and m.grad_norm > 0 and m.lr == 0.1
        assert m.samples_per_s > 0 and len(m.workers) == 1


def test_schedule_drives_the_learning_rate():
    opt = {"name": "sgd", "lr": 0.1, "schedule": {"name": "cosine", "warmup_steps": 2}}
    t = Trainer(TrainConfig.from_dict({**JOB, "optimizer": opt, "steps": 6}), backend="local")
    lrs = [m.lr for m in t.run()]
    assert lrs[0] == pytest.approx(0.05) and lrs[1] == pytest.approx(0.1)
    assert lrs[2] > lrs[3] > lrs[4] > lrs[5]


@pytest.mark.parametrize("job, field", [
    ({**JOB, "model": {**JOB["model"], "input": 10}}, "model.input"),
    ({**JOB, "model": {**JOB["model"], "loss": "mse"}}, "model.loss"),
    ({**JOB, "model": {**JOB["model"], "layers": ["linear 5"]}}, "model"),
    ({**JOB, "batch_size": 5000, "drop_last": True}, "job.batch_size"),
])
def test_model_and_dataset_must_fit(job, field):
    with pytest.raises(SpecError) as info:
        Trainer(TrainConfig.from_dict(job), backend="local")
    assert info.value.field == field


@pytest.mark.parametrize("job, field", [
    ({**JOB, "batch_size": 0}, "job.batch_size"),
    ({**JOB, "workers": -1}, "job.workers"),
    ({**JOB, "cpus_per_worker": 0}, "job.cpus_per_worker"),
    ({**JOB, "dtype": "float16"}, "job.dtype"),
    ({**JOB, "drop_last": "yes"}, "job.drop_last"),
    ({**JOB, "colour": 1}, "job.colour"),
    ({**JOB, "optimizer": {"name": "adam", "lr": -1}}, "optimizer.lr"),
    ({**JOB, "dataset": {"name": "cifar10"}}, "dataset.name"),
    ({k: v for k, v in JOB.items() if k != "model"}, "model"),
])
def test_job_fields_are_validated_by_name(job, field):
    with pytest.raises(SpecError) as info:
        TrainConfig.from_dict(job)
    assert info.value.field == field


def test_digits_mlp_reaches_97_percent(ray_session, capsys):
    job = {"model": {"input": 64, "layers": ["linear 128", "relu", "linear 10"], "loss": "cross_entropy"},
           "dataset": {"name": "digits", "val_fraction": 0.2}, "optimizer": {"name": "adam", "lr": 0.003},
           "batch_size": 64, "chunk_size": 32, "epochs": 30, "workers": 2, "cpus_per_worker": 0.5}
    started = time.monotonic()
    t = Trainer(TrainConfig.from_dict(job), backend="ray")
    try:
        *_, last = t.run()
    finally:
        t.close()
    seconds = time.monotonic() - started
    with capsys.disabled():
        print(f"\n[digits] val accuracy {last.val_accuracy:.4f} after {last.step} steps in {seconds:.1f}s "
              f"(2 Ray workers, incl. start)")
    assert last.val_accuracy >= 0.97


@pytest.mark.parametrize("opt", ["adam", "nesterov", "rmsprop"])
def test_resume_from_a_snapshot_mid_epoch_is_bitwise(opt):
    job = {**JOB, "optimizer": {"name": opt, "lr": 0.01}, "epochs": 2, "chunk_size": 32}
    full = Trainer(TrainConfig.from_dict(job), backend="local")
    for _ in full.run():
        pass
    first = Trainer(TrainConfig.from_dict(job), backend="local")
    for _ in range(19):  # 15 steps an epoch: stop inside the second epoch
        first.step()
    resumed = Trainer(TrainConfig.from_dict(job), backend="local", state=first.snapshot())
    for _ in resumed.run():
        pass
    assert resumed.theta.tobytes() == full.theta.tobytes()
    # the ledger continues from the checkpoint: both epochs, as the uninterrupted run counts them
    assert resumed.stats()["epochs"] == full.stats()["epochs"]
    assert [r["used_once"] for r in resumed.stats()["epochs"]] == [1438, 1438]


def test_a_resumed_ledger_counts_what_was_computed_not_the_plan():
    """The checkpoint carries the epoch's actual counts: an example its workers used twice
    before the checkpoint still shows as duplicated after the resume (re-deriving the
    counts from the plan would hide it)."""
    job = {**JOB, "epochs": 1, "chunk_size": 32}
    first = Trainer(TrainConfig.from_dict(job), backend="local")
    for _ in range(5):
        first.step()
    state = first.snapshot()
    used = first.permutation(0)[:state.position]
    state.ledger["counts"][used[0]] += 1  # as if a worker had used it twice
    resumed = Trainer(TrainConfig.from_dict(job), backend="local", state=state)
    for _ in resumed.run():
        pass
    (report,) = resumed.stats()["epochs"]
    assert (report["duplicated"], report["used_once"], report["complete"]) == (1, 1437, True)


def test_stats_show_the_epoch_in_progress():
    t = Trainer(TrainConfig.from_dict({**JOB, "epochs": 2}), backend="local")
    for _ in range(t.steps_per_epoch + 2):
        t.step()
    done, current = t.stats()["epochs"]
    assert done["complete"] and (done["used_once"], done["unused"]) == (1438, 0)
    assert not current["complete"] and current["used_once"] == 2 * JOB["batch_size"]
