"""Wire conversions: job specs round-trip to the validated TrainConfig dict; tensors and weights bitwise."""
from __future__ import annotations

import json

import numpy as np
import pytest
from dptrain.core.config import TrainConfig
from dptrain.core.telemetry import StepMetrics, WorkerTiming
from dptrain.engine.errors import SpecError
from dptrain.rpc import pb
from dptrain.rpc.convert import (
    assemble_weights,
    dataset_info_to_pb,
    dict_to_job_spec,
    from_tensor,
    job_spec_to_dict,
    metrics_from_pb,
    metrics_to_pb,
    record_to_job,
    state_from_pb,
    state_to_pb,
    to_tensor,
    weights_messages,
)
from dptrain.store import STATES, JobRecord

MLP = {
    "name": "mlp",
    "model": {"input": 64, "loss": "cross_entropy",
              "layers": ["linear 32", "leaky_relu 0.1", {"op": "linear", "units": 10, "bias": False}]},
    "dataset": {"name": "digits", "val_fraction": 0.2, "seed": 3},
    "optimizer": {"name": "momentum", "lr": 0.05, "momentum": 0.8,
                  "schedule": {"name": "step", "step_size": 50, "gamma": 0.5}},
    "batch_size": 128, "epochs": 2, "chunk_size": 32, "workers": 3, "val_every": 10,
}
DAG = {
    "model": {"input": 16, "loss": "mse", "output": "out",
              "nodes": [{"name": "h", "op": "linear", "inputs": ["x"], "units": 16},
                        {"name": "a", "op": "tanh", "inputs": "h"},
                        {"name": "h2", "op": "linear", "inputs": ["a"], "units": 16, "share": "h"},
                        {"name": "r", "op": "add", "inputs": ["a", "h2"]},
                        {"name": "out", "op": "linear", "inputs": ["r"], "units": 1}]},
    "dataset": {"name": "regression", "params": {"n": 512, "d": 16, "noise": 0.05}},
    "optimizer": {"name": "adamw", "lr": 0.001, "weight_decay": 0.01, "clip_norm": 1.0,
                  "schedule": {"name": "cosine", "warmup_steps": 5, "total_steps": 100, "min_lr": 1e-5}},
    "steps": 100, "seed": 7, "dtype": "float64", "drop_last": True,
}
REGRESSION = {
    "model": {"input": 8, "loss": "mse", "layers": ["linear 16", "relu", "linear 2"]},
    "dataset": {"name": "regression", "params": {"d": 8, "outputs": 2, "seed": 11}, "val_fraction": 0.1},
    "optimizer": {"name": "sgd", "lr": 0.01},
    "epochs": 3, "steps": 40, "cpus_per_worker": 0.5, "worker_timeout_s": 5, "recovery_budget_s": 30.5,
    "checkpoint_every": 10,
}
CSV = {
    "model": {"input": 4, "loss": "cross_entropy", "layers": ["linear 3"]},
    "dataset": {"name": "csv", "params": {"path": "3f2a9c", "label": "species", "header": True, "delimiter": ";"}},
    "optimizer": {"name": "rmsprop", "alpha": 0.9, "eps": 1e-6},
}
JOBS = {"mlp": MLP, "dag": DAG, "regression": REGRESSION, "csv": CSV}


def _validated(d: dict) -> dict:
    return TrainConfig.from_dict({k: v for k, v in d.items() if k != "name"}).to_dict()


def _without_none(d: dict) -> dict:
    """Drop None fields (they travel as unset) except inside dataset params (they travel as null)."""
    out = {k: v for k, v in d.items() if v is not None}
    out["optimizer"] = {k: v for k, v in out["optimizer"].items() if v is not None}
    out["optimizer"]["schedule"] = {k: v for k, v in out["optimizer"]["schedule"].items() if v is not None}
    return out


@pytest.mark.parametrize("job", JOBS.values(), ids=JOBS.keys())
def test_job_spec_round_trip_matches_validated_config(job):
    expected = _validated(job)
    for source in (job, expected):
        spec = dict_to_job_spec(source)
        wire = pb.JobSpec.FromString(spec.SerializeToString())
        assert _validated(job_spec_to_dict(wire)) == expected
    # The validated form survives exactly, including int vs float kinds.
    back = job_spec_to_dict(dict_to_job_spec(expected))
    assert json.dumps(back, sort_keys=True) == json.dumps(_without_none(expected), sort_keys=True)


def test_name_is_a_label_not_config():
    spec = dict_to_job_spec(MLP)
    assert spec.name == "mlp"
    assert "name" not in job_spec_to_dict(spec)
    assert dict_to_job_spec(MLP, name="other").name == "other"


