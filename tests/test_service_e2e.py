"""The service end to end: real gRPC on loopback, real Ray, real SQLite."""
from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from dptrain.core.config import TrainConfig
from dptrain.core.trainer import Trainer
from dptrain.rpc import convert, pb

JOB = {
    "model": {"input": 64, "layers": ["linear 32", "tanh", "linear 10"], "loss": "cross_entropy"},
    "dataset": {"name": "digits", "val_fraction": 0.2},
    "optimizer": {"name": "adam", "lr": 0.003},
    "batch_size": 100, "chunk_size": 16, "epochs": 2, "workers": 2, "cpus_per_worker": 0.25,
    "checkpoint_every": 10,
}


def library_weights(job: dict) -> dict[str, np.ndarray]:
    t = Trainer(TrainConfig.from_dict(job), backend="local")
    for _ in t.run():
        pass
    return {k: v.copy() for k, v in t.model.views(t.theta).items()}


def assert_same_bits(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k


def state(job) -> str:
    return convert.state_from_pb(job.state)


def test_submit_watch_fetch_equals_the_library_bitwise(client):
    job = client.submit(JOB, name="e2e")
    assert state(job) in ("QUEUED", "RUNNING") and job.name == "e2e"
    events = list(client.watch(job.id))
    steps = [e.metrics.step for e in events if e.WhichOneof("event") == "metrics"]
    states = [convert.state_from_pb(e.state.state) for e in events if e.WhichOneof("event") == "state"]
    assert steps == list(range(1, 31)) and states[-1] == "SUCCEEDED"
    final = client.get(job.id)
    assert (state(final), final.step, final.total_steps) == ("SUCCEEDED", 30, 30)
    version, step, weights = client.weights(job.id)
    assert (version, step) == (30, 30)
    assert_same_bits(weights, library_weights(JOB))
    _, _, at_10 = client.weights(job.id, step=10)  # a checkpointed version
    assert at_10.keys() == weights.keys()
    X = np.random.default_rng(0).random((5, 64)).astype(np.float32)
    assert client.predict(job.id, X).shape == (5, 10)


def test_watch_resumes_from_a_step_without_gaps(client):
    job = client.submit({**JOB, "epochs": 1})
    client.wait(job.id)
    again = [e.metrics.step for e in client.watch(job.id, from_step=7) if e.WhichOneof("event") == "metrics"]
    assert again == list(range(7, 16))


def test_batched_watch_carries_every_step_once_in_order(client):
    """Live: steps arrive as `metrics_batch` events, none missing, none twice, same values
    as the one-event-per-step stream (replayed from the record afterwards)."""
    job = client.submit({**JOB, "epochs": 4})
    request = pb.WatchJobRequest(job_id=job.id, max_batch=8)
    events = list(client.stub.WatchJob(request, metadata=client.metadata))
    kinds = {e.WhichOneof("event") for e in events}
    assert kinds == {"state", "metrics_batch"}
    batches = [e.metrics_batch.steps for e in events if e.WhichOneof("event") == "metrics_batch"]
    assert all(1 <= len(b) <= 8 for b in batches)
    live = [m for b in batches for m in b]
    assert [m.step for m in live] == list(range(1, 61))
    single = [e.metrics for e in client.watch(job.id, batch=0) if e.WhichOneof("event") == "metrics"]
    assert single == live
    tail = client.stub.WatchJob(pb.WatchJobRequest(job_id=job.id, from_step=55, max_batch=4), metadata=client.metadata)
    assert [[m.step for m in e.metrics_batch.steps] for e in tail if e.WhichOneof("event") == "metrics_batch"] \
        == [[55, 56, 57, 58], [59, 60]]


def test_two_jobs_run_at_once_and_the_third_queues_then_cancel(client):
    long = {**JOB, "epochs": 200, "checkpoint_every": 0}
    a, b, c = (client.submit(long, name=n) for n in "abc")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and [state(client.get(j.id)) for j in (a, b)] != ["RUNNING"] * 2:
        time.sleep(0.1)
    assert [state(client.get(j.id)) for j in (a, b, c)] == ["RUNNING", "RUNNING", "QUEUED"]
    assert state(client.cancel(c.id)) == "CANCELLED"  # queued: cancelled at once
    for j in (a, b):
        client.cancel(j.id)
    for j in (a, b):
        assert state(client.wait(j.id)) == "CANCELLED"
    queued = client.list(["QUEUED"])
    assert c.id not in [j.id for j in queued]
    with pytest.raises(grpc.RpcError) as info:
        client.cancel(a.id)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_three_weight_subscribers_same_versions_and_a_slow_one_does_not_slow_training(client):
    job = client.submit({**JOB, "epochs": 3, "checkpoint_every": 0, "val_every": 0})
    received: dict[str, list[tuple[int, int]]] = {"a": [], "b": [], "slow": []}
    last: dict[str, dict] = {}

    done = threading.Event()

    def read(name: str, delay: float) -> None:
        for version, step, arrays in client.stream_weights(job.id, every_n_steps=1):
            received[name].append((version, step))
            last[name] = arrays
            if delay and done.is_set():
                return
            time.sleep(delay)

    threads = [threading.Thread(target=read, args=(n, d)) for n, d in (("a", 0), ("b", 0), ("slow", 0.5))]
    for t in threads:
        t.start()
    final = client.wait(job.id)
    slow_at_the_end = len(received["slow"])
    done.set()
    for t in threads:
        t.join(timeout=60)
    assert received["a"] == received["b"] and received["a"]
    versions = [v for v, _ in received["a"]]
    assert versions == sorted(set(versions)) and versions[-1] == 45 == final.step
    assert slow_at_the_end < 20  # training finished long before the slow reader caught up
    slow = [v for v, _ in received["slow"]]
    assert slow == sorted(set(slow)) and set(slow) <= set(versions)
    _, _, fetched = client.weights(job.id)
    assert_same_bits(last["a"], fetched)


def test_large_model_weights_cross_the_4mib_limit_in_chunks(client):
    big = {**JOB, "model": {"input": 64, "layers": ["linear 2048", "relu", "linear 1024", "relu", "linear 10"],
                            "loss": "cross_entropy"}, "steps": 2, "epochs": None, "checkpoint_every": 0}
    job = client.submit(big)
    client.wait(job.id)
    _, _, weights = client.weights(job.id)
    assert sum(a.nbytes for a in weights.values()) > 8 << 20
    assert_same_bits(weights, library_weights(big))


def test_datasets_upload_list_and_train_on_it(client, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    info = client.upload_dataset(tmp_path / "d.npz")
    assert (info.n, info.n_features, info.task, info.n_classes) == (300, 5, "classification", 2)
    assert info.id in [d.id for d in client.datasets()]
    assert client.upload_dataset(tmp_path / "d.npz").id == info.id  # content-addressed
    spec = {**JOB, "model": {"input": 5, "layers": ["linear 8", "relu", "linear 2"], "loss": "cross_entropy"},
            "dataset": {"name": "npz", "params": {"path": info.id}}, "epochs": 2}
    job = client.submit(spec)
    assert state(client.wait(job.id)) == "SUCCEEDED"
