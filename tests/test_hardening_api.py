"""Issue 10 (items 3, 15, 16, 17) against a real server: bounded requests, precise status
codes, job ids on every event, the final state last, predictions that say which weights."""
from __future__ import annotations

import grpc
import numpy as np
import pytest
from dptrain.rpc import convert, pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
TINY = {
    "model": {"input": 64, "layers": ["linear 8", "relu", "linear 10"], "loss": "cross_entropy"},
    "dataset": {"name": "digits"}, "optimizer": {"name": "sgd", "lr": 0.1},
    "batch_size": 300, "chunk_size": 100, "steps": 6, "workers": 1, "cpus_per_worker": 0.25,
}
UNKNOWN_ID = "0123456789abcdef0123"


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def job_count(client) -> int:
    return len(client.stub.ListJobs(pb.ListJobsRequest(page_size=1000)).jobs)


# --- item 3: every string and repeated field is bounded, and nothing over is stored -------
def test_a_huge_name_is_refused_and_nothing_is_stored(client):
    before = job_count(client)
    spec = convert.dict_to_job_spec(TINY, name="n" * (40 << 20))
    e = rpc_error(lambda: client.stub.SubmitJob(spec, timeout=60))
    assert e.code() == INVALID and e.details().startswith("job.name:") and len(e.details()) < 200
    assert job_count(client) == before  # and ListJobs still answers


@pytest.mark.parametrize("mutate, field", [
    (lambda s: setattr(s, "request_id", "x" * 129), "job.request_id"),
    (lambda s: setattr(s, "request_id", "spaces are not allowed"), "job.request_id"),
    (lambda s: s.model.layers.add(op="o" * 100_000), "model.layers[3].op"),
    (lambda s: s.model.layers[0].attrs["k" * 1000].CopyFrom(pb.AttrValue(integer=1)), "model.layers[0].attrs"),
    (lambda s: s.model.layers[0].attrs["units"].CopyFrom(pb.AttrValue(text="u" * 100_000)),
     "model.layers[0].attrs.units"),
    (lambda s: [s.model.layers.add(op="relu") for _ in range(600)], "model.layers"),
    (lambda s: [s.model.layers[1].attrs[f"a{i}"].CopyFrom(pb.AttrValue(flag=True)) for i in range(100)],
     "model.layers[1].attrs"),
    (lambda s: setattr(s.model, "loss", "l" * 100_000), "model.loss"),
    (lambda s: setattr(s.dataset, "name", "d" * 100_000), "dataset.name"),
    (lambda s: [s.dataset.params[f"p{i}"].CopyFrom(pb.AttrValue(integer=i)) for i in range(100)], "dataset.params"),
    (lambda s: s.dataset.params["n"].CopyFrom(pb.AttrValue(text="t" * 100_000)), "dataset.params.n"),
    (lambda s: setattr(s.optimizer, "name", "o" * 100_000), "optimizer.name"),
    (lambda s: setattr(s.optimizer.schedule, "name", "s" * 100_000), "optimizer.schedule.name"),
    (lambda s: setattr(s, "dtype", "f" * 100_000), "job.dtype"),
])
def test_oversized_spec_fields_name_the_field(client, mutate, field):
    spec = convert.dict_to_job_spec(TINY)
    mutate(spec)
    before = job_count(client)
    e = rpc_error(lambda: client.stub.SubmitJob(spec))
    assert e.code() == INVALID and e.details().startswith(f"{field}:"), e.details()
    assert len(e.details()) < 300  # never the client's string itself
    assert job_count(client) == before


def test_oversized_dag_fields_name_the_field(client):
    dag = {"input": 64, "loss": "cross_entropy", "nodes": [
        {"name": "h", "op": "linear", "inputs": ["x"], "units": 10}]}
    for node, field in [({"name": "n" * 5000}, "model.nodes[0].name"),
                        ({"inputs": ["x"] * 1000}, "model.nodes[0].inputs"),
                        ({"inputs": ["i" * 5000]}, "model.nodes[0].inputs[0]"),
                        ({"share": "s" * 5000}, "model.nodes[0].share")]:
        spec = convert.dict_to_job_spec({**TINY, "model": {**dag, "nodes": [{**dag["nodes"][0], **node}]}})
        e = rpc_error(lambda: client.stub.SubmitJob(spec))
        assert e.code() == INVALID and e.details().startswith(f"{field}:"), e.details()
    spec = convert.dict_to_job_spec({**TINY, "model": {**dag, "output": "o" * 5000}})
    assert rpc_error(lambda: client.stub.SubmitJob(spec)).details().startswith("model.output:")


def test_uploaded_dataset_ids_are_checked_by_shape(client):
    spec = convert.dict_to_job_spec({**TINY, "dataset": {"name": "npz", "params": {"path": "../" * 5000}}})
    e = rpc_error(lambda: client.stub.SubmitJob(spec))
    assert e.code() == INVALID and e.details().startswith("dataset.params.path:") and len(e.details()) < 300


