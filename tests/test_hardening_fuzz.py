"""Over 1,000 malformed and hostile requests against a real `dptrain serve`, then a normal job.

Every RPC (and health, reflection, an unknown method) gets requests built to break it
(``tests/fuzz_requests.py``: seeded, so every run sends the same ones). For each answer:

* never INTERNAL or UNKNOWN, not even gRPC's own "Exception deserializing request!" for
  bytes that are not a message of the method's type (the server answers INVALID_ARGUMENT);
* a refusal uses a refusal code, and INVALID_ARGUMENT / RESOURCE_EXHAUSTED name the field
  the request made bad; a NOT_FOUND for a job says "no job ...";
* no status message longer than 1,000 characters (no echo of a huge client string);
* a request that must be refused is not accepted; one that is accepted anyway is cancelled
  at once (CancelJob must work on it), so the fuzz never leaves a queue of jobs behind.

Throughout, health stays SERVING and the server process's peak RSS stays within 600 MiB
of its size before the fuzz; at the end a normal job trains to SUCCEEDED and SIGTERM
still stops the server. Failures are collected, grouped by method and cause, and reported
all at once: the report is the to-do list.

    python -m pytest tests/test_hardening_fuzz.py -q -p no:cacheprovider
"""
from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from dptrain.client import Client
from dptrain.rpc import convert, pb
from google.protobuf import text_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import fuzz_requests as fz
from .test_service_crash import free_port, kill_group
from .test_service_e2e import JOB

MIN_REQUESTS = 1000
MAX_DETAILS = 1000
"""Characters of a status message, at most."""
MEMORY_BOUND = 600 << 20
"""Bytes the server's peak RSS may grow by during the fuzz."""
CALL_TIMEOUT = 30.0
MAX_STREAM_MESSAGES = 10_000
FIELD_PREFIX = re.compile(r"^[A-Za-z_]\w*(\[\d+\])?( \([^)]*\))?(\.[A-Za-z_]\w*(\[\d+\])?( \([^)]*\))?)*: ")
"""An INVALID_ARGUMENT message starts with the field it is about ("job_id: ...")."""
TERMINAL = {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}
BASE = {
    "model": {"input": 64, "layers": ["linear 8", "relu", "linear 10"], "loss": "cross_entropy"},
    "dataset": {"name": "digits"}, "optimizer": {"name": "adam", "lr": 0.01},
    "steps": 1, "batch_size": 32, "chunk_size": 16, "workers": 1, "cpus_per_worker": 0.25,
}
"""The job every spec mutation starts from: one step on one quarter-CPU worker."""


# --------------------------------------------------------------------------- the server


