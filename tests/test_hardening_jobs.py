"""Jobs under pressure: admission by CPUs, cancel in every state, bounded streams, resume,
idempotent submit. A real server on loopback with real Ray (2 CPUs) and SQLite."""
from __future__ import annotations

import threading
import time

import grpc
import pytest
from dptrain.client import Client
from dptrain.rpc import convert, pb
from dptrain.server.streams import StreamLimits
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .test_service_e2e import JOB, assert_same_bits, library_weights, state

SMALL = {**JOB, "epochs": 1}
SLOW = {**JOB, "epochs": 400}  # thousands of steps: runs until cancelled


@pytest.fixture(scope="module")
def srv(ray_session, tmp_path_factory):
    from dptrain.server import ServerConfig, serve

    cfg = ServerConfig(port=0, state_dir=tmp_path_factory.mktemp("state"), max_running_jobs=5,
                       streams=StreamLimits(total=6, per_client=4, unary_threads=8))
    server = serve(cfg)
    yield server
    server.stop()


@pytest.fixture
def c(srv):
    with Client(srv.address) as client:
        yield client


def _code(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


def _wait_state(c: Client, job_id: str, wanted: set[str], timeout: float = 60.0) -> pb.Job:
    deadline = time.monotonic() + timeout
    while True:
        job = c.get(job_id)
        if state(job) in wanted:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {state(job)}"
        time.sleep(0.05)


# --- admission -------------------------------------------------------------------------
def test_a_job_that_can_never_fit_the_cluster_is_refused_naming_the_field(c):
    code, msg = _code(lambda: c.submit({**SMALL, "workers": 16, "cpus_per_worker": 1}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert msg.startswith("job.workers") and "16 CPUs" in msg and "2 CPUs" in msg
    code, msg = _code(lambda: c.submit({**SMALL, "workers": 1, "cpus_per_worker": 3}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("job.cpus_per_worker")


def test_jobs_that_fit_only_one_at_a_time_queue_instead_of_failing(c):
    """Five jobs of 2 CPUs each on 2 CPUs, with up to 5 allowed to run: they run one after
    another (all of a job's workers or none) and every one succeeds."""
    spec = {**SMALL, "workers": 2, "cpus_per_worker": 1.0}
    jobs = [c.submit(spec, name=f"gang{i}").id for i in range(5)]
    running_at_once = 0
    deadline = time.monotonic() + 300
    while True:
        states = [state(c.get(j)) for j in jobs]
        running_at_once = max(running_at_once, states.count("RUNNING"))
        if all(s in ("SUCCEEDED", "FAILED", "CANCELLED") for s in states):
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert states == ["SUCCEEDED"] * 5, [c.get(j).error for j in jobs]
    assert running_at_once == 1


# --- cancel ------------------------------------------------------------------------------
def test_cancel_a_running_job_ends_it_within_two_seconds(c):
    job = c.submit(SLOW)
    _wait_state(c, job.id, {"RUNNING"})
    for event in c.watch(job.id):  # until it is really stepping
        if event.WhichOneof("event") == "metrics":
            break
    t0 = time.monotonic()
    c.cancel(job.id)
    _wait_state(c, job.id, {"CANCELLED"}, timeout=10)
    assert time.monotonic() - t0 < 2.5


def test_cancel_while_workers_start_ends_it_at_once(c):
    job = c.submit({**SLOW, "worker_timeout_s": 120})
    _wait_state(c, job.id, {"RUNNING"}, timeout=30)
    t0 = time.monotonic()
    c.cancel(job.id)
    _wait_state(c, job.id, {"CANCELLED"}, timeout=10)
    assert time.monotonic() - t0 < 2.5


# --- streams -----------------------------------------------------------------------------
def test_open_streams_are_bounded_and_unary_calls_and_health_still_get_through(srv, c):
    job = c.submit(SLOW)
    opened = []
    try:
        for _ in range(4):  # the per-client limit of this server
            call = c.stub.WatchJob(pb.WatchJobRequest(job_id=job.id), metadata=c.metadata)
            next(call)  # the stream is open
            opened.append(call)
        extra = c.stub.WatchJob(pb.WatchJobRequest(job_id=job.id), metadata=c.metadata)
        with pytest.raises(grpc.RpcError) as e:
            next(extra)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "per client" in e.value.details()
        for _ in range(20):  # unary calls and health are never refused for want of threads
            assert c.get(job.id).id == job.id
        health = health_pb2_grpc.HealthStub(c.channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
    finally:
        for call in opened:
            call.cancel()
        c.cancel(job.id)
    deadline = time.monotonic() + 10
    while srv.streams.open_streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.streams.open_streams == 0  # closed streams give their places back


def test_stream_weights_on_a_queued_job_ends_when_it_is_cancelled(c):
    blocker = c.submit({**SLOW, "workers": 2, "cpus_per_worker": 1.0})  # holds every CPU
    queued = c.submit(SMALL)
    try:
        _wait_state(c, blocker.id, {"RUNNING"})
        assert state(c.get(queued.id)) == "QUEUED"
        ended = threading.Event()

        def read() -> None:
            for _ in c.stream_weights(queued.id):
                pass
            ended.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        time.sleep(0.5)
        c.cancel(queued.id)
        assert ended.wait(5), "StreamWeights did not end with the job"
    finally:
        c.cancel(blocker.id)
        _wait_state(c, blocker.id, {"CANCELLED"})


def test_a_weights_feed_asked_for_after_the_cancel_is_already_closed(srv, c):
    """The race the fuzz found: StreamWeights reads the job as QUEUED, the cancel closes and
    drops its feed, then the stream asks for the feed. It must get a closed one, not a new
    open feed that waits for weights until the client's deadline."""
    blocker = c.submit({**SLOW, "workers": 2, "cpus_per_worker": 1.0})
    queued = c.submit(SMALL)
    try:
        _wait_state(c, blocker.id, {"RUNNING"})
        c.cancel(queued.id)
        assert state(c.get(queued.id)) == "CANCELLED"
        feed = srv.manager.weights_feed(queued.id)  # what the stream's handler asks for next
        assert feed.closed
        assert feed.next_after(-1, timeout=0.1) is None
        assert queued.id not in srv.manager.weights  # nothing kept for an ended job
    finally:
        c.cancel(blocker.id)
        _wait_state(c, blocker.id, {"CANCELLED"})


# --- resume ------------------------------------------------------------------------------
def test_resume_a_cancelled_job_ends_bitwise_equal_to_an_uninterrupted_run(c):
    spec = {**JOB, "epochs": 6, "checkpoint_every": 7}
    job = c.submit(spec)
    for event in c.watch(job.id):
        if event.WhichOneof("event") == "metrics" and event.metrics.step >= 20:
            break
    c.cancel(job.id)
    cancelled = _wait_state(c, job.id, {"CANCELLED", "SUCCEEDED"})
    assert state(cancelled) == "CANCELLED"
    code, _ = _code(lambda: c.get(job.id) and c.stub.CancelJob(pb.CancelJobRequest(job_id=job.id)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    resumed = c.resume(job.id)
    assert state(resumed) == "QUEUED"
    final = c.wait(job.id)
    assert state(final) == "SUCCEEDED" and final.step == final.total_steps == 6 * 15
    _, _, weights = c.weights(job.id)
    assert_same_bits(weights, library_weights(spec))
    code, msg = _code(lambda: c.resume(job.id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "SUCCEEDED" in msg


# --- idempotent submit ---------------------------------------------------------------
def test_submit_with_the_same_request_id_creates_one_job(c):
    a = c.submit(SMALL, request_id="retry-7f3a")
    b = c.submit(SMALL, request_id="retry-7f3a")
    assert a.id == b.id
    assert sum(j.id == a.id for j in c.list()) == 1
    code, msg = _code(lambda: c.submit({**SMALL, "seed": 5}, request_id="retry-7f3a"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("request_id")
    assert convert.state_from_pb(c.wait(a.id).state) == "SUCCEEDED"


# --- the ledger through the API ---------------------------------------------------
def test_get_job_shows_the_epoch_ledger_live_and_after_the_job(c):
    job = c.submit({**JOB, "epochs": 40, "checkpoint_every": 4})
    for event in c.watch(job.id):
        if event.WhichOneof("event") == "metrics" and event.metrics.step >= 18:  # 15 steps an epoch
            break
    deadline = time.monotonic() + 20
    while (live := c.get(job.id)).stats.epochs[-1].complete:  # at an epoch's end: look again mid-epoch
        assert time.monotonic() < deadline and state(live) == "RUNNING", "no epoch in progress seen"
        time.sleep(0.01)
    assert state(live) == "RUNNING"
    assert [e.epoch for e in live.stats.epochs][:2] == [0, 1] and live.stats.epochs[0].complete
    assert all(e.complete for e in live.stats.epochs[:-1])
    assert not live.stats.epochs[-1].complete and live.stats.epochs[-1].used_once > 0
    assert len(live.stats.workers) == 2 and all(w.pid for w in live.stats.workers)
    final = c.wait(job.id).stats
    assert [(e.epoch, e.used_once, e.duplicated, e.unused, e.complete) for e in final.epochs] == \
        [(i, 1438, 0, 0, True) for i in range(40)]
    assert final.failures == 0 and not final.workers


def test_stream_weights_on_a_finished_job_sends_its_final_weights_then_ends(c):
    job = c.submit(SMALL)
    c.wait(job.id)
    versions = list(c.stream_weights(job.id))
    assert len(versions) == 1
    version, step, arrays = versions[0]
    v2, s2, final = c.weights(job.id)
    assert (version, step) == (v2, s2)
    assert all(arrays[k].tobytes() == final[k].tobytes() for k in final)
