"""Op throughput: forward + backward of one op, numpy engine vs PyTorch, 1 BLAS/torch thread.

    python bench/ops.py                  # every case
    python bench/ops.py attention        # the cases whose name contains a word

Each case is a one-op model (float32) run through Model.forward and Model.backward (input
and parameter gradients), and the same op in PyTorch with the same weights (gradients set
to None before each step, as zero_grad does). `speed` is PyTorch's time over the engine's:
above 1, the engine is faster. Median of repeated steps after a warm-up (bench/timing.py).
To add an op, append a Case: its one-op spec and a function building the PyTorch step.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from dptrain.engine import Model
from threadpoolctl import threadpool_limits
from timing import median_ms

Step = Callable[[], None]


@dataclass(frozen=True)
class Case:
    name: str
    spec: dict[str, Any]  # a model of one op: input and layers, no loss
    batch: int
    torch_step: Callable[[Model, np.ndarray, np.ndarray, np.ndarray], Step]  # (model, theta, X, g_out) -> step


def _inputs(m: Model, batch: int, rng: np.random.Generator) -> np.ndarray:
    shape = (batch, *m.input_shape)
    if m.spec.input.dtype == "int":
        return rng.integers(0, m.spec.input.vocab, shape)
    return rng.standard_normal(shape, dtype=np.float32)


def numpy_step(m: Model, theta: np.ndarray, X: np.ndarray, g_out: np.ndarray) -> Step:
    grad, ints = np.empty_like(theta), m.spec.input.dtype == "int"

    def step() -> None:
        m.forward(theta, X)
        m.backward(g_out, grad=grad, input_grad=not ints)

    return step


def _torch_params(m: Model, theta: np.ndarray) -> dict[str, torch.Tensor]:
    """The engine's parameters as leaf tensors, by their name inside the op ("W", "gamma")."""
    return {name.split(".", 1)[1]: torch.tensor(v, requires_grad=True) for name, v in m.views(theta).items()}


def _torch_fn_step(fn: Callable[..., torch.Tensor]) -> Callable[[Model, np.ndarray, np.ndarray, np.ndarray], Step]:
    """A PyTorch step computing fn(x, params) and its backward, with every gradient reset first."""
    def build(m: Model, theta: np.ndarray, X: np.ndarray, g_out: np.ndarray) -> Step:
        p = _torch_params(m, theta)
        x = torch.tensor(X, requires_grad=X.dtype.kind == "f")
        g = torch.tensor(g_out)
        leaves = [x, *p.values()]

        def step() -> None:
            for t in leaves:
                t.grad = None
            fn(x, p).backward(g)

        return step
    return build


def _mha_step(causal: bool) -> Callable[[Model, np.ndarray, np.ndarray, np.ndarray], Step]:
    """nn.MultiheadAttention (batch_first) with the engine's weights; causal via attn_mask."""
    def build(m: Model, theta: np.ndarray, X: np.ndarray, g_out: np.ndarray) -> Step:
        T, D = m.input_shape
        heads = m.spec.nodes[0].attrs["heads"]
        v = {name.split(".", 1)[1]: a for name, a in m.views(theta).items()}
        mha = torch.nn.MultiheadAttention(D, heads, batch_first=True)
        with torch.no_grad():
            mha.in_proj_weight.copy_(torch.tensor(np.concatenate([v["Wq"], v["Wk"], v["Wv"]], axis=1).T))
            mha.in_proj_bias.copy_(torch.tensor(np.concatenate([v["bq"], v["bk"], v["bv"]])))
            mha.out_proj.weight.copy_(torch.tensor(v["Wo"].T))
            mha.out_proj.bias.copy_(torch.tensor(v["bo"]))
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1) if causal else None
        x = torch.tensor(X, requires_grad=True)
        g = torch.tensor(g_out)

        def step() -> None:
            x.grad = None
            mha.zero_grad(set_to_none=True)
            out, _ = mha(x, x, x, attn_mask=mask, need_weights=False)
            out.backward(g)

        return step
    return build