@dataclass
class Served:
    proc: subprocess.Popen
    address: str
    log: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`dptrain serve` in its own process (its memory is measured alone), logging to a file."""
    state = tmp_path_factory.mktemp("fuzz-state")
    port, log = free_port(), state / "server.log"
    cmd = [sys.executable, "-m", "dptrain.cli", "serve", "--port", str(port),
           "--state-dir", str(state), "--ray-num-cpus", "2"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    served = Served(proc, f"127.0.0.1:{port}", log)
    try:
        with Client(served.address) as c:
            deadline = time.monotonic() + 180  # Ray starts slowly on a busy machine
            while not c.healthy(timeout=1):
                assert proc.poll() is None, f"server exited:\n{_tail(log)}"
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
        yield served
    finally:
        kill_group(proc)


def _tail(log: Path, n: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak RSS so far) of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


# --------------------------------------------------------------------------- one call


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    response: Any = None


def invoke(channel: grpc.Channel, case: fz.Case) -> Outcome:
    """Send one case; a stream is read to its end (at most MAX_STREAM_MESSAGES; health's
    Watch, which never ends by itself, to its first message)."""
    m = fz.METHODS[case.method]
    ser = (lambda b: b) if case.raw else (lambda msg: msg.SerializeToString())
    de = m.response_type.FromString if m.response_type is not None and not case.raw else (lambda b: b)
    kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary, (True, True): channel.stream_stream}
    call = kind[(m.client_streaming, m.server_streaming)](m.path, request_serializer=ser, response_deserializer=de)
    request = iter(case.request) if m.client_streaming else case.request
    try:
        if not m.server_streaming:
            return Outcome(grpc.StatusCode.OK, "", call(request, timeout=CALL_TIMEOUT))
        stream = call(request, timeout=CALL_TIMEOUT)
        limit = 1 if case.method == "Health.Watch" else MAX_STREAM_MESSAGES
        responses = list(itertools.islice(stream, limit))
        stream.cancel()
        return Outcome(grpc.StatusCode.OK, "", responses)
    except grpc.RpcError as e:
        return Outcome(e.code(), e.details() or "")


def judge(case: fz.Case, out: Outcome) -> str | None:
    """Why the answer is wrong, or None."""
    code, details, expect = out.code, out.details, case.expect
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return f"{code.name} from the server"
    if len(details) > MAX_DETAILS:
        return f"a status message of {len(details)} characters"
    if code is grpc.StatusCode.OK:
        if expect.reject:
            return "accepted a request that must be refused"
        return case.check(out.response) if case.check else None
    if code is grpc.StatusCode.UNIMPLEMENTED and case.method in fz.OTHER:
        return None
    if code not in expect.codes:
        return f"{code.name} is not a refusal"
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
        if expect.fields and not any(re.search(f, details) for f in expect.fields):
            return "the message does not name the field"
        if not expect.fields and code is grpc.StatusCode.INVALID_ARGUMENT and not FIELD_PREFIX.match(details):
            return "the message does not start with a field"
    if code is grpc.StatusCode.NOT_FOUND and expect.not_found and not re.search(expect.not_found, details):
        return "NOT_FOUND does not say 'no job with id ...'"
    return None


def shown(case: fz.Case, limit: int = 300) -> str:
    """The request, short enough for a report."""
    r = case.request
    if r is None:
        return "-"
    if case.raw:
        text = repr(r if isinstance(r, bytes) else r[0])
    elif isinstance(r, list):
        text = " | ".join(text_format.MessageToString(x, as_one_line=True)[:120] for x in r[:4])
    else:
        text = text_format.MessageToString(r, as_one_line=True)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


# --------------------------------------------------------------------------- a run


@dataclass
class Failure:
    case: fz.Case
    reason: str
    code: str
    details: str


class Run:
    """Sends the cases, cancels whatever gets accepted, and keeps the failures."""

    def __init__(self, served: Served, client: Client) -> None:
        self.served, self.client = served, client
        self.channel = client.channel
        self.failures: list[Failure] = []
        self.accepted_ids: list[str] = []
        self.sent = self.accepted = 0
        self.silent = 0  # requests in a row that got no answer in time
        self.health = health_pb2_grpc.HealthStub(self.channel)
        path = os.environ.get("DPTRAIN_FUZZ_LOG")  # every request's answer, for a review by eye
        self.log = open(path, "w", buffering=1) if path else None

    def fail(self, case: fz.Case, reason: str, code: str = "", details: str = "") -> None:
        self.failures.append(Failure(case, reason, code, details[:400]))

    def fuzz(self, cases: list[fz.Case]) -> bool:
        """Sends every case; False if the server died or stopped answering (then the rest is skipped)."""
        for i, case in enumerate(cases):
            self.send(case)
            if self.silent >= 3:
                self.fail(case, f"the server stopped answering ({self.silent} requests in a row got no answer "
                                f"within {CALL_TIMEOUT:.0f} s); the fuzz stopped at this one")
                return False
            if i % 50 == 49 and not self.check_alive(case):
                return False
        return True

    def send(self, case: fz.Case) -> None:
        out = invoke(self.channel, case)
        self.sent += 1
        self.silent = self.silent + 1 if out.code is grpc.StatusCode.DEADLINE_EXCEEDED else 0
        why = judge(case, out)
        if self.log is not None:
            self.log.write(f"{'FAIL ' + why if why else 'ok'} | {case.label[:200]} | {out.code.name} | "
                           f"{out.details[:300]!r}\n")
        if why:
            self.fail(case, why, out.code.name, out.details)
        if out.code is grpc.StatusCode.OK and case.method in ("SubmitJob", "ResumeJob"):
            job = pb.Job.FromString(out.response) if case.raw else out.response
            self.cancel_accepted(case, job.id)

    def cancel_accepted(self, case: fz.Case, job_id: str) -> None:
        """An accepted job is cancelled at once; the first few with a StreamWeights open,
        which must end with the job; every tenth is resumed and cancelled again."""
        self.accepted += 1
        self.accepted_ids.append(job_id)
        if self.accepted <= 3:
            why = self.stream_ends_with_job(job_id)
        else:
            why = self.cancel(job_id)
        if why is None and self.accepted % 10 == 0:
            why = self.resume_and_cancel(job_id)
        if why:
            self.fail(case, why)

    def cancel(self, job_id: str) -> str | None:
        try:
            self.client.cancel(job_id)
        except grpc.RpcError as e:
            if e.code() is not grpc.StatusCode.FAILED_PRECONDITION:  # it already ended
                return f"CancelJob of the accepted job {job_id}: {e.code().name} {e.details()[:200]}"
        return None

    def resume_and_cancel(self, job_id: str) -> str | None:
        try:
            self.client.stub.ResumeJob(pb.ResumeJobRequest(job_id=job_id), timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            if e.code() is not grpc.StatusCode.FAILED_PRECONDITION:  # not cancelled yet, or succeeded
                return f"ResumeJob of the cancelled job {job_id}: {e.code().name} {e.details()[:200]}"
            return None
        return self.cancel(job_id)

    def race(self, spec: dict[str, Any], rounds: int = 10) -> None:
        """Nine calls about one new job at the same moment (cancel three times, resume, get,
        watch, stream weights, list, predict): every answer is OK or a refusal, none hangs."""
        inputs = convert.to_tensor("inputs", np.zeros((2, spec["model"]["input"]), np.float32))
        stub, md, t = self.client.stub, self.client.metadata, CALL_TIMEOUT

        def first(stream: Any) -> None:
            next(iter(stream), None)
            stream.cancel()

        for r in range(rounds):
            try:
                job_id = self.client.submit(spec, name=f"race-{r}").id
            except grpc.RpcError as e:
                self.fail(_note("race: SubmitJob of a valid job", "SubmitJob"), "refused", e.code().name,
                          e.details() or "")
                return
            self.accepted_ids.append(job_id)
            cancel = ("CancelJob", lambda: stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=t))
            calls = [cancel, cancel, cancel,
                     ("ResumeJob", lambda: stub.ResumeJob(pb.ResumeJobRequest(job_id=job_id), timeout=t)),
                     ("GetJob", lambda: stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=t)),
                     ("WatchJob", lambda: first(stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=t,
                                                              metadata=md))),
                     ("StreamWeights", lambda: first(stub.StreamWeights(pb.StreamWeightsRequest(job_id=job_id),
                                                                        timeout=t, metadata=md))),
                     ("ListJobs", lambda: stub.ListJobs(pb.ListJobsRequest(page_size=5), timeout=t)),
                     ("Predict", lambda: stub.Predict(pb.PredictRequest(job_id=job_id, inputs=inputs), timeout=t))]
            start = threading.Barrier(len(calls))

            def one(call: tuple[str, Any]) -> tuple[str, grpc.StatusCode, str]:
                start.wait()
                try:
                    call[1]()
                    return call[0], grpc.StatusCode.OK, ""
                except grpc.RpcError as e:
                    return call[0], e.code(), e.details() or ""

            with ThreadPoolExecutor(len(calls)) as pool:
                answers = list(pool.map(one, calls))
            self.sent += len(answers)
            for name, code, details in answers:
                if code is not grpc.StatusCode.OK and code not in fz.REFUSALS or len(details) > MAX_DETAILS:
                    self.fail(_note(f"race: {name} with 8 other calls about one new job", name),
                              f"{code.name} is not an answer", code.name, details)
            why = self.cancel(job_id)  # a ResumeJob that won the race requeued it
            if why:
                self.fail(_note("race: the final CancelJob", "CancelJob"), why)

    def stream_ends_with_job(self, job_id: str, within: float = 15.0) -> str | None:
        """Open StreamWeights on the new job, cancel the job: the stream must end soon after."""
        stream = self.client.stub.StreamWeights(pb.StreamWeightsRequest(job_id=job_id), timeout=120)
        ended = threading.Event()

        def drain() -> None:
            try:
                for _ in stream:
                    pass
            except grpc.RpcError:
                pass
            ended.set()

        threading.Thread(target=drain, daemon=True).start()
        time.sleep(0.3)
        why = self.cancel(job_id)
        if not ended.wait(within):
            stream.cancel()
            return why or f"StreamWeights on the accepted job did not end within {within:.0f} s of CancelJob"
        return why

    def all_cancelled(self, within: float = 15.0) -> None:
        """Every job the fuzz got accepted reaches a final state soon after its CancelJob."""
        deadline = time.monotonic() + within
        for job_id in self.accepted_ids:
            try:
                job = _wait(self.client, job_id, max(0.0, deadline - time.monotonic()))
            except grpc.RpcError as e:
                self.fail(_note(f"GetJob of cancelled job {job_id}"), "refused", e.code().name, e.details() or "")
                continue
            if job.state not in TERMINAL:
                self.fail(_note(f"cancelled job {job_id}"), f"an accepted job is still "
                          f"{convert.state_from_pb(job.state)} {within:.0f} s after its CancelJob")

    def flood_streams(self, n: int = 300) -> None:
        """One client opens more long-lived streams (health's Watch) than the server allows:
        those over the limit are refused at once with RESOURCE_EXHAUSTED, unary calls and
        health get through meanwhile, and closing the streams frees their slots."""
        case = _note(f"{n} Health.Watch streams from one client", "Health.Watch")
        stub = health_pb2_grpc.HealthStub(self.channel)
        request = health_pb2.HealthCheckRequest(service="")
        opened, refused = [], 0
        for i in range(n):
            call = stub.Watch(request, timeout=20)
            self.sent += 1
            try:
                next(call)
                opened.append(call)
            except grpc.RpcError as e:
                if e.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                    self.fail(case, f"stream {i + 1} (with {len(opened)} open) was neither admitted nor refused "
                                    f"with RESOURCE_EXHAUSTED", e.code().name, e.details() or "")
                    break
                refused += 1
        try:
            self.client.list()
            self.health.Check(request, timeout=5)
        except grpc.RpcError as e:
            self.fail(case, f"with {len(opened)} streams open, a unary call failed", e.code().name, e.details() or "")
        if not refused:
            self.fail(case, f"all {n} streams of one client were admitted: no limit per client")
        for call in opened:
            call.cancel()
        deadline = time.monotonic() + 10
        while True:  # the slots come back (the server notices the cancellations asynchronously)
            try:
                next(stub.Watch(request, timeout=5))
                return
            except grpc.RpcError as e:
                if time.monotonic() > deadline:
                    self.fail(case, "10 s after the streams were closed, a new one is still refused",
                              e.code().name, e.details() or "")
                    return
                time.sleep(0.2)

    def normal_job(self, spec: dict[str, Any], within: float = 150.0) -> None:
        """After all that, an ordinary job trains to SUCCEEDED."""
        case = _note("a normal job after the fuzz", "SubmitJob")
        try:
            final = _wait(self.client, self.client.submit(spec, name="after-the-fuzz").id, within)
        except grpc.RpcError as e:
            self.fail(case, "refused or lost", e.code().name, e.details() or "")
            return
        if final.state != pb.JOB_STATE_SUCCEEDED:
            self.fail(case, f"ended {convert.state_from_pb(final.state)} (or not within {within:.0f} s) at step "
                            f"{final.step}/{final.total_steps}", details=final.error)

    def check_alive(self, case: fz.Case) -> bool:
        """The server still runs and says SERVING; False stops the run."""
        if self.served.proc.poll() is not None:
            self.fail(case, f"the server exited (code {self.served.proc.returncode}) after this request")
            return False
        try:
            status = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
        except grpc.RpcError as e:
            self.fail(case, f"health check after this request: {e.code().name} {e.details()}")
            return True
        if status != health_pb2.HealthCheckResponse.SERVING:
            self.fail(case, f"health is {health_pb2.HealthCheckResponse.ServingStatus.Name(status)} after this request")
        return True

    def report(self) -> str:
        groups: dict[tuple[str, str], list[Failure]] = defaultdict(list)
        for f in self.failures:
            groups[(f.case.family, f.reason)].append(f)
        lines = [f"{len(self.failures)} failures out of {self.sent} requests, in {len(groups)} groups:"]
        for (family, reason), fs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            first = fs[0]
            lines.append(f"\n[{family}] {reason}: {len(fs)}")
            for f in fs[:4]:
                lines.append(f"    - {f.case.label[:160]}" + (f" -> {f.code} {f.details[:200]!r}" if f.code else ""))
            lines.append(f"      e.g. request: {shown(first.case)}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- setup


def _note(what: str, method: str = "GetJob") -> fz.Case:
    """A pseudo-case to file a failure that is not one request's answer."""
    return fz.Case(what, method, None, fz.Expect(), family=what)


def _wait(client: Client, job_id: str, timeout: float) -> pb.Job:
    """The job once it reaches a final state (polled, so a wedged server fails in time)."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(job_id)
        if job.state in TERMINAL or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def context(client: Client, tmp: Path) -> fz.Context:
    """A finished job with checkpoints, a cancelled one, and an uploaded dataset."""
    done = client.submit({**BASE, "steps": 2, "checkpoint_every": 1}, name="fuzz-done")
    queued = client.submit({**BASE, "steps": 1000}, name="fuzz-cancelled")
    client.cancel(queued.id)
    (tmp / "d.npz").write_bytes(fz.valid_npz())
    dataset = client.upload_dataset(tmp / "d.npz")
    final = _wait(client, done.id, 120)
    assert final.state == pb.JOB_STATE_SUCCEEDED, final.error
    assert _wait(client, queued.id, 60).state == pb.JOB_STATE_CANCELLED
    return fz.Context(done.id, queued.id, dataset.id, BASE)


# --------------------------------------------------------------------------- the tests


@pytest.mark.timeout(400)
def test_a_thousand_hostile_requests_then_a_normal_job(served, tmp_path):
    with Client(served.address, timeout=CALL_TIMEOUT) as client:
        try:
            ctx = context(client, tmp_path)
        except grpc.RpcError as e:
            pytest.fail(f"setting up the fuzz (a job, a cancel, an upload): {e.code().name} {e.details()}\n"
                        f"--- server log (tail) ---\n{_tail(served.log)}")
        cases = fz.all_cases(ctx)
        assert len(cases) >= MIN_REQUESTS
        before = _memory(served.proc.pid)
        run = Run(served, client)
        t0 = time.monotonic()
        alive = run.fuzz(cases)
        if alive:
            run.flood_streams()
            run.race({**BASE, "steps": 1000})
            run.all_cancelled()
        fuzz_s = time.monotonic() - t0
        alive = alive and run.check_alive(_note("after the fuzz"))
        after = _memory(served.proc.pid) if alive else before
        growth = after["VmHWM"] - before["VmRSS"]
        if growth > MEMORY_BOUND:
            run.fail(_note("memory"),
                     f"the server's peak RSS grew by {growth >> 20} MiB (bound {MEMORY_BOUND >> 20} MiB): "
                     f"{before['VmRSS'] >> 20} -> peak {after['VmHWM'] >> 20} MiB")
        if alive:
            run.normal_job({**JOB, "epochs": 1})
    summary = (f"{run.sent} requests in {fuzz_s:.0f} s, {run.accepted} accepted and cancelled, "
               f"server RSS "
               f"{before['VmRSS'] >> 20} MiB before, peak {after['VmHWM'] >> 20} MiB")
    print(summary)
    print(run.report())
    assert run.sent >= MIN_REQUESTS, summary
    assert not run.failures, f"{summary}\n{run.report()}\n--- server log (tail) ---\n{_tail(served.log)}"


@pytest.mark.timeout(120)
def test_sigterm_still_stops_the_server_after_the_fuzz(served):
    """Undecodable reflection requests once made shutdown hang forever."""
    if served.proc.poll() is not None:
        pytest.fail(f"the server had already exited with {served.proc.returncode}")
    served.proc.send_signal(signal.SIGTERM)
    try:
        served.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not exit within 60 s of SIGTERM\n{_tail(served.log)}")
