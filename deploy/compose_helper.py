"""Host-side helpers for deploy/test-compose.sh (run with the project's Python).

    compose_helper.py free-port
    compose_helper.py compare SPEC.yaml GOT.npz          # bitwise vs the in-process reference loop
    compose_helper.py wait-running ADDRESS JOB MIN_STEP TIMEOUT_S
                      # waits until JOB is RUNNING at step >= MIN_STEP (and not near its end);
                      # prints the Ray node ids its workers ran on in the latest step, one a line
    compose_helper.py metric URL NAME                   # sum of a Prometheus metric's samples
    compose_helper.py same A.npz B.npz                  # the same tensors, bit for bit
    compose_helper.py failures ADDRESS JOB              # the steps that recovered worker failures

The bearer token comes from $DPTRAIN_TOKEN, as for the CLI.
"""
from __future__ import annotations

import socket
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compare(spec_path: str, got_path: str) -> int:
    import numpy as np
    from dptrain.cli.specfile import load_spec
    from dptrain.core.config import TrainConfig
    from dptrain.core.trainer import Trainer

    spec = load_spec(spec_path)
    spec.pop("name", None)
    t0 = time.monotonic()
    trainer = Trainer(TrainConfig.from_dict(spec), backend="local")
    for _ in trainer.run():
        pass
    want = {k: np.asarray(v) for k, v in trainer.model.views(trainer.theta).items()}
    with np.load(got_path, allow_pickle=False) as f:
        got = {k: f[k] for k in f.files}
    print(f"reference: {trainer.state.step} steps in-process in {time.monotonic() - t0:.1f}s")
    ok = sorted(want) == sorted(got)
    if not ok:
        print(f"MISMATCH: tensors {sorted(got)} != expected {sorted(want)}")
    for k in sorted(set(want) & set(got)):
        a, b = want[k], got[k]
        same = a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        if not same:
            ok = False
            diff = (float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
                    if a.shape == b.shape else float("nan"))
            print(f"MISMATCH {k}: {b.dtype}{b.shape} vs expected {a.dtype}{a.shape}, max |diff| {diff:g}")
    n = sum(v.size for v in want.values())
    print(("bitwise identical" if ok else "NOT identical") + f": {len(want)} tensors, {n} parameters")
    return 0 if ok else 1


def wait_running(address: str, job_id: str, min_step: int, timeout_s: float) -> int:
    from dptrain.client import Client
    from dptrain.rpc import convert

    deadline = time.monotonic() + timeout_s
    with Client(address, timeout=10) as c:
        while True:
            job = c.get(job_id)
            state = convert.state_from_pb(job.state)
            if state in ("SUCCEEDED", "FAILED", "CANCELLED"):
                print(f"job {job_id} already {state} at step {job.step}", file=sys.stderr)
                return 1
            if (state == "RUNNING" and job.step >= min_step and job.HasField("latest_metrics")
                    and job.latest_metrics.workers):
                if job.total_steps and job.total_steps - job.step < min_step:
                    print(f"job {job_id} too close to its end: {job.step}/{job.total_steps}", file=sys.stderr)
                    return 1
                nodes = []
                for w in sorted(job.latest_metrics.workers, key=lambda w: w.worker):
                    if w.node not in nodes:
                        nodes.append(w.node)
                print(f"job {job_id} running: step {job.step}/{job.total_steps}", file=sys.stderr)
                print("\n".join(nodes))
                return 0
            if time.monotonic() > deadline:
                print(f"timeout: job {job_id} {state} at step {job.step} after {timeout_s:g}s", file=sys.stderr)
                return 1
            time.sleep(0.2)


def metric(url: str, name: str) -> int:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    if not seen:
        print(f"metric {name} not found at {url}", file=sys.stderr)
        return 1
    print(f"{total:g}")
    return 0


def same(a_path: str, b_path: str) -> int:
    import numpy as np

    with np.load(a_path, allow_pickle=False) as a, np.load(b_path, allow_pickle=False) as b:
        ok = sorted(a.files) == sorted(b.files) and all(
            a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes()
            for k in a.files)
    print("same weights" if ok else "DIFFERENT weights")
    return 0 if ok else 1


def failures(address: str, job_id: str) -> int:
    from dptrain.client import Client

    with Client(address, timeout=10) as c:
        for event in c.watch(job_id):
            m = event.metrics if event.WhichOneof("event") == "metrics" else None
            if m is not None and m.failures:
                print(f"step {m.step}: {m.failures} worker failure(s) recovered; the step took {m.step_s:.1f}s")
    return 0


def main(argv: list[str]) -> int:
    cmd, args = (argv[1], argv[2:]) if len(argv) > 1 else ("", [])
    if cmd == "free-port" and not args:
        print(free_port())
        return 0
    if cmd == "compare" and len(args) == 2:
        return compare(*args)
    if cmd == "wait-running" and len(args) == 4:
        return wait_running(args[0], args[1], int(args[2]), float(args[3]))
    if cmd == "same" and len(args) == 2:
        return same(*args)
    if cmd == "failures" and len(args) == 2:
        return failures(*args)
    if cmd == "metric" and len(args) == 2:
        return metric(*args)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