@pytest.mark.parametrize("key, value", [
    ("workers", 1_000_000_000), ("cpus_per_worker", 1e308), ("worker_timeout_s", 5e-324),
    ("recovery_budget_s", 1e-300), ("seed", 2**63 - 1 + 0), ("batch_size", 2**40),
])
def test_run_time_failures_are_refused_at_submit(client, key, value):
    spec = {**TINY, key: value}
    if key == "seed":  # the largest seed is fine; the bound is int64's
        assert client.stub.SubmitJob(convert.dict_to_job_spec(spec)).spec.seed == value
        return
    e = rpc_error(lambda: client.stub.SubmitJob(convert.dict_to_job_spec(spec)))
    assert e.code() == INVALID and e.details().startswith(f"job.{key}:")


@pytest.mark.parametrize("optimizer, field", [
    ({"name": "adam", "momentum": 0.9}, "optimizer.momentum"),
    ({"name": "sgd", "beta1": 0.5}, "optimizer.beta1"),
    ({"name": "sgd", "schedule": {"name": "constant", "gamma": 0.5}}, "optimizer.schedule.gamma"),
    ({"name": "sgd", "schedule": {"name": "step", "min_lr": 0.01}}, "optimizer.schedule.min_lr"),
    ({"name": "rmsprop", "alpha": float("inf")}, "optimizer.alpha"),
])
def test_settings_that_do_nothing_or_cannot_work_are_refused(client, optimizer, field):
    e = rpc_error(lambda: client.stub.SubmitJob(convert.dict_to_job_spec({**TINY, "optimizer": optimizer})))
    assert e.code() == INVALID and e.details().startswith(f"{field}:")


# --- item 15: ListJobs arguments and job ids -----------------------------------------------
@pytest.mark.parametrize("request_, field", [
    (pb.ListJobsRequest(page_token="99999999999999999999"), "page_token"),
    (pb.ListJobsRequest(page_token="\u00b2"), "page_token"),  # str.isdigit() is True for it
    (pb.ListJobsRequest(page_token="12a"), "page_token"),
    (pb.ListJobsRequest(page_token="9" * 100_000), "page_token"),
    (pb.ListJobsRequest(states=[99]), "states[0]"),
    (pb.ListJobsRequest(states=[1, -5]), "states[1]"),
    (pb.ListJobsRequest(states=[1] * 1000), "states"),
    (pb.ListJobsRequest(page_size=-1), "page_size"),
])
def test_list_jobs_arguments_are_checked(client, request_, field):
    e = rpc_error(lambda: client.stub.ListJobs(request_))
    assert e.code() == INVALID and e.details().startswith(f"{field}:"), e.details()
    assert len(e.details()) < 300


def test_list_jobs_accepts_the_largest_token(client):
    assert list(client.stub.ListJobs(pb.ListJobsRequest(page_token=str(2**63 - 1))).jobs) == []


CALLS = {
    "GetJob": lambda c, i: c.stub.GetJob(pb.GetJobRequest(job_id=i)),
    "CancelJob": lambda c, i: c.stub.CancelJob(pb.CancelJobRequest(job_id=i)),
    "ResumeJob": lambda c, i: c.stub.ResumeJob(pb.ResumeJobRequest(job_id=i)),
    "WatchJob": lambda c, i: list(c.stub.WatchJob(pb.WatchJobRequest(job_id=i))),
    "StreamWeights": lambda c, i: list(c.stub.StreamWeights(pb.StreamWeightsRequest(job_id=i))),
    "GetWeights": lambda c, i: list(c.stub.GetWeights(pb.GetWeightsRequest(job_id=i))),
    "Predict": lambda c, i: c.stub.Predict(pb.PredictRequest(job_id=i)),
}


@pytest.mark.parametrize("method", sorted(CALLS))
def test_job_ids_unknown_or_malformed(client, method):
    e = rpc_error(lambda: CALLS[method](client, UNKNOWN_ID))
    assert e.code() == grpc.StatusCode.NOT_FOUND and e.details() == f"no job with id {UNKNOWN_ID!r}"
    for bad in ("nope", "X" * 20, "0" * 21, "j" * 1_000_000, ""):
        e = rpc_error(lambda: CALLS[method](client, bad))
        assert e.code() == INVALID and e.details().startswith("job_id:") and len(e.details()) < 200


def test_negative_steps_are_refused(client):
    e = rpc_error(lambda: list(client.stub.WatchJob(pb.WatchJobRequest(job_id=UNKNOWN_ID, from_step=-1))))
    assert e.code() == INVALID and "from_step" in e.details()
    e = rpc_error(lambda: list(client.stub.GetWeights(pb.GetWeightsRequest(job_id=UNKNOWN_ID, step=-1))))
    assert e.code() == INVALID and "step" in e.details()


