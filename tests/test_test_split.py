"""A held-out test split (dataset.test_fraction): disjoint from training and validation,
never seen by workers, evaluated once on the final weights and reported with the last step."""
from __future__ import annotations

import numpy as np
import pytest
from dptrain.core.config import TrainConfig
from dptrain.core.trainer import Trainer
from dptrain.data import SpecError, load_dataset, load_splits

JOB = {"model": {"input": 64, "layers": ["linear 32", "relu", "linear 10"], "loss": "cross_entropy"},
       "dataset": {"name": "digits", "val_fraction": 0.2, "test_fraction": 0.15},
       "optimizer": {"name": "adam", "lr": 0.003}, "batch_size": 64, "chunk_size": 16, "epochs": 10,
       "cpus_per_worker": 0.5}


def test_the_three_parts_are_disjoint_complete_and_seeded():
    spec = JOB["dataset"]
    train, val, test = load_splits(spec)
    assert (train.n, val.n, test.n) == (1797 - 359 - 270, 359, 270)
    rows = {tuple(r) for part in (train, val, test) for r in np.hstack([part.X, part.y[:, None]])}
    assert len(rows) >= 1797 - 20  # digits has a few duplicate images; nothing is lost or shared beyond them
    again = load_splits(spec)
    for a, b in zip((train, val, test), again):
        assert a.X.tobytes() == b.X.tobytes()
    # without a test split, the validation split is the one earlier versions made
    old_train, old_val = load_dataset({"name": "digits", "val_fraction": 0.2})
    assert old_val.X.tobytes() == val.X.tobytes()
    assert old_train.n == train.n + test.n


def test_fractions_that_leave_nothing_to_train_on_are_refused():
    with pytest.raises(SpecError, match="test_fraction: val_fraction 0.5 \\+ test_fraction 0.5 leave nothing"):
        load_splits({"name": "digits", "val_fraction": 0.5, "test_fraction": 0.5})


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_the_last_step_reports_the_test_set_on_the_final_weights(request, backend):
    if backend == "ray":
        request.getfixturevalue("ray_session")
    t = Trainer(TrainConfig.from_dict({**JOB, "workers": 2}), backend=backend)
    try:
        metrics = list(t.run())
    finally:
        t.close()
    assert all(m.test_loss is None for m in metrics[:-1])
    last = metrics[-1]
    _, _, test = load_splits(JOB["dataset"])
    whole = t.model.evaluate(t.theta, test.X, test.y)
    assert last.test_loss == pytest.approx(whole.loss / whole.count, rel=1e-6)
    assert last.test_accuracy == whole.correct / whole.count > 0.85
    assert last.val_loss is not None
