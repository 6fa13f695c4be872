"""Data-parallel scaling: samples/s with 1 and 2 Ray workers vs torch DDP, and the overhead.

    python bench/scaling.py                  # MLP 784-512-512-10, teacher data, batch 1024
    python bench/scaling.py --steps 60 --no-torch

Each worker gets 1 CPU and 1 BLAS thread. "Overhead" is the coordinator's share of a step:
step time minus the slowest worker's compute time (dispatch, transfer, reduction, update,
broadcast). With PyTorch installed, plain DDP (gloo, 2 processes, 1 thread each) trains
the identical model in the same run and the ratio is printed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

MODEL = {"input": 784, "layers": ["linear 512", "relu", "linear 512", "relu", "linear 10"],
         "loss": "cross_entropy"}
N = 65536
BATCH = 1024


def job(workers: int, steps: int, chunk: int) -> dict:
    return {"model": MODEL, "dataset": {"name": "teacher", "params": {"n": N, "d": 784, "classes": 10}},
            "optimizer": {"name": "sgd", "lr": 0.01}, "batch_size": BATCH, "chunk_size": chunk,
            "steps": steps, "workers": workers, "cpus_per_worker": 1.0, "worker_timeout_s": 120}


def ours(workers: int, steps: int, warmup: int, chunk: int, data) -> dict:
    from service.config import TrainConfig
    from service.trainer import Trainer

    t = Trainer(TrainConfig.from_dict(job(workers, steps + warmup, chunk)), backend="ray", data=data)
    try:
        ms = list(t.run())[warmup:]
    finally:
        t.close()
    total = sum(m.step_s for m in ms)
    overhead = [m.step_s - max(w.compute_s for w in m.workers) for m in ms]
    return {"samples_per_s": sum(m.batch for m in ms) / total, "step_ms": 1e3 * total / len(ms),
            "overhead_ms": 1e3 * statistics.median(overhead),
            "compute_ms": 1e3 * statistics.median(max(w.compute_s for w in m.workers) for m in ms)}


def local_rate(steps: int, chunk: int, data) -> float:
    """The in-process loop, 1 BLAS thread: the single-core reference."""
    from threadpoolctl import threadpool_limits

    from service.config import TrainConfig
    from service.trainer import Trainer

    t = Trainer(TrainConfig.from_dict(job(1, steps + 3, chunk)), backend="local", data=data)
    with threadpool_limits(1, "blas"):
        ms = list(t.run())[3:]
    return sum(m.batch for m in ms) / sum(m.step_s for m in ms)


def _ddp_worker(rank: int, world: int, steps: int, warmup: int, port: int, out) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    net = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                              torch.nn.ReLU(), torch.nn.Linear(512, 10))
    model = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(rank)
    X, y = torch.randn(BATCH // world, 784, generator=g), torch.randint(0, 10, (BATCH // world,), generator=g)
    loss_fn = torch.nn.CrossEntropyLoss()
    for i in range(steps + warmup):
        if i == warmup:
            dist.barrier()
            t0 = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(X), y).backward()
        opt.step()
    dist.barrier()
    if rank == 0:
        out.put(steps * BATCH / (time.perf_counter() - t0))
    dist.destroy_process_group()


def torch_ddp(steps: int, warmup: int) -> float:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = 29500 + os.getpid() % 1000
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, steps, warmup, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    rate = q.get(timeout=600)
    for p in procs:
        p.join()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    import ray

    from service.config import TrainConfig
    from workers.data import load_dataset

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    data = load_dataset(TrainConfig.from_dict(job(1, 1, args.chunk)).dataset)
    print(f"MLP 784-512-512-10, teacher n={N}, global batch {BATCH}, chunk {args.chunk}, float32")
    print(f"in-process loop, 1 thread: {local_rate(args.steps // 2, args.chunk, data):,.0f} samples/s")
    results = {}
    for w in (1, 2):
        r = results[w] = ours(w, args.steps, args.warmup, args.chunk, data)
        print(f"dptrain {w} worker(s): {r['samples_per_s']:,.0f} samples/s, step {r['step_ms']:.1f} ms "
              f"(slowest worker {r['compute_ms']:.1f} ms, overhead {r['overhead_ms']:.2f} ms)")
    ray.shutdown()
    try:
        if args.no_torch:
            raise ImportError
        import torch  # noqa: F401
    except ImportError:
        print("torch DDP: skipped (pip install torch==2.13.0 to compare)")
        return
    ddp = torch_ddp(args.steps, args.warmup)
    print(f"torch DDP 2 processes (gloo, 1 thread each): {ddp:,.0f} samples/s; "
          f"dptrain 2 workers / DDP = {results[2]['samples_per_s'] / ddp:.2f}")


if __name__ == "__main__":
    main()
