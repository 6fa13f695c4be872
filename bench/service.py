"""Service benchmarks: submit-to-first-step latency, GetJob latency under 50 open
WatchJob streams, the gRPC path's throughput overhead, and `dptrain demo` end to end.

    python bench/service.py              # all four
    python bench/service.py --skip-demo

Targets: first step <= 1 s on a warm server; GetJob p99 <= 50 ms with 50 streams open;
gRPC-path throughput within 3% of the library path; demo <= 30 s including Ray's start.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: keep bench/ from shadowing the `service` package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import grpc  # noqa: E402
from dptrain.client import Client  # noqa: E402
from dptrain.core.config import TrainConfig  # noqa: E402
from dptrain.core.trainer import Trainer  # noqa: E402
from dptrain.server import ServerConfig, serve  # noqa: E402

SMALL = {"model": {"input": 64, "layers": ["linear 64", "relu", "linear 10"], "loss": "cross_entropy"},
         "dataset": {"name": "digits"}, "optimizer": {"name": "sgd", "lr": 0.1}, "batch_size": 64,
         "steps": 20, "workers": 2, "cpus_per_worker": 0.5}
THROUGHPUT = {"model": {"input": 784, "layers": ["linear 512", "relu", "linear 512", "relu", "linear 10"],
                        "loss": "cross_entropy"},
              "dataset": {"name": "teacher", "params": {"n": 16384, "d": 784}},
              "optimizer": {"name": "sgd", "lr": 0.01}, "batch_size": 1024, "chunk_size": 256, "steps": 60,
              "workers": 2, "cpus_per_worker": 1.0}


def first_step_latency(c: Client, runs: int = 5) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        job = c.submit(SMALL)
        for e in c.watch(job.id):
            if e.WhichOneof("event") == "metrics":
                out.append(time.perf_counter() - t0)
                break
        c.wait(job.id)
    return out


def _watchers(address: str, job_id: str, streams: int, batch: int) -> None:
    """Child process: hold `streams` WatchJob streams open, consuming every event."""
    def watch() -> None:
        with Client(address) as w:
            try:
                for _ in w.watch(job_id, batch=batch):
                    pass
            except grpc.RpcError:
                pass

    threads = [threading.Thread(target=watch, daemon=True) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def get_job_under_watchers(c: Client, address: str, streams: int = 50, calls: int = 400,
                           batch: int = 256) -> list[float]:
    """GetJob latency from this process while another process keeps 50 streams open on a
    running job (~1,000 steps/s), as separate clients would. `batch`: the watchers'
    `max_batch` (our client's default; 0: one message per step, as a bare stub gets)."""
    import multiprocessing as mp

    job = c.submit({**SMALL, "steps": 100000})
    watchers = mp.get_context("spawn").Process(target=_watchers, args=(address, job.id, streams, batch), daemon=True)
    watchers.start()
    time.sleep(5.0)
    lat = []
    for _ in range(calls):
        t0 = time.perf_counter()
        c.get(job.id)
        lat.append(time.perf_counter() - t0)
        time.sleep(0.005)
    c.cancel(job.id)
    c.wait(job.id)
    watchers.join(timeout=30)
    return lat


def median_step_rate(metrics) -> float:
    ms = list(metrics)[5:]
    return statistics.median(m.batch / m.step_s for m in ms)


def grpc_overhead(c: Client, rounds: int = 3) -> tuple[float, float, float]:
    """(library samples/s, gRPC-path samples/s, median of the per-round ratios): medians over
    steady-state steps, the two paths alternating so that the machine's drift hits both."""
    libs, rpcs = [], []
    for _ in range(rounds):
        t = Trainer(TrainConfig.from_dict(THROUGHPUT), backend="ray")
        try:
            libs.append(median_step_rate(t.run()))
        finally:
            t.close()
        job = c.submit(THROUGHPUT)
        rates = [e.metrics.batch / e.metrics.step_s for e in c.watch(job.id) if e.WhichOneof("event") == "metrics"]
        final = c.get(job.id)
        if final.error or len(rates) < 10:
            raise RuntimeError(f"the gRPC job did not complete: {final.error}")
        rpcs.append(statistics.median(rates[5:]))
    ratio = statistics.median(r / lib for r, lib in zip(rpcs, libs))
    return statistics.median(libs), statistics.median(rpcs), ratio


def demo_seconds() -> float:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dptrain.cli", "demo", "--output", str(Path(d) / "w.npz")],
                       check=True, capture_output=True)
        return time.perf_counter() - t0


def server_subprocess(state: Path, fn):
    """Run fn(client, address) against `dptrain serve` in its own process."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "dptrain.cli", "serve", "--port", str(port),
                             "--state-dir", str(state), "--ray-num-cpus", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    try:
        with Client(address) as c:
            deadline = time.monotonic() + 90
            while not c.healthy(timeout=1):
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not come up")
                time.sleep(0.2)
            return fn(c, address)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-demo", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as state:
        srv = serve(ServerConfig(port=0, state_dir=Path(state), max_running_jobs=2, ray_num_cpus=2))
        try:
            with Client(srv.address) as c:
                c.wait(c.submit(SMALL).id)  # warm: Ray up, code imported
                lat = first_step_latency(c)
                print(f"submit -> first step (warm server): median {statistics.median(lat):.2f} s, "
                      f"max {max(lat):.2f} s   [target <= 1 s]")
        finally:
            srv.stop()
        for batch, how in ((256, "batched, the client's default"), (0, "one message per step")):
            g = server_subprocess(Path(state) / f"sub{batch}",
                                  lambda c, a: get_job_under_watchers(c, a, batch=batch))  # noqa: B023
            print(f"GetJob with 50 WatchJob streams ({how}): p50 {1e3 * pct(g, 0.5):.1f} ms, "
                  f"p99 {1e3 * pct(g, 0.99):.1f} ms   [target p99 <= 50 ms]")
        srv = serve(ServerConfig(port=0, state_dir=Path(state), max_running_jobs=2, ray_num_cpus=2))
        try:
            with Client(srv.address) as c:
                lib, rpc, ratio = grpc_overhead(c)
                print(f"throughput: library {lib:,.0f} samples/s, via gRPC {rpc:,.0f} samples/s (medians "
                      f"of 3 alternating runs), overhead {100 * (1 - ratio):+.1f}%   [target <= 3%]")
        finally:
            srv.stop()
    if not args.skip_demo:
        print(f"dptrain demo, command to final accuracy: {demo_seconds():.1f} s   [target <= 30 s]")


if __name__ == "__main__":
    main()
