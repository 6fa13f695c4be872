"""Engine throughput and memory: a full training step, numpy engine vs the same PyTorch model.

    python bench/engine.py                    # every model, 1 BLAS/torch thread
    python bench/engine.py lenet gpt          # some models
    python bench/engine.py --rounds 9         # more alternating rounds, a steadier median
    python bench/engine.py mlp --threads 2    # two threads (noisy on a shared 2-vCPU machine)
    python bench/engine.py --no-kernels       # the ops' numpy passes only (as without a C compiler)

A step is forward + backward + an SGD update, float32, in training mode (dropout on).
The models are the examples' (`examples/*.yaml`: LeNet-5, the residual CNN with batch
norm, the character GPT) and an MLP 784-512-512-10; PyTorch runs the identical
architecture, written as a PyTorch user would (nn modules, scaled_dot_product_attention).
Each (model, framework) runs in a fresh process, so `peak MiB` is that process's peak RSS
growth over the steps (model, data, activations, workspaces, allocator caches): the
memory a step costs, measured the same way for both. PyTorch is never a dependency of
dptrain; without it only the engine's figures are printed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LR = 0.01
Step = Callable[[], None]


def example_model(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())["model"]


@dataclass(frozen=True)
class Bench:
    spec: dict[str, Any]
    batch: int
    torch_net: Callable[[], Any]  # builds the identical torch.nn.Module (logits out)


# --- the PyTorch models -----------------------------------------------------------------------
def torch_mlp():
    from torch import nn
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def torch_lenet():
    from torch import nn
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))


def torch_resnet():
    import torch
    from torch import nn

    def cbn(cin: int, cout: int, stride: int = 1) -> list:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(*cbn(3, 16), nn.ReLU())
            self.block = nn.Sequential(*cbn(16, 16), nn.ReLU(), *cbn(16, 16))
            self.down = nn.Sequential(*cbn(16, 32, 2), nn.ReLU())
            self.out = nn.Linear(32, 3)

        def forward(self, x):
            a0 = self.stem(x)
            a1 = torch.relu(a0 + self.block(a0))
            return self.out(self.down(a1).mean((2, 3)))

    return Net()


def torch_gpt(vocab: int = 102, T: int = 64, d: int = 128, heads: int = 4, layers: int = 2, p: float = 0.1):
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d),
                                     nn.Dropout(p))
            self.drop = nn.Dropout(p)

        def forward(self, h):
            B = h.shape[0]
            q, k, v = self.qkv(self.ln1(h)).view(B, T, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, d)
            h = h + self.drop(self.proj(a))
            return h + self.mlp(self.ln2(h))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(vocab, d)
            self.pos = nn.Parameter(torch.zeros(T, d))
            self.drop = nn.Dropout(p)
            self.blocks = nn.Sequential(*(Block() for _ in range(layers)))
            self.lnf = nn.LayerNorm(d)

        def forward(self, ids):
            h = self.blocks(self.drop(self.tok(ids) + self.pos))
            return self.lnf(h) @ self.tok.weight.T  # tied output projection

    return GPT()


BENCHES = {
    "mlp": Bench({"input": 784, "layers": ["linear 512", "relu", "linear 512", "relu", "linear 10"],
                  "loss": "cross_entropy"}, 1024, torch_mlp),
    "lenet": Bench(example_model("lenet_mnist.yaml"), 256, torch_lenet),
    "resnet": Bench(example_model("resnet_shapes.yaml"), 64, torch_resnet),
    "gpt": Bench(example_model("char_gpt.yaml"), 32, torch_gpt),
}


def batch_of(model, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random inputs of the model's shape and kind, and labels for its loss."""
    rng = np.random.default_rng(0)
    shape, spec = (n, *model.input_shape), model.spec.input
    if spec.dtype == "int":
        ids = rng.integers(0, spec.vocab, shape)
        return ids, rng.integers(0, spec.vocab, shape)
    n_classes = model.output_shape[-1]
    return rng.standard_normal(shape, dtype=np.float32), rng.integers(0, n_classes, n)


# --- the two steps ------------------------------------------------------------------------
def numpy_step(bench: Bench) -> Step:
    from dptrain.engine import Model
    from dptrain.engine.op import Context

    model = Model(bench.spec)
    theta = model.init_params(0)
    grad = np.empty_like(theta)
    X, y = batch_of(model, bench.batch)
    index = np.arange(bench.batch)
    count = [0]

    def step() -> None:
        count[0] += 1
        model.grad_sum(theta, X, y, out=grad, ctx=Context(seed=0, step=count[0], index=index))
        np.multiply(grad, LR / bench.batch, out=grad)
        np.subtract(theta, grad, out=theta)

    return step


