"""Bad input gets a precise status code and a message naming the field; the server keeps serving."""
from __future__ import annotations

import grpc
import numpy as np
import pytest
from dptrain.client import Client
from dptrain.rpc import convert, pb

GOOD = {
    "model": {"input": 64, "layers": ["linear 16", "relu", "linear 10"], "loss": "cross_entropy"},
    "dataset": {"name": "digits"}, "optimizer": {"name": "sgd", "lr": 0.1}, "steps": 2,
    "cpus_per_worker": 0.25,
}
INVALID = grpc.StatusCode.INVALID_ARGUMENT
BAD_SPECS = [
    ({**GOOD, "model": {**GOOD["model"], "layers": ["linear 16", "swish"]}}, INVALID, "model.layers[1].op"),
    ({**GOOD, "model": {**GOOD["model"], "input": 10}}, INVALID, "model.input"),
    ({**GOOD, "model": {**GOOD["model"], "loss": "hinge"}}, INVALID, "model.loss"),
    ({**GOOD, "model": {"input": 64, "loss": "mse", "nodes": [
        {"name": "a", "op": "tanh", "inputs": ["b"]}, {"name": "b", "op": "tanh", "inputs": ["a"]}]}},
     INVALID, "model.nodes[0] (a).inputs"),
    ({**GOOD, "optimizer": {"name": "adam", "lr": -1.0}}, INVALID, "optimizer.lr"),
    ({**GOOD, "optimizer": {"name": "lion"}}, INVALID, "optimizer.name"),
    ({**GOOD, "dataset": {"name": "imagenet"}}, INVALID, "dataset.name"),
    ({**GOOD, "dataset": {"name": "npz", "params": {"path": "/etc/passwd"}}}, INVALID, "dataset.params.path"),
    ({**GOOD, "dataset": {"name": "teacher", "params": {"n": -3}}}, INVALID, "dataset.params.n"),
    ({**GOOD, "batch_size": 0}, INVALID, "job.batch_size"),
    ({**GOOD, "workers": 0}, INVALID, "job.workers"),
    ({**GOOD, "dtype": "float16"}, INVALID, "job.dtype"),
    ({**GOOD, "model": {**GOOD["model"], "layers": ["linear 100000"]}}, INVALID, "model.layers[0].units"),
    ({**GOOD, "model": {"input": 64, "layers": ["linear 8000", "relu", "linear 8000", "relu", "linear 10"],
                        "loss": "cross_entropy"}}, grpc.StatusCode.RESOURCE_EXHAUSTED, "parameters exceed"),
    ({**GOOD, "dataset": {"name": "teacher", "params": {"n": 5_000_000, "d": 64}}},
     grpc.StatusCode.RESOURCE_EXHAUSTED, "dataset.params.n"),
]


@pytest.mark.parametrize("spec, code, words", BAD_SPECS, ids=[w for _, _, w in BAD_SPECS])
def test_invalid_job_specs(client, spec, code, words):
    with pytest.raises(grpc.RpcError) as info:
        client.submit(spec)
    assert info.value.code() == code
    assert words in info.value.details()
    assert client.healthy() and client.list() is not None  # still serving


def test_spec_missing_parts_is_invalid(client):
    with pytest.raises(grpc.RpcError) as info:
        client.submit(pb.JobSpec(name="empty"))
    assert info.value.code() == INVALID and "model" in info.value.details()


UNKNOWN = "0123456789abcdef0123"  # well-formed, never issued


@pytest.mark.parametrize("call, code", [
    (lambda c: c.get(UNKNOWN), grpc.StatusCode.NOT_FOUND),
    (lambda c: c.cancel(UNKNOWN), grpc.StatusCode.NOT_FOUND),
    (lambda c: c.weights(UNKNOWN), grpc.StatusCode.NOT_FOUND),
    (lambda c: list(c.watch(UNKNOWN)), grpc.StatusCode.NOT_FOUND),
    (lambda c: c.stub.GetJob(pb.GetJobRequest(job_id="nope")), INVALID),  # cannot be a job id
    (lambda c: c.stub.ListJobs(pb.ListJobsRequest(page_token="garbage")), INVALID),
    (lambda c: c.stub.ListJobs(pb.ListJobsRequest(page_size=-1)), INVALID),
    (lambda c: c.stub.Predict(pb.PredictRequest(job_id=UNKNOWN)), grpc.StatusCode.NOT_FOUND),
])
def test_malformed_requests(client, call, code):
    with pytest.raises(grpc.RpcError) as info:
        call(client)
    assert info.value.code() == code
    assert client.healthy()


@pytest.mark.parametrize("max_batch", [-1, 4097])
def test_watch_batch_size_is_checked(client, max_batch):
    with pytest.raises(grpc.RpcError) as info:
        list(client.stub.WatchJob(pb.WatchJobRequest(job_id=UNKNOWN, max_batch=max_batch)))
    assert info.value.code() == INVALID and "max_batch" in info.value.details()
    assert client.healthy()


def test_predict_checks_the_input_tensor(client):
    job = client.submit(GOOD)
    client.wait(job.id)
    bad = pb.Tensor(name="inputs", dtype="float32", shape=[2, 64], data=b"\0" * 12)
    for tensor, words in [(bad, "inputs"), (convert.to_tensor("inputs", np.zeros((2, 3), np.float32)), "(n, 64)"),
                          (pb.Tensor(name="inputs", dtype="object", shape=[1], data=b"x"), "dtype")]:
        with pytest.raises(grpc.RpcError) as info:
            client.stub.Predict(pb.PredictRequest(job_id=job.id, inputs=tensor))
        assert info.value.code() == INVALID and words in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        client.weights(job.id, step=999)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_uploads_are_validated_and_never_unpickled(client, tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "bad.npz", X=np.array([object()], dtype=object), y=np.zeros(1))
    with pytest.raises(grpc.RpcError) as info:
        client.upload_dataset(tmp_path / "bad.npz")
    assert info.value.code() == INVALID and "dataset.params.path" in info.value.details()
    (tmp_path / "bad.csv").write_text("a,b,label\n1,2,0\n3,oops,1\n")
    with pytest.raises(grpc.RpcError) as info:
        client.upload_dataset(tmp_path / "bad.csv")
    assert info.value.code() == INVALID and "line 3" in info.value.details()

    def header_last():
        yield pb.DatasetChunk(data=b"abc")

    with pytest.raises(grpc.RpcError) as info:
        client.stub.UploadDataset(header_last())
    assert info.value.code() == INVALID and "header" in info.value.details()
    assert client.healthy()


def test_token_required_when_configured(ray_session, tmp_path):
    from dptrain.server import ServerConfig, serve

    srv = serve(ServerConfig(port=0, state_dir=tmp_path, token="s3cret"))
    try:
        for token in (None, "wrong"):
            with Client(srv.address, token=token) as c:
                for call in (lambda: c.list(), lambda: list(c.watch("x")), lambda: c.submit(GOOD)):
                    with pytest.raises(grpc.RpcError) as info:
                        call()
                    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert c.healthy()  # the health service stays open for probes
        with Client(srv.address, token="s3cret") as c:
            assert c.list() == []
    finally:
        srv.stop()


def test_a_token_is_generated_off_loopback():
    from dptrain.server import ServerConfig

    cfg = ServerConfig(host="0.0.0.0")
    assert cfg.ensure_token() and len(cfg.token) >= 24
    assert not ServerConfig(host="127.0.0.1").ensure_token()
