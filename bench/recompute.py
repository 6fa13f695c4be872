"""Activation recomputation: peak memory of a training step and its time, with and without.

    python bench/recompute.py                 # deep MLP, batch 256, float32
    python bench/recompute.py --batch 512 --every 4

Peak memory is what numpy allocates during one grad_sum from a fresh model (tracemalloc
sees numpy's buffers): activations, gradients, scratch. Step time is the median of
repeated grad_sums, the first (allocating) call excluded. The gradients are compared
bit for bit: recomputation must not change them.
"""
from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc

import numpy as np
from dptrain.engine import Context, Model


def spec(depth: int, width: int, every: int | None) -> dict:
    layers = [x for _ in range(depth) for x in (f"linear {width}", "relu")] + ["linear 10"]
    s = {"input": 784, "layers": layers, "loss": "cross_entropy"}
    return s if every is None else {**s, "recompute": every}


def measure(s: dict, X: np.ndarray, y: np.ndarray, reps: int) -> tuple[int, float, bytes]:
    m = Model(s)
    theta = m.init_params(0)
    ctx = Context(0, 0, np.arange(len(X)))
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    grad = m.grad_sum(theta, X, y, ctx=ctx).grad.tobytes()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        m.grad_sum(theta, X, y, ctx=ctx)
        times.append(time.perf_counter() - t0)
    return peak, statistics.median(times), grad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--every", type=int, default=4, help="nodes per recomputed segment")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.batch, 784)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    print(f"MLP 784-{args.depth}x{args.width}-10 (ReLU), batch {args.batch}, float32, 1 BLAS thread")
    with threadpool_limits(1, "blas"):
        plain = measure(spec(args.depth, args.width, None), X, y, args.reps)
        again = measure(spec(args.depth, args.width, args.every), X, y, args.reps)
    for name, (peak, t, _) in (("keep every activation", plain), (f"recompute, {args.every} nodes/segment", again)):
        print(f"{name:32s} peak {peak / 2**20:7.1f} MiB   step {t * 1e3:7.1f} ms")
    print(f"memory x{again[0] / plain[0]:.2f}, time x{again[1] / plain[1]:.2f}, "
          f"same gradient bits: {again[2] == plain[2]}")


if __name__ == "__main__":
    main()