def torch_step(bench: Bench) -> Step:
    import torch
    from dptrain.engine import Model

    model = Model(bench.spec)
    net = torch_net = bench.torch_net()
    torch_net.train()
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    X, y = (torch.from_numpy(a) for a in batch_of(model, bench.batch))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=False)
        z = net(X)
        loss_fn(z.reshape(-1, z.shape[-1]), y.reshape(-1)).backward()
        opt.step()

    return step


def rate(step: Step, batch: int, seconds: float) -> float:
    """Best samples/s of 5 timed windows of `seconds / 5` each, after a warm-up."""
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


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def reset_peak_rss() -> float:
    """Linux: restart the peak-RSS watermark at the current RSS (returned, MiB)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


def measure(name: str, framework: str, seconds: float, threads: int) -> dict[str, float]:
    """In this (fresh) process: samples/s and the peak RSS growth of building and stepping."""
    from threadpoolctl import threadpool_limits

    if framework == "torch":
        import torch
        torch.set_num_threads(threads)
    import dptrain.engine  # noqa: F401 - imported before the baseline, as torch is
    bench = BENCHES[name]
    base = reset_peak_rss()  # imports may have peaked higher than a step does
    with threadpool_limits(limits=threads, user_api="blas"):
        step = (numpy_step if framework == "numpy" else torch_step)(bench)
        samples = rate(step, bench.batch, seconds)
    return {"samples_per_s": samples, "peak_mib": _status_mib("VmHWM") - base}


def run_child(name: str, framework: str, seconds: float, threads: int, no_kernels: bool) -> dict[str, float] | None:
    cmd = [sys.executable, __file__, "--child", name, framework, "--seconds", str(seconds), "--threads", str(threads)]
    env = {**os.environ, **({"DPTRAIN_NO_KERNELS": "1"} if no_kernels else {})}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"{framework} failed", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", choices=[[], *BENCHES], help="models to run (default: all)")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per model, framework and round")
    ap.add_argument("--rounds", type=int, default=5, help="alternating numpy/torch rounds; the median ratio is shown")
    ap.add_argument("--threads", type=int, default=1, help="BLAS / torch threads (default 1)")
    ap.add_argument("--no-kernels", action="store_true", help="turn the engine's compiled kernels off (numpy passes)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.seconds, args.threads)))
        return
    try:
        import torch  # noqa: F401
        frameworks = ("numpy", "torch")
    except ImportError:
        frameworks = ("numpy",)
        print("PyTorch not importable: numpy figures only (pip install torch==2.13.0 for the ratio)")
    from dptrain.engine import kernels
    compiled = "off (--no-kernels)" if args.no_kernels else ("on" if kernels.kernel else "not built")
    print(f"{args.threads} thread(s), {args.rounds} alternating rounds, compiled kernels {compiled}: median "
          f"samples/s of a training step, the median and range of the per-round ratios, peak RSS growth in MiB")
    print(f"{'model':>7} {'batch':>6} {'numpy/s':>9} {'torch/s':>9} {'ratio':>6} {'(range)':>12} "
          f"{'numpy MiB':>10} {'torch MiB':>10}")
    for name in args.models or BENCHES:
        rounds = [{fw: run_child(name, fw, args.seconds, args.threads, args.no_kernels) for fw in frameworks}
                  for _ in range(args.rounds)]
        if any(r["numpy"] is None for r in rounds):
            continue
        ours = [r["numpy"] for r in rounds]
        rate, mib = (statistics.median(x[k] for x in ours) for k in ("samples_per_s", "peak_mib"))
        line = f"{name:>7} {BENCHES[name].batch:>6} {rate:9,.0f}"
        if "torch" in frameworks and all(r["torch"] for r in rounds):
            theirs = [r["torch"] for r in rounds]
            ratios = [a["samples_per_s"] / b["samples_per_s"] for a, b in zip(ours, theirs)]
            t_rate, t_mib = (statistics.median(x[k] for x in theirs) for k in ("samples_per_s", "peak_mib"))
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
            line += f" {t_rate:9,.0f} {statistics.median(ratios):6.2f} {spread:>12} {mib:10.1f} {t_mib:10.1f}"
        else:
            line += f" {'-':>9} {'-':>6} {'':>12} {mib:10.1f} {'-':>10}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
