"""dataset.standardize: a `standardize` node in front of the model, its statistics from the
training split alone, never trained, exact across workers, applied wherever the model runs."""
from __future__ import annotations

import numpy as np
import pytest
from dptrain.core.config import TrainConfig
from dptrain.core.trainer import Trainer
from dptrain.data import load_dataset
from dptrain.engine import Model, SpecError, gradcheck

from .test_core_exactness import same_bits
from .test_examples import train

JOB = {"model": {"input": 64, "layers": ["linear 32", "tanh", "linear 10"], "loss": "cross_entropy"},
       "dataset": {"name": "digits", "val_fraction": 0.2, "standardize": True},
       "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.1},  # decay would move a trained buffer
       "batch_size": 100, "chunk_size": 16, "steps": 12, "cpus_per_worker": 0.5, "val_every": 6}


def run(job: dict, backend: str = "local", workers: int = 1) -> Trainer:
    return train({**job, "workers": workers}, backend)


def test_the_op_is_an_affine_map_and_its_gradient_checks():
    m = Model({"input": 5, "layers": ["standardize", "linear 3"], "loss": "mse"}, dtype=np.float64)
    theta = m.init_params(0)
    v = m.views(theta)
    v["standardize0.mean"][...], v["standardize0.std"][...] = np.arange(5), np.arange(1, 6)
    X = np.random.default_rng(0).standard_normal((4, 5))
    m.forward(theta, X)
    np.testing.assert_allclose(m.graph.ops["standardize0"].buf("out", X.shape), (X - np.arange(5)) / np.arange(1, 6))
    report = gradcheck({"input": 5, "layers": ["standardize", "tanh", "linear 3"], "loss": "mse"})
    assert report.ok(), report.lines()


def test_statistics_come_from_the_training_split_and_are_never_trained():
    t = run(JOB)
    config = TrainConfig.from_dict(JOB)
    assert [n.op for n in config.model.nodes][:2] == ["standardize", "linear"]  # in the stored spec too
    train, _ = load_dataset(JOB["dataset"])
    v = t.model.views(t.theta)
    std = train.X.std(axis=0, dtype=np.float64)
    np.testing.assert_array_equal(v["standardize.mean"], train.X.mean(axis=0, dtype=np.float64).astype(np.float32))
    np.testing.assert_array_equal(v["standardize.std"], np.where(std > 0, std, 1).astype(np.float32))
    assert (v["standardize.std"] == 1).any()  # digits has constant pixels: std 0 -> 1, no division by 0


@pytest.mark.parametrize("workers", [2, 3])
def test_exact_across_workers(ray_session, workers):
    assert same_bits(run(JOB, "ray", workers).theta, run(JOB).theta)


def test_a_token_model_is_not_standardized():
    job = {**JOB, "model": {"input": {"shape": [8], "dtype": "int", "vocab": 10}, "layers": ["embedding 4", "unembed"],
                            "loss": "cross_entropy"},
           "dataset": {"name": "sequence", "params": {"n": 64, "length": 8, "vocab": 10}, "standardize": True},
           "val_every": 0}
    with pytest.raises(SpecError, match="dataset.standardize: token ids are not standardized"):
        TrainConfig.from_dict(job)


def test_predictions_apply_it_to_raw_inputs(server):
    from dptrain.client import Client

    with Client(server.address) as c:
        job = c.submit(JOB, name="standardized")
        c.wait(job.id)
        _, _, weights = c.weights(job.id)
        X = load_dataset(JOB["dataset"])[1].X[:5]
        got = c.predict(job.id, X)
    m = TrainConfig.from_dict(JOB).build_model()
    theta = np.concatenate([weights[p.name].ravel() for p in m.params])
    np.testing.assert_allclose(got, m.predict(theta, X), rtol=1e-6)
    assert np.abs(weights["standardize.mean"]).sum() > 0