CASES: list[Case] = [
    Case("linear B1024 784 -> 512 (GEMMs)", {"input": 784, "layers": ["linear 512"]}, 1024,
         _torch_fn_step(lambda x, p: x @ p["W"] + p["b"])),
    Case("layer_norm B16 T64 D128", {"input": [64, 128], "layers": ["layer_norm"]}, 16,
         _torch_fn_step(lambda x, p: F.layer_norm(x, (x.shape[-1],), p["gamma"], p["beta"]))),
    Case("group_norm B16 C32x16x16 G8", {"input": [32, 16, 16], "layers": [{"op": "group_norm", "groups": 8}]},
         16, _torch_fn_step(lambda x, p: F.group_norm(x, 8, p["gamma"], p["beta"]))),
    Case("embedding B16 T64 V1000 D128",
         {"input": {"shape": [64], "dtype": "int", "vocab": 1000}, "layers": [{"op": "embedding", "dim": 128}]},
         16, _torch_fn_step(lambda x, p: F.embedding(x, p["W"]))),
    Case("softmax B16 4x64x64", {"input": [4, 64, 64], "layers": ["softmax"]}, 16,
         _torch_fn_step(lambda x, p: F.softmax(x, -1))),
    Case("attention B16 T64 D128 H4", {"input": [64, 128], "layers": [{"op": "attention", "heads": 4}]}, 16,
         _mha_step(causal=False)),
    Case("attention causal B16 T64 D128 H4",
         {"input": [64, 128], "layers": [{"op": "attention", "heads": 4, "causal": True}]}, 16,
         _mha_step(causal=True)),
    Case("conv2d B32 1x28x28 -> 16 k5", {"input": [1, 28, 28], "layers": [{"op": "conv2d", "out": 16, "kernel": 5}]},
         32, _torch_fn_step(lambda x, p: F.conv2d(x, p["W"], p["b"]))),
    Case("conv2d B32 16x12x12 -> 32 k3", {"input": [16, 12, 12], "layers": [{"op": "conv2d", "out": 32, "kernel": 3}]},
         32, _torch_fn_step(lambda x, p: F.conv2d(x, p["W"], p["b"]))),
    Case("conv2d B32 32x16x16 -> 32 k3 p1 g4",
         {"input": [32, 16, 16], "layers": [{"op": "conv2d", "out": 32, "kernel": 3, "padding": 1, "groups": 4}]},
         32, _torch_fn_step(lambda x, p: F.conv2d(x, p["W"], p["b"], padding=1, groups=4))),
    Case("conv1d B32 64x128 -> 64 k5 p2", {"input": [64, 128], "layers": [{"op": "conv1d", "out": 64, "kernel": 5,
                                                                         "padding": 2}]},
         32, _torch_fn_step(lambda x, p: F.conv1d(x, p["W"], p["b"], padding=2))),
    Case("max_pool2d B32 16x24x24 k2", {"input": [16, 24, 24], "layers": [{"op": "max_pool2d", "kernel": 2}]}, 32,
         _torch_fn_step(lambda x, p: F.max_pool2d(x, 2))),
    Case("max_pool2d B32 32x16x16 k3 s2 p1",
         {"input": [32, 16, 16], "layers": [{"op": "max_pool2d", "kernel": 3, "stride": 2, "padding": 1}]}, 32,
         _torch_fn_step(lambda x, p: F.max_pool2d(x, 3, 2, 1))),
    Case("avg_pool2d B32 16x24x24 k2", {"input": [16, 24, 24], "layers": [{"op": "avg_pool2d", "kernel": 2}]}, 32,
         _torch_fn_step(lambda x, p: F.avg_pool2d(x, 2))),
    Case("global_avg_pool B32 64x8x8", {"input": [64, 8, 8], "layers": ["global_avg_pool"]}, 32,
         _torch_fn_step(lambda x, p: F.adaptive_avg_pool2d(x, 1).flatten(1))),
    Case("flatten B32 16x4x4", {"input": [16, 4, 4], "layers": ["flatten"]}, 32,
         _torch_fn_step(lambda x, p: x.flatten(1))),
    Case("transpose B16 64x128", {"input": [64, 128], "layers": [{"op": "transpose", "axes": [1, 0]}]}, 16,
         _torch_fn_step(lambda x, p: x.permute(0, 2, 1).contiguous())),
]


def run(case: Case) -> tuple[float, float]:
    """(engine ms, PyTorch ms) per forward + backward step."""
    m = Model(case.spec)
    theta = m.init_params(0)
    rng = np.random.default_rng(0)
    X = _inputs(m, case.batch, rng)
    g_out = rng.standard_normal((case.batch, *m.output_shape), dtype=np.float32)
    return median_ms(numpy_step(m, theta, X, g_out), reps=100), median_ms(case.torch_step(m, theta, X, g_out), reps=100)


def main(words: list[str]) -> None:
    torch.set_num_threads(1)
    print(f"{'case':36s} {'numpy ms':>9s} {'torch ms':>9s} {'speed':>6s}")
    with threadpool_limits(1):
        for case in CASES:
            if words and not any(w in case.name for w in words):
                continue
            ours, theirs = run(case)
            print(f"{case.name:36s} {ours:9.3f} {theirs:9.3f} {theirs / ours:5.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