def test_sequential_layers_keep_their_form():
    d = job_spec_to_dict(dict_to_job_spec(MLP))
    assert d["model"]["layers"] == [{"op": "linear", "units": 32}, {"op": "leaky_relu", "alpha": 0.1},
                                    {"op": "linear", "units": 10, "bias": False}]
    assert isinstance(d["model"]["layers"][0]["units"], int)


def test_unset_optionals_are_omitted_so_defaults_apply():
    spec = pb.JobSpec()
    spec.model.input = 4
    spec.model.layers.add(op="linear").attrs["units"].integer = 3
    spec.dataset.name = "blobs"
    spec.optimizer.name = "adam"
    d = job_spec_to_dict(spec)
    assert d == {"model": {"input": 4, "layers": [{"op": "linear", "units": 3}]},
                 "dataset": {"name": "blobs", "params": {}}, "optimizer": {"name": "adam"}}
    config = TrainConfig.from_dict(d)
    assert (config.batch_size, config.epochs, config.optimizer.lr, config.workers) == (256, 1, 0.01, 2)


def test_explicit_zero_is_sent_and_validated():
    spec = dict_to_job_spec(MLP)
    spec.batch_size = 0
    spec.seed = 0
    d = job_spec_to_dict(spec)
    assert d["seed"] == 0 and d["batch_size"] == 0
    with pytest.raises(SpecError) as err:
        TrainConfig.from_dict(d)
    assert err.value.field == "job.batch_size"


def test_schedule_without_name_means_constant():
    spec = dict_to_job_spec(MLP)
    spec.optimizer.schedule.Clear()
    spec.optimizer.schedule.warmup_steps = 3
    assert job_spec_to_dict(spec)["optimizer"]["schedule"] == {"name": "constant", "warmup_steps": 3}


@pytest.mark.parametrize("patch, field", [
    ({"batch_size": "big"}, "job.batch_size"),
    ({"batch_size": 2.5}, "job.batch_size"),
    ({"drop_last": 1}, "job.drop_last"),
    ({"bogus": 1}, "job.bogus"),
    ({"optimizer": {"name": "adam", "lr": True}}, "optimizer.lr"),
    ({"optimizer": {"name": "adam", "schedule": {"name": "step", "gamma": "x"}}}, "optimizer.schedule.gamma"),
    ({"dataset": {"name": "blobs", "params": {"n": [1.5, 2]}}}, "dataset.params.n"),  # lists hold integers
    ({"model": {"input": 4, "layers": ["linear 8", {"op": "linear", "units": {"a": 1}}]}}, "model.layers[1].units"),
    ({"model": {"input": [4, "x"], "layers": ["linear 8"]}}, "model.input"),
    ({"model": {"input": {"shape": [4], "kind": "int"}, "layers": ["linear 8"]}}, "model.input.kind"),
    ({"model": {"input": 4, "layers": ["linear 8"], "loss": {"name": "cross_entropy", "t": 1}}}, "model.loss.t"),
    ({"model": {"input": 4, "layers": ["linear 8"], "recompute": [["a"]]}}, "model.recompute[0]"),
    ({"model": {"input": 4, "layers": ["linear eight"]}}, "model.layers[0]"),
    ({"model": {"input": 4, "nodes": [{"name": "h", "op": "linear", "inputs": [1]}]}}, "model.nodes[0].inputs"),
    ({"model": {"input": 4, "nodes": [{"name": 5, "op": "linear", "inputs": ["x"]}]}}, "model.nodes[0].name"),
    ({"model": "mlp"}, "model"),
])
def test_dict_to_job_spec_errors_name_the_field(patch, field):
    with pytest.raises(SpecError) as err:
        dict_to_job_spec({**MLP, **patch})
    assert err.value.field == field


def test_a_list_of_integers_where_a_number_belongs_is_named_by_the_spec():
    """Lists of integers travel (conv kernels); the spec then says what the field wants."""
    d = job_spec_to_dict(dict_to_job_spec({**MLP, "dataset": {"name": "blobs", "params": {"n": [1, 2]}}}))
    with pytest.raises(SpecError) as err:
        TrainConfig.from_dict(d)
    assert "dataset.params.n" in dict(err.value.errors)


