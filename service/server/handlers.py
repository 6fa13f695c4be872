"""Plain functions behind each RPC: a request in, a response (or a stream) out.

They raise the service's own exceptions; the servicer maps those to status codes.
Nothing here touches gRPC, so each can be called and tested directly. Every request is
checked against its bounds (`dptrain.rpc.bounds`) first, before the store is asked.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import numpy as np
from dptrain.engine import Model, SpecError
from dptrain.rpc import bounds, convert, pb
from dptrain.store.base import TERMINAL, JobState
from dptrain.store.checkpoints import CheckpointNotFound

from .datasets import TooLarge
from .manager import JobManager

MAX_WATCH_BATCH = 4096  # steps per `metrics_batch` event, at most


class NotReady(Exception):
    """The job is not in a state where this request makes sense (FAILED_PRECONDITION)."""


def submit_job(m: JobManager, req: pb.JobSpec) -> pb.Job:
    bounds.check_job_spec(req)
    rec = m.submit(req.name, convert.job_spec_to_dict(req), request_id=req.request_id or None)
    return convert.record_to_job(rec)


def get_job(m: JobManager, req: pb.GetJobRequest) -> pb.Job:
    """The job with its execution statistics (`Job.stats`): live while it runs, else as of
    its last checkpoint."""
    job = convert.record_to_job(m.record(bounds.check_job_id(req.job_id)))
    stats = m.stats(req.job_id)
    if stats:
        job.stats.CopyFrom(convert.stats_to_pb(stats))
    return job


def list_jobs(m: JobManager, req: pb.ListJobsRequest) -> pb.ListJobsResponse:
    bounds.check_states(req.states, pb.JobState.values())
    states = [convert.state_from_pb(s) for s in req.states if s != pb.JOB_STATE_UNSPECIFIED]
    if req.page_size < 0:
        raise SpecError("page_size", f"must be >= 0, got {req.page_size}")
    records, token = m.store.list(states or None, req.page_size or 50, bounds.page_token(req.page_token))
    return pb.ListJobsResponse(jobs=[convert.record_to_job(r) for r in records], next_page_token=token)


def cancel_job(m: JobManager, req: pb.CancelJobRequest) -> pb.Job:
    """Asks the job to stop; a running job is returned still RUNNING (see the proto)."""
    rec = m.record(bounds.check_job_id(req.job_id))
    if rec.state in TERMINAL:
        raise NotReady(f"job {req.job_id} is already {rec.state}")
    return convert.record_to_job(m.cancel(req.job_id))


def resume_job(m: JobManager, req: pb.ResumeJobRequest) -> pb.Job:
    """Requeues a FAILED or CANCELLED job from its newest intact checkpoint."""
    return convert.record_to_job(m.resume(bounds.check_job_id(req.job_id)))


def watch_job(m: JobManager, req: pb.WatchJobRequest, active: Callable[[], bool],
              batch_s: float = 0.05) -> Iterator[pb.JobEvent]:
    """The job's state, then every step's metrics from `from_step` on, live until it ends.

    A final state is always the last event: every step's metrics come before it (a job
    that has already finished sends its recorded metrics, then its final state). A
    watcher wakes at most every `batch_s` and sends what accumulated meanwhile, so many
    open streams on a fast job cost the server a bounded number of wake-ups; with
    `max_batch` > 1 it also sends it in a bounded number of messages (`metrics_batch`).
    """
    job_id = bounds.check_job_id(req.job_id)
    if not 0 <= req.max_batch <= MAX_WATCH_BATCH:
        raise SpecError("max_batch", f"must be in [0, {MAX_WATCH_BATCH}], got {req.max_batch}")
    if req.from_step < 0:
        raise SpecError("from_step", f"must be >= 0, got {req.from_step}")
    feed = m.feed(job_id)
    next_step, seen = req.from_step, -1
    while active():
        changes, state, message, new = feed.snapshot(next_step)
        final = state in TERMINAL  # then every step's metrics are in `new` already
        if changes != seen and not final:
            yield _state_event(job_id, state, message)
        if new:
            yield from _metrics_events(job_id, new, req.max_batch)
            next_step = new[-1][0] + 1
        if final:
            yield _state_event(job_id, state, message)
            return
        seen = changes
        feed.wait(next_step - 1, seen, timeout=0.5)
        time.sleep(batch_s)


def _state_event(job_id: str, state: str, message: str) -> pb.JobEvent:
    change = pb.StateChange(state=convert.state_to_pb(state), message=message)
    if state == JobState.FAILED:
        change.error = message
    return pb.JobEvent(job_id=job_id, state=change)


def _metrics_events(job_id: str, new: list[tuple[int, pb.JobEvent]], max_batch: int) -> Iterator[pb.JobEvent]:
    """One event per step (the feed's own, shared by every watcher; they carry the job id),
    or `metrics_batch` events of up to `max_batch` steps each."""
    if max_batch <= 1:
        for _, event in new:
            yield event
        return
    for i in range(0, len(new), max_batch):
        steps = [event.metrics for _, event in new[i:i + max_batch]]
        yield pb.JobEvent(job_id=job_id, metrics_batch=pb.MetricsBatch(steps=steps))


def stream_weights(m: JobManager, req: pb.StreamWeightsRequest, active: Callable[[], bool],
                   max_bytes: int) -> Iterator[pb.WeightsUpdate]:
    """Every `every_n_steps`-th version of the weights, as the job produces them."""
    job_id = bounds.check_job_id(req.job_id)
    if req.every_n_steps < 0:
        raise SpecError("every_n_steps", f"must be >= 0, got {req.every_n_steps}")
    rec = m.record(job_id)
    if rec.state in TERMINAL:  # nothing new will come: its last weights, then the end
        version, step, theta, model = _weights(m, job_id, None)
        yield from convert.weights_messages(version, step, model.views(theta), max_bytes, job_id)
        return
    every = req.every_n_steps or 1
    feed = m.weights_feed(job_id)
    model = _model(rec.spec)
    feed.subscribe(+1)
    try:
        seen = -1
        while active() and not feed.closed:
            v = feed.next_after(seen, timeout=0.5)
            if v is None:
                continue
            seen = v.version
            if v.step % every == 0:
                yield from convert.weights_messages(v.version, v.step, model.views(v.theta), max_bytes, job_id)
    finally:
        feed.subscribe(-1)


def get_weights(m: JobManager, req: pb.GetWeightsRequest, max_bytes: int) -> Iterator[pb.WeightsUpdate]:
    job_id = bounds.check_job_id(req.job_id)
    step = req.step if req.HasField("step") else None
    if step is not None and step < 0:
        raise SpecError("step", f"must be >= 0, got {step}")
    version, step, theta, model = _weights(m, job_id, step)
    yield from convert.weights_messages(version, step, model.views(theta), max_bytes, job_id)


def predict(m: JobManager, req: pb.PredictRequest, max_rows: int) -> pb.PredictResponse:
    """The model's outputs for `inputs`, with the weights version and step that made them."""
    job_id = bounds.check_job_id(req.job_id)
    m.record(job_id)  # an unknown job is NOT_FOUND before any complaint about inputs
    bounds.check_tensor(req.inputs, "inputs")
    if len(req.inputs.shape) >= 2 and req.inputs.shape[0] > max_rows:
        raise TooLarge(f"inputs: {req.inputs.shape[0]} rows exceed the limit of {max_rows}")
    X = convert.from_tensor(req.inputs, "inputs")
    version, step, theta, model = _weights(m, job_id, None)
    X = model.check_input(X, "inputs")
    return pb.PredictResponse(outputs=convert.to_tensor("outputs", model.predict(theta, X)),
                              version=version, step=step)


METRICS_PAGE = (1000, 10_000)  # default and largest page of GetMetrics and GetJobLog


def _page(job_id: str, start_field: str, start: int, page_size: int) -> tuple[str, int]:
    """A paged request's job id and page size, checked: (job_id, rows per page)."""
    job_id = bounds.check_job_id(job_id)
    if start < 0:
        raise SpecError(start_field, f"must be >= 0, got {start}")
    if not 0 <= page_size <= METRICS_PAGE[1]:
        raise SpecError("page_size", f"must be in [0, {METRICS_PAGE[1]}], got {page_size}")
    return job_id, page_size or METRICS_PAGE[0]


def get_metrics(m: JobManager, req: pb.GetMetricsRequest) -> pb.GetMetricsResponse:
    """One page of the stored history (what checkpoints and the 1 s flush have written)."""
    job_id, size = _page(req.job_id, "from_step", req.from_step, req.page_size)
    rows = m.store.metrics(job_id, req.from_step, limit=size + 1)
    resp = pb.GetMetricsResponse(metrics=[convert.metrics_to_pb(d) for _, d in rows[:size]])
    if len(rows) > size:
        resp.next_step = rows[size][0]
    return resp


def get_job_log(m: JobManager, req: pb.GetJobLogRequest) -> pb.GetJobLogResponse:
    """One page of the job's log after line `after`."""
    job_id, size = _page(req.job_id, "after", req.after, req.page_size)
    resp = pb.GetJobLogResponse()
    for e in m.store.events(job_id, req.after, limit=size):
        line = resp.lines.add(seq=e["seq"], kind=e["kind"], message=e["message"])
        line.time.FromNanoseconds(int(e["time"] * 1e9))
    return resp


def input_gradient(m: JobManager, req: pb.InputGradientRequest, max_rows: int) -> pb.InputGradientResponse:
    """d(unit)/d(inputs) per example: backpropagation to the data, with the latest weights."""
    job_id = bounds.check_job_id(req.job_id)
    m.record(job_id)
    bounds.check_tensor(req.inputs, "inputs")
    bounds.check_text(req.node, "node", bounds.WORD_CHARS)
    if len(req.inputs.shape) >= 2 and req.inputs.shape[0] > max_rows:
        raise TooLarge(f"inputs: {req.inputs.shape[0]} rows exceed the limit of {max_rows}")
    X = convert.from_tensor(req.inputs, "inputs")
    version, step, theta, model = _weights(m, job_id, None)
    if model.spec.input.dtype == "int":
        raise NotReady(f"job {job_id}'s model reads token ids, which have no gradient")
    unit = req.unit if req.HasField("unit") else None
    g, out = model.input_gradient(theta, X, req.node or None, unit)
    return pb.InputGradientResponse(gradients=convert.to_tensor("gradients", g),
                                    outputs=convert.to_tensor("outputs", out), version=version, step=step)


def upload_dataset(m: JobManager, chunks: Iterator[pb.DatasetChunk]) -> pb.DatasetInfo:
    """The header, then data, then the end marker; the registry checks the counts and keeps
    nothing of a stream that breaks off."""
    from .datasets import UploadEnd

    first = next(chunks, None)
    if first is None or first.WhichOneof("chunk") != "header":
        raise SpecError("header", "the first message of an upload must be the header")
    h = first.header
    header: dict[str, Any] = {"filename": h.filename, "format": h.format, "size_bytes": h.size_bytes,
                              "task": h.task, "delimiter": h.delimiter}
    if h.HasField("header"):
        header["header"] = h.header
    label = h.WhichOneof("label")
    if label:
        header["label"] = getattr(h, label)

    def parts() -> Iterator[bytes | UploadEnd]:
        for c in chunks:
            kind = c.WhichOneof("chunk")
            if kind == "data":
                yield c.data
            elif kind == "end":
                yield UploadEnd(c.end.size_bytes)
            elif kind == "header":
                raise SpecError("chunk", "only the first message may be a header")
            else:
                raise SpecError("chunk", "each message must set one of header, data or end")

    return convert.dataset_info_to_pb(m.datasets.upload(header, parts()))


def list_datasets(m: JobManager, req: pb.ListDatasetsRequest) -> pb.ListDatasetsResponse:
    return pb.ListDatasetsResponse(datasets=[convert.dataset_info_to_pb(d) for d in m.store.list_datasets()])


# --- helpers ---------------------------------------------------------------------------
def _model(spec: dict[str, Any]) -> Model:
    return Model(spec["model"], dtype=spec.get("dtype", "float32"))


def _weights(m: JobManager, job_id: str, step: int | None) -> tuple[int, int, np.ndarray, Model]:
    """(version, step, theta, model): a checkpoint if `step` is given, else the latest."""
    rec = m.record(job_id)
    model = _model(rec.spec)
    if step is not None:
        try:
            s = m.checkpoints.load(job_id, step)
        except CheckpointNotFound:
            raise CheckpointNotFound(f"job {job_id} has no checkpoint at step {step}; "
                                     f"it has {m.checkpoints.steps(job_id)}") from None
        return s.version, s.step, s.theta, model
    if rec.state == JobState.RUNNING and job_id in m.weights:
        v = m.weights_feed(job_id).latest(timeout=10.0)
        if v is not None:
            return v.version, v.step, v.theta, model
    s = m.checkpoints.latest(job_id)
    if s is None:
        raise NotReady(f"job {job_id} is {rec.state} and has no weights yet")
    return s.version, s.step, s.theta, model


