"""One error format for every spec: each error names its full field path, all are reported at once."""
from __future__ import annotations

import pickle

import pytest
import yaml
from dptrain.core.config import TrainConfig
from dptrain.engine import Model, SpecError
from dptrain.rpc import convert

GOOD = {"model": {"input": 64, "layers": ["linear 16", "relu", "linear 10"], "loss": "cross_entropy"},
        "dataset": {"name": "digits"}, "optimizer": {"name": "adam", "lr": 0.003}, "steps": 2}


def test_every_error_of_a_job_is_reported_at_once():
    job = {"model": {"input": 4, "layers": ["linear 8", "swish", {"op": "linear", "unts": 3}]},
           "dataset": {"name": "blobs", "params": {"n": -1}}, "optimizer": {"name": "adam", "lr": 0, "momentum": 0.9},
           "batch_size": 0, "colour": 1}
    with pytest.raises(SpecError) as info:
        TrainConfig.from_dict(job)
    errors = dict(info.value.errors)
    assert set(errors) == {"model.layers[1].op", "model.layers[2].unts", "model.layers[2].units", "dataset.params.n",
                           "optimizer.momentum", "optimizer.lr", "job.batch_size", "job.colour"}
    assert "did you mean 'units'" in errors["model.layers[2].unts"]
    assert str(info.value).splitlines() == [f"{f}: {m}" for f, m in info.value.errors]
    copy = pickle.loads(pickle.dumps(info.value))  # Ray carries errors between processes
    assert copy.errors == info.value.errors and str(copy) == str(info.value)


def test_a_model_reports_every_node_error():
    spec = {"input": 4, "loss": "mse", "nodes": [{"name": "h", "op": "linear", "inputs": ["x"], "units": 0},
                                                 {"name": "g", "op": "pow", "inputs": ["h"], "exponent": "two"}]}
    with pytest.raises(SpecError) as info:
        Model(spec)
    assert [f for f, _ in info.value.errors] == ["model.nodes[0] (h).units", "model.nodes[1] (g).exponent"]


def test_yaml_1_1_numbers_reach_the_server_as_numbers():
    """PyYAML reads `lr: 3e-3` as a string: float fields take it, locally and over the wire."""
    job = yaml.safe_load("model: {input: 64, layers: [linear 10], loss: cross_entropy}\n"
                         "dataset: {name: digits, val_fraction: 2e-1}\n"
                         "optimizer: {name: adam, lr: 3e-3, schedule: {name: cosine, min_lr: 1e-5}}\nsteps: 2\n")
    assert job["optimizer"]["lr"] == "3e-3"
    local = TrainConfig.from_dict(job)
    wire = TrainConfig.from_dict(convert.job_spec_to_dict(convert.dict_to_job_spec(job)))
    assert local == wire and local.optimizer.lr == 0.003 and local.dataset.val_fraction == 0.2
    with pytest.raises(SpecError) as info:
        TrainConfig.from_dict({**GOOD, "batch_size": "64"})  # integers stay integers
    assert info.value.field == "job.batch_size"


def test_the_wire_form_validates_once_with_the_same_paths():
    spec = convert.dict_to_job_spec({**GOOD, "optimizer": {"name": "adam", "lr": -1}, "workers": 0})
    with pytest.raises(SpecError) as info:
        TrainConfig.from_dict(convert.job_spec_to_dict(spec))
    assert [f for f, _ in info.value.errors] == ["optimizer.lr", "job.workers"]
