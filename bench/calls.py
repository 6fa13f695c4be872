"""The step call alone: a small message to 2 workers and their small replies, three ways.

    python bench/calls.py

On the shared-memory path a step's call carries a few hundred bytes each way (the plan
and where the weights are; the reply's sums go to shared files). This times that round
trip for 2 workers, on 2 CPUs, as a plain Ray actor call, as a Ray Compiled Graph
(shared-memory channels, compiled once), and over dptrain's Unix-socket channel
(`workers/execution/transports/channel.py`, which the default transport uses). Medians of 300.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import select
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dptrain.execution.transports import channel  # noqa: E402
from timing import compiled_graph_ms, median_ms  # noqa: E402

MESSAGE = (7, ("/dev/shm/dptrain-1234.4026531836-0123456789abcdef-theta", 123456789, 42),
           (0, 1024, 1024, 256, (0, 2)))


def reply(message):
    return ([((0, 2), None, 1234.5, 512, 50, 123456)], 0.0221)


def ray_calls() -> tuple[float, float | None]:
    import ray

    @ray.remote(num_cpus=1)
    class Worker:
        def step(self, message):
            return reply(message)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        actors = [Worker.remote() for _ in range(2)]
        plain = median_ms(lambda: ray.get([a.step.remote(MESSAGE) for a in actors]))
        graph_ms = compiled_graph_ms(actors, MESSAGE)
        return plain, graph_ms
    finally:
        ray.shutdown()


def _serve(path: str) -> None:
    channel.serve(path, lambda call, plan: reply(call))
    time.sleep(3600)


def socket_channel() -> float:
    with tempfile.TemporaryDirectory() as d:
        paths = [os.path.join(d, f"w{i}") for i in range(2)]
        procs = [mp.Process(target=_serve, args=(p,), daemon=True) for p in paths]
        for p in procs:
            p.start()
        try:
            deadline = time.monotonic() + 10
            while not all(os.path.exists(p) for p in paths) and time.monotonic() < deadline:
                time.sleep(0.01)
            chans = [channel.Channel(p, timeout_s=5) for p in paths]
            by_fd = {c.fileno(): c for c in chans}
            poller = select.poll()
            for fd in by_fd:
                poller.register(fd, select.POLLIN)

            def step() -> None:
                seqs = [c.call(MESSAGE, None) for c in chans]
                while any(s not in c.replies for c, s in zip(chans, seqs)):
                    for fd, _ in poller.poll(5000):
                        by_fd[fd].read_one()
                for c, s in zip(chans, seqs):
                    ok, _ = c.replies.pop(s)
                    assert ok

            return median_ms(step)
        finally:
            for p in procs:
                p.terminate()


def main() -> None:
    plain, graph = ray_calls()
    ours = socket_channel()
    print("step call round trip, 2 workers, small message each way, medians of 300:")
    print(f"  Ray actor calls:                  {plain:.3f} ms")
    print(f"  Ray Compiled Graph:               {graph:.3f} ms" if graph is not None else
          "  Ray Compiled Graph:               (failed)")
    print(f"  dptrain socket channel:           {ours:.3f} ms")


if __name__ == "__main__":
    main()