@pytest.mark.parametrize("model", [
    {"input": [1, 28, 28], "layers": [{"op": "linear", "units": 4}], "recompute": 2,
     "loss": {"name": "cross_entropy", "label_smoothing": 0.1}},
    {"input": {"shape": [16], "dtype": "int", "vocab": 50}, "recompute": [["e", "e"]],
     "nodes": [{"name": "e", "op": "linear", "inputs": ["x"], "units": 3, "kernel": [3, 5]}]},
])
def test_tensor_inputs_loss_options_lists_and_recompute_round_trip(model):
    assert job_spec_to_dict(dict_to_job_spec({**MLP, "model": model}))["model"] == model


def test_reserved_attribute_names_are_rejected():
    spec = dict_to_job_spec(DAG)
    spec.model.nodes[0].attrs["inputs"].text = "a"
    with pytest.raises(SpecError) as err:
        job_spec_to_dict(spec)
    assert err.value.field == "model.nodes[0].attrs.inputs"


# --------------------------------------------------------------------------- tensors


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
@pytest.mark.parametrize("shape", [(), (0, 3), (5,), (2, 3, 4)])
def test_tensor_round_trip_bitwise(dtype, shape):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal(shape) * 1e6).astype(dtype)
    t = pb.Tensor.FromString(to_tensor("w", a).SerializeToString())
    assert (t.name, t.dtype, tuple(t.shape)) == ("w", dtype, shape)
    assert t.data == a.astype(np.dtype(dtype).newbyteorder("<")).tobytes()  # raw little-endian, no pickle
    b = from_tensor(t)
    assert b.dtype == np.dtype(dtype) and b.shape == shape
    assert b.tobytes() == a.tobytes()


def test_tensor_from_big_endian_and_non_contiguous_arrays():
    a = np.arange(12, dtype=">f8").reshape(3, 4).T
    b = from_tensor(to_tensor("x", a))
    assert b.dtype == np.float64 and np.array_equal(a, b)


def test_tensor_special_values_survive():
    a = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45], dtype=np.float32)
    assert from_tensor(to_tensor("x", a)).tobytes() == a.tobytes()


@pytest.mark.parametrize("tensor, field", [
    (pb.Tensor(name="x", dtype="float16", shape=[2], data=b"\0" * 4), "inputs.dtype"),
    (pb.Tensor(name="x", dtype="object", shape=[1], data=b"\0" * 8), "inputs.dtype"),
    (pb.Tensor(name="x", dtype="float32", shape=[2, 3], data=b"\0" * 20), "inputs.data"),
    (pb.Tensor(name="x", dtype="int64", shape=[-1], data=b"\0" * 8), "inputs.shape"),
])
def test_from_tensor_errors_name_the_field(tensor, field):
    with pytest.raises(SpecError) as err:
        from_tensor(tensor, "inputs")
    assert err.value.field == field


def test_from_tensor_defaults_to_the_tensor_name():
    with pytest.raises(SpecError, match=r"^h\.W\.data: has 3 bytes"):
        from_tensor(pb.Tensor(name="h.W", dtype="float32", shape=[1], data=b"abc"))


def test_to_tensor_rejects_other_dtypes():
    with pytest.raises(SpecError) as err:
        to_tensor("w", np.zeros(3, np.float16))
    assert err.value.field == "w.dtype"


# --------------------------------------------------------------------------- weights

LIMIT = 4 * 1024 * 1024  # gRPC's default maximum message size


@pytest.fixture(scope="module")
def big_weights():
    rng = np.random.default_rng(1)
    return {  # ~20 MB of float32, one tensor alone larger than a message
        "h.W": rng.standard_normal((2048, 2048), dtype=np.float32),
        "h.b": rng.standard_normal(2048, dtype=np.float32),
        "empty": np.zeros((0, 4), np.float32),
        "out.W": rng.standard_normal((2048, 512), dtype=np.float32),
        "out.b": np.zeros(512, np.float32),
        "count": np.array(7, np.int64),
    }


@pytest.mark.parametrize("max_bytes", [1 << 20, LIMIT - (64 << 10)])
def test_weights_chunked_under_4mib_and_reassembled_bitwise(big_weights, max_bytes):
    total = sum(a.nbytes for a in big_weights.values())
    assert total > 20_000_000
    msgs = weights_messages(12, 34, big_weights, max_bytes=max_bytes, job_id="j1")
    assert len(msgs) >= total // max_bytes
    assert all(m.ByteSize() < LIMIT for m in msgs)
    assert [(m.chunk_index, m.chunk_count) for m in msgs] == [(i, len(msgs)) for i in range(len(msgs))]
    assert {(m.job_id, m.version, m.step) for m in msgs} == {("j1", 12, 34)}
    pieces = [t.name for m in msgs for t in m.tensors]
    assert pieces.count("h.W") > 1  # split across messages
    wire = [pb.WeightsUpdate.FromString(m.SerializeToString()) for m in reversed(msgs)]  # any arrival order
    out = assemble_weights(wire)
    assert list(out) == list(big_weights)
    for name, a in big_weights.items():
        assert out[name].dtype == a.dtype and out[name].shape == a.shape
        assert out[name].tobytes() == a.tobytes()
    out["h.b"][0] = 1.0  # writable, owns its memory


