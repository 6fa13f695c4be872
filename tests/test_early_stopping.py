"""Early stopping ends a run when its metric stops improving; a resumed run stops where the
uninterrupted one does (the watch is checkpointed)."""
from __future__ import annotations

import pytest
from dptrain import TrainConfig, Trainer
from dptrain.engine import SpecError

JOB = {"model": {"input": 64, "layers": ["linear 32", "tanh", "linear 10"], "loss": "cross_entropy"},
       "dataset": {"name": "digits", "val_fraction": 0.2}, "optimizer": {"name": "adam", "lr": 0.003},
       "batch_size": 64, "epochs": 200, "val_every": 5,
       "early_stopping": {"metric": "val_loss", "patience": 3}}


def test_it_stops_and_a_resumed_run_stops_at_the_same_step_with_the_same_bits():
    whole = Trainer(TrainConfig.from_dict(JOB), backend="local")
    steps = list(whole.run())
    assert whole.stopped and "val_loss did not improve" in whole.stopped
    assert len(steps) < whole.total_steps and whole.stats()["stopped"] == whole.stopped
    first = Trainer(TrainConfig.from_dict(JOB), backend="local")
    for _ in range(len(steps) // 2):
        first.step()
    resumed = Trainer(TrainConfig.from_dict(JOB), backend="local", state=first.snapshot())
    rest = list(resumed.run())
    assert len(steps) // 2 + len(rest) == len(steps)
    assert resumed.theta.tobytes() == whole.theta.tobytes()


def test_val_metrics_need_validation():
    with pytest.raises(SpecError, match="early_stopping"):
        TrainConfig.from_dict({**JOB, "val_every": 0})