# --- item 16: events carry the job id; the final state is last; predictions say their weights
def test_short_jobs_end_their_streams_with_the_final_state(client):
    """With max_batch 0, 7 of 10 jobs once sent their final state before their last metrics."""
    jobs = [client.stub.SubmitJob(convert.dict_to_job_spec(TINY)) for _ in range(8)]
    for job in jobs:
        for max_batch in (0, 4):
            events = list(client.stub.WatchJob(pb.WatchJobRequest(job_id=job.id, max_batch=max_batch)))
            kinds = [e.WhichOneof("event") for e in events]
            assert kinds[-1] == "state" and events[-1].state.state == pb.JOB_STATE_SUCCEEDED, (max_batch, kinds)
            steps = [m.step for e in events[:-1] if e.WhichOneof("event") == "metrics_batch"
                     for m in e.metrics_batch.steps] + \
                    [e.metrics.step for e in events[:-1] if e.WhichOneof("event") == "metrics"]
            assert sorted(steps) == list(range(1, 7)), (max_batch, kinds)
            assert all(e.job_id == job.id for e in events)


def test_predict_says_which_weights_answered(client):
    job = client.stub.SubmitJob(convert.dict_to_job_spec(TINY))
    list(client.stub.WatchJob(pb.WatchJobRequest(job_id=job.id)))
    X = convert.to_tensor("inputs", np.zeros((3, 64), np.float32))
    out = client.stub.Predict(pb.PredictRequest(job_id=job.id, inputs=X))
    assert (out.version, out.step) == (6, 6) and list(out.outputs.shape) == [3, 10]
    weights = list(client.stub.GetWeights(pb.GetWeightsRequest(job_id=job.id)))
    assert {w.job_id for w in weights} == {job.id}


@pytest.mark.parametrize("tensor, field", [
    (pb.Tensor(name="inputs", dtype="float32", shape=[1] * 33), "inputs.shape"),
    (pb.Tensor(name="n" * 100_000, dtype="float32", shape=[1, 64], data=b"\0" * 256), "inputs.name"),
    (pb.Tensor(name="inputs", dtype="d" * 100_000, shape=[1, 64]), "inputs.dtype"),
    (pb.Tensor(name="inputs", dtype="float32", shape=[2**40, 2**40], data=b""), "inputs"),
])
def test_predict_tensors_are_bounded(client, tensor, field):
    job = client.stub.SubmitJob(convert.dict_to_job_spec(TINY))
    e = rpc_error(lambda: client.stub.Predict(pb.PredictRequest(job_id=job.id, inputs=tensor)))
    assert e.code() in (INVALID, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert e.details().startswith(field) and len(e.details()) < 300, e.details()


def wait_state(client, job_id: str, states: set[int], timeout: float = 120.0) -> pb.Job:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.stub.GetJob(pb.GetJobRequest(job_id=job_id))
        if job.state in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {pb.JobState.Name(job.state)}")


def test_get_job_reports_the_ledger_and_workers_and_resume_continues(client):
    """GetJob's stats while a job runs (item 18's ledger, as the trainer reports it) and
    after it (as of its last checkpoint); a cancelled job resumes (ResumeJob); a finished
    one cannot be resumed."""
    import time

    job = client.stub.SubmitJob(convert.dict_to_job_spec({**TINY, "steps": 100_000, "checkpoint_every": 50}))
    deadline = time.monotonic() + 120
    while True:
        got = client.stub.GetJob(pb.GetJobRequest(job_id=job.id))
        if got.stats.epochs and got.stats.epochs[0].complete and got.stats.workers or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert got.state == pb.JOB_STATE_RUNNING and got.stats.failures == 0
    assert got.stats.epochs[0].epoch == 0 and got.stats.epochs[0].used_once == 1797
    assert all(e.duplicated == 0 for e in got.stats.epochs)
    assert all(e.complete for e in got.stats.epochs[:-1])  # the last may be in progress
    workers = [(w.worker, w.pid > 0, bool(w.node), bool(w.transport)) for w in got.stats.workers]
    assert workers == [(0, True, True, True)]
    listed = client.stub.ListJobs(pb.ListJobsRequest(states=[pb.JOB_STATE_RUNNING])).jobs
    assert [j.stats for j in listed if j.id == job.id] == [pb.JobStats()]  # listings stay small
    client.stub.CancelJob(pb.CancelJobRequest(job_id=job.id))
    cancelled = wait_state(client, job.id, {pb.JOB_STATE_CANCELLED})
    # not running: the ledger as of its last checkpoint, and no workers
    assert cancelled.stats.epochs and not cancelled.stats.workers
    assert cancelled.stats.epochs[0].used_once == 1797
    resumed = client.stub.ResumeJob(pb.ResumeJobRequest(job_id=job.id))
    assert resumed.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING)
    client.stub.CancelJob(pb.CancelJobRequest(job_id=job.id))
    wait_state(client, job.id, {pb.JOB_STATE_CANCELLED})
    done = client.stub.SubmitJob(convert.dict_to_job_spec(TINY))
    wait_state(client, done.id, {pb.JOB_STATE_SUCCEEDED})
    e = rpc_error(lambda: client.stub.ResumeJob(pb.ResumeJobRequest(job_id=done.id)))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
