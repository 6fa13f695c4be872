"""A small Python client for the dptrain gRPC service.

    from service.client import Client
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
from pathlib import Path
from typing import Any, Iterator, Mapping

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.rpc import convert, pb, pb_grpc

UPLOAD_CHUNK = 1 << 20
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
    def submit(self, spec: Mapping[str, Any] | pb.JobSpec, name: str | None = None) -> pb.Job:
        msg = spec if isinstance(spec, pb.JobSpec) else convert.dict_to_job_spec(spec, name=name)
        return self._call("SubmitJob", msg)

    def get(self, job_id: str) -> pb.Job:
        return self._call("GetJob", pb.GetJobRequest(job_id=job_id))

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

    # --- datasets -----------------------------------------------------------------------
    def upload_dataset(self, path: str | Path, **csv_options: Any) -> pb.DatasetInfo:
        path = Path(path)
        fmt = "npz" if path.suffix == ".npz" else "csv"
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
            with path.open("rb") as f:
                while data := f.read(UPLOAD_CHUNK):
                    yield pb.DatasetChunk(data=data)

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
