"""Engine throughput: samples/s of a full training step, numpy engine vs PyTorch.

    python bench/engine.py                 # batch 256 and 1024, 1 and 2 BLAS threads
    python bench/engine.py --seconds 5     # longer runs, steadier figures

The step is forward + backward + SGD update of an MLP 784-512-512-10 (ReLU, softmax
cross-entropy, float32). PyTorch, when importable, runs the identical model in the same
process run and the ratio is printed; PyTorch is never a dependency of dptrain.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from dptrain.engine import Model
from threadpoolctl import threadpool_limits

SPEC = {"input": 784, "layers": ["linear 512", "relu", "linear 512", "relu", "linear 10"],
        "loss": "cross_entropy"}
LR = 0.01


def data(batch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, 784), dtype=np.float32), rng.integers(0, 10, batch)


def rate(step, batch: int, seconds: float) -> float:
    """Best of several timed windows of `seconds / 5` each, after a warm-up."""
    for _ in range(3):
        step()
    best = 0.0
    for _ in range(5):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 5:
            step()
            n += 1
        best = max(best, n * batch / (time.perf_counter() - t0))
    return best


def numpy_step(batch: int):
    model = Model(SPEC)
    theta = model.init_params(0)
    grad = np.empty_like(theta)
    X, y = data(batch)

    def step() -> None:
        model.grad_sum(theta, X, y, out=grad)
        np.multiply(grad, LR / batch, out=grad)
        np.subtract(theta, grad, out=theta)

    return step


def torch_step(batch: int):
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                              torch.nn.ReLU(), torch.nn.Linear(512, 10))
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    X, y = (torch.from_numpy(a) for a in data(batch))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=False)
        loss_fn(net(X), y).backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per configuration")
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
        print("PyTorch not importable: numpy figures only (pip install torch==2.13.0 for the ratio)")
    print(f"{'threads':>7} {'batch':>6} {'numpy samples/s':>16} {'torch samples/s':>16} {'ratio':>6}")
    for threads in args.threads:
        for batch in args.batches:
            with threadpool_limits(limits=threads, user_api="blas"):
                ours = rate(numpy_step(batch), batch, args.seconds)
            theirs = None
            if torch is not None:
                torch.set_num_threads(threads)
                theirs = rate(torch_step(batch), batch, args.seconds)
            ratio = f"{ours / theirs:6.2f}" if theirs else "     -"
            print(f"{threads:>7} {batch:>6} {ours:>16,.0f} {theirs or 0:>16,.0f} {ratio}")


if __name__ == "__main__":
    main()
