"""A small Python client for the dptrain gRPC service.

    from dptrain.client import Client
    c = Client("127.0.0.1:50051")                # token=..., tls_ca=... when configured
    job = c.submit(yaml.safe_load(open("examples/digits_mlp.yaml")))
    for event in c.watch(job.id):                # reconnects and resumes without gaps
        ...
    version, step, weights = c.weights(job.id)   # {"linear0.W": ndarray, ...}
    print(c.predict(job.id, X[:5]))
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping

import grpc
import numpy as np
from dptrain.rpc import convert, pb, pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

UPLOAD_CHUNK = 1 << 20
JOB_ID_LENGTH = 20  # hex digits (dptrain.store.base.new_job_id)
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


class Client:
    def __init__(self, address: str = "127.0.0.1:50051", token: str | None = None,
                 tls_ca: str | None = None, timeout: float = 30.0, max_message_bytes: int = 64 << 20) -> None:
        self.address, self.timeout = address, timeout
        token = token or os.environ.get("DPTRAIN_TOKEN")
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if tls_ca:
            creds = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes())
            self.channel = grpc.secure_channel(address, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self.stub = pb_grpc.TrainerStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        return getattr(self.stub, method)(request, timeout=timeout or self.timeout, metadata=self.metadata)

    # --- jobs -------------------------------------------------------------------------
    def submit(self, spec: Mapping[str, Any] | pb.JobSpec, name: str | None = None,
               request_id: str | None = None, attempts: int = 5) -> pb.Job:
        """Submit a job, safely retried while the server is unavailable (restarting, say):
        every attempt carries the same idempotency key, so the server creates the job once."""
        msg = pb.JobSpec()
        msg.CopyFrom(spec if isinstance(spec, pb.JobSpec) else convert.dict_to_job_spec(spec, name=name))
        if not msg.request_id:
            msg.request_id = request_id or uuid.uuid4().hex
        for attempt in range(attempts):
            try:
                return self._call("SubmitJob", msg)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == attempts - 1:
                    raise
                time.sleep(min(0.25 * 2 ** attempt, 4.0))
        raise AssertionError("unreachable")

    def resume(self, job_id: str) -> pb.Job:
        """Requeue a FAILED or CANCELLED job; it continues from its newest intact checkpoint."""
        return self._call("ResumeJob", pb.ResumeJobRequest(job_id=job_id))

    def get(self, job_id: str) -> pb.Job:
        return self._call("GetJob", pb.GetJobRequest(job_id=job_id))

    def resolve(self, prefix: str) -> str:
        """The id of the one job whose id starts with `prefix` (a whole id is returned as is)."""
        if len(prefix) >= JOB_ID_LENGTH:
            return prefix
        matches = [j.id for j in self.list() if j.id.startswith(prefix)]
        if len(matches) == 1:
            return matches[0]
        shown = repr(prefix[:32])
        if not matches:
            raise ValueError(f"no job with an id starting with {shown}")
        raise ValueError(f"{len(matches)} jobs have ids starting with {shown} "
                         f"({', '.join(matches[:5])}{', ...' if len(matches) > 5 else ''}); give more of the id")

    def list(self, states: list[str] | None = None, page_size: int = 100) -> list[pb.Job]:
        jobs, token = [], ""
        while True:
            req = pb.ListJobsRequest(states=[convert.state_to_pb(s) for s in states or []],
                                     page_size=page_size, page_token=token)
            resp = self._call("ListJobs", req)
            jobs += list(resp.jobs)
            token = resp.next_page_token
            if not token:
                return jobs

    def cancel(self, job_id: str) -> pb.Job:
        return self._call("CancelJob", pb.CancelJobRequest(job_id=job_id))

    def watch(self, job_id: str, from_step: int = 0, retries: int = 10,
              batch: int = 256) -> Iterator[pb.JobEvent]:
        """State changes and one `metrics` event per step; on a dropped connection, resumes
        after the last step. Steps travel `batch` to a message (`metrics_batch`) and are
        handed out one by one here."""
        attempt = 0
        while True:
            try:
                request = pb.WatchJobRequest(job_id=job_id, from_step=from_step, max_batch=batch)
                for event in self.stub.WatchJob(request, metadata=self.metadata):
                    attempt = 0
                    kind = event.WhichOneof("event")
                    if kind == "metrics_batch":
                        for m in event.metrics_batch.steps:
                            from_step = m.step + 1
                            yield pb.JobEvent(job_id=event.job_id, metrics=m)
                        continue
                    if kind == "metrics":
                        from_step = event.metrics.step + 1
                    yield event
                return
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE or attempt >= retries:
                    raise
                attempt += 1
                time.sleep(min(0.2 * 2 ** attempt, 5.0))

    def wait(self, job_id: str) -> pb.Job:
        for _ in self.watch(job_id):
            pass
        return self.get(job_id)

    # --- weights ------------------------------------------------------------------------
    def weights(self, job_id: str, step: int | None = None) -> tuple[int, int, dict[str, np.ndarray]]:
        req = pb.GetWeightsRequest(job_id=job_id)
        if step is not None:
            req.step = step
        msgs = list(self.stub.GetWeights(req, timeout=self.timeout * 4, metadata=self.metadata))
        return msgs[0].version, msgs[0].step, convert.assemble_weights(msgs)

    def stream_weights(self, job_id: str, every_n_steps: int = 1) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """Each new version of the weights as (version, step, arrays), reassembled from chunks."""
        stream = self.stub.StreamWeights(pb.StreamWeightsRequest(job_id=job_id, every_n_steps=every_n_steps),
                                         metadata=self.metadata)
        part: list[pb.WeightsUpdate] = []
        for msg in stream:
            part.append(msg)
            if msg.chunk_index == msg.chunk_count - 1:
                yield msg.version, msg.step, convert.assemble_weights(part)
                part = []

    def predict(self, job_id: str, X: np.ndarray) -> np.ndarray:
        req = pb.PredictRequest(job_id=job_id, inputs=convert.to_tensor("inputs", np.asarray(X)))
        return convert.from_tensor(self._call("Predict", req).outputs)

    def log(self, job_id: str, after: int = 0) -> Iterator[pb.LogLine]:
        """The job's log lines after line `after`, oldest first, fetched a page at a time."""
        while True:
            page = self._call("GetJobLog", pb.GetJobLogRequest(job_id=job_id, after=after))
            yield from page.lines
            if not page.lines:
                return
            after = page.lines[-1].seq

    def metrics(self, job_id: str, from_step: int = 0) -> Iterator[pb.StepMetrics]:
        """The job's recorded metrics in step order, fetched a page at a time."""
        while True:
            page = self._call("GetMetrics", pb.GetMetricsRequest(job_id=job_id, from_step=from_step))
            yield from page.metrics
            if not page.next_step:
                return
            from_step = page.next_step

    def input_gradient(self, job_id: str, X: np.ndarray, node: str = "", unit: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
        """(d unit / d X per example, the node's outputs): backpropagation to the data.
        `unit` None: each example's largest output (a classifier's predicted class)."""
        req = pb.InputGradientRequest(job_id=job_id, inputs=convert.to_tensor("inputs", np.asarray(X)), node=node)
        if unit is not None:
            req.unit = unit
        resp = self._call("InputGradient", req)
        return convert.from_tensor(resp.gradients), convert.from_tensor(resp.outputs)

    # --- datasets -----------------------------------------------------------------------
    def upload_dataset(self, path: str | Path, **csv_options: Any) -> pb.DatasetInfo:
        """Upload an .npz (arrays X, y), a .txt (UTF-8 text, for the ``text`` source) or a .csv;
        csv options: label (name or index), header, task, delimiter. The same bytes with the
        same options give back the same dataset.

        The header declares the file's size and an end marker closes the stream with the
        count actually sent, so the server never keeps an upload that broke off or a file
        that changed while it was read."""
        path = Path(path)
        fmt = {".npz": "npz", ".txt": "txt"}.get(path.suffix.lower(), "csv")
        header = pb.DatasetHeader(filename=path.name, format=fmt, size_bytes=path.stat().st_size)
        label = csv_options.pop("label", None)
        if isinstance(label, int):
            header.label_index = label
        elif label is not None:
            header.label_name = label
        for key, value in csv_options.items():
            setattr(header, key, value)

        def chunks() -> Iterator[pb.DatasetChunk]:
            yield pb.DatasetChunk(header=header)
            sent = 0
            with path.open("rb") as f:
                while data := f.read(UPLOAD_CHUNK):
                    sent += len(data)
                    yield pb.DatasetChunk(data=data)
            yield pb.DatasetChunk(end=pb.DatasetEnd(size_bytes=sent))

        return self.stub.UploadDataset(chunks(), timeout=self.timeout * 10, metadata=self.metadata)

    def datasets(self) -> list[pb.DatasetInfo]:
        return list(self._call("ListDatasets", pb.ListDatasetsRequest()).datasets)

    def healthy(self, timeout: float = 5.0) -> bool:
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return False
        return r.status == health_pb2.HealthCheckResponse.SERVING