def test_empty_weights_is_one_chunk():
    msgs = weights_messages(1, 1, {})
    assert len(msgs) == 1 and msgs[0].chunk_count == 1
    assert assemble_weights(msgs) == {}


def test_assemble_rejects_missing_or_mixed_chunks(big_weights):
    msgs = weights_messages(1, 1, big_weights, max_bytes=1 << 20)
    with pytest.raises(SpecError) as err:
        assemble_weights(msgs[:3] + msgs[4:])
    assert err.value.field == "weights.chunk_index"
    other = weights_messages(2, 2, big_weights, max_bytes=1 << 20)
    with pytest.raises(SpecError) as err:
        assemble_weights(msgs[:2] + other[2:])
    assert err.value.field == "weights.version"
    with pytest.raises(SpecError):
        assemble_weights([])


def test_assemble_rejects_a_truncated_tensor():
    msgs = weights_messages(1, 1, {"w": np.ones(100, np.float32), "b": np.ones(3, np.float32)}, max_bytes=64)
    msgs[3].tensors[0].data = msgs[3].tensors[0].data[:-4]
    with pytest.raises(SpecError) as err:
        assemble_weights(msgs)
    assert err.value.field == "weights.w.data"


# --------------------------------------------------------------------------- metrics, records


def _metrics(**kw) -> StepMetrics:
    base = dict(step=5, epoch=1, loss=0.5, accuracy=None, grad_norm=2.0, lr=0.1, batch=64, samples_per_s=1e4,
                step_s=0.0064, version=5, workers=[WorkerTiming(0, "ab12", 0.003, 0.004),
                                                   WorkerTiming(1, "cd34", 0.009, 0.01, straggler=True)])
    return StepMetrics(**{**base, **kw})


def test_metrics_round_trip():
    m = _metrics(val_loss=0.7, val_accuracy=0.9, failures=1)
    msg = metrics_to_pb(m)
    assert not msg.HasField("accuracy") and msg.HasField("val_loss") and msg.workers[1].straggler
    assert metrics_from_pb(pb.StepMetrics.FromString(msg.SerializeToString())) == m.as_dict()
    assert metrics_to_pb(m.as_dict()) == msg


def test_zero_accuracy_is_not_unset():
    assert metrics_to_pb(_metrics(accuracy=0.0)).HasField("accuracy")


def test_states_map_both_ways():
    for s in STATES:
        assert state_from_pb(state_to_pb(s)) == s
    assert state_to_pb("RUNNING") == pb.JOB_STATE_RUNNING


def test_record_to_job():
    spec = _validated(DAG)
    rec = JobRecord(id="abc", name="dag", spec=spec, state="RUNNING", created=1700000000.25, started=1700000001.5,
                    step=5, total_steps=100, last_metrics=_metrics().as_dict(), checkpoint_step=0)
    job = record_to_job(rec)
    assert (job.id, job.name, job.state, job.step, job.total_steps) == ("abc", "dag", pb.JOB_STATE_RUNNING, 5, 100)
    assert job.created.ToNanoseconds() == 1_700_000_000_250_000_000
    assert job.HasField("started") and not job.HasField("finished")
    assert job.HasField("checkpoint_step") and job.checkpoint_step == 0
    assert job.latest_metrics.step == 5 and job.spec.name == "dag"
    assert _validated(job_spec_to_dict(job.spec)) == spec
    queued = record_to_job(JobRecord(id="q", name="", spec=spec, created=1.0))
    assert not queued.HasField("latest_metrics") and not queued.HasField("checkpoint_step")


def test_dataset_info_to_pb():
    info = {"id": "ff" * 32, "format": "csv", "n": 150, "n_features": 4, "task": "classification",
            "n_classes": 3, "size_bytes": 4551, "created": 1700000000.0, "filename": "iris.csv",
            "n_outputs": 1, "options": {"label": "species"}}  # registry-only keys are ignored
    msg = dataset_info_to_pb(info)
    assert (msg.id, msg.n, msg.n_classes, msg.filename, msg.n_outputs) == ("ff" * 32, 150, 3, "iris.csv", 1)
    assert msg.created.seconds == 1700000000
