"""`--layout torch`: a job's weights under PyTorch's names and layouts load into the same
architecture with `load_state_dict(strict=True)`, and predict what the engine predicts."""
from __future__ import annotations

import numpy as np
import torch
from dptrain.engine import Model
from dptrain.export import torch_state_dict
from torch import nn


def trained_like(spec: dict, seed: int = 0) -> tuple[Model, np.ndarray, dict[str, np.ndarray]]:
    """A model whose parameters are away from their init (running statistics too)."""
    m = Model(spec)
    theta = m.init_params(seed)
    theta += np.random.default_rng(seed).standard_normal(theta.size).astype(theta.dtype) * 0.1
    for p in m.params:
        if p.name.endswith("running_var"):
            theta[p.offset:p.offset + p.size] = np.abs(theta[p.offset:p.offset + p.size]) + 0.5
    return m, theta, {k: v.copy() for k, v in m.views(theta).items()}


def load(net: nn.Module, spec: dict, weights: dict) -> nn.Module:
    state = {k: torch.from_numpy(v) for k, v in torch_state_dict(spec, weights).items()}
    net.load_state_dict(state, strict=True)
    return net.eval()


def same_predictions(m: Model, theta: np.ndarray, net: nn.Module, X: np.ndarray) -> None:
    with torch.no_grad():
        theirs = net(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(m.predict(theta, X), theirs, rtol=1e-4, atol=1e-5)


def test_a_cnn_with_batch_norm_and_dropout_loads_into_nn_sequential():
    spec = {"input": [1, 12, 12], "layers": ["conv2d 4 3", "batch_norm", "relu", "max_pool2d 2", "dropout 0.3",
                                             "flatten", "linear 16", "prelu", "linear 5"], "loss": "cross_entropy"}
    m, theta, weights = trained_like(spec)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.3),
                        nn.Flatten(), nn.Linear(100, 16), nn.PReLU(16), nn.Linear(16, 5))
    load(net, {"model": spec}, weights)
    X = np.random.default_rng(1).standard_normal((6, 1, 12, 12)).astype(np.float32)
    same_predictions(m, theta, net, X)


def test_an_mlp_with_layer_norm_and_a_conv1d_loads():
    spec = {"input": [2, 10], "layers": ["conv1d 3 3", "tanh", "flatten", "layer_norm", "linear 4"]}
    m, theta, weights = trained_like(spec, seed=3)
    net = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.LayerNorm(24), nn.Linear(24, 4))
    load(net, spec, weights)
    same_predictions(m, theta, net, np.random.default_rng(2).standard_normal((5, 2, 10)).astype(np.float32))


class TinyGPT(nn.Module):
    """The DAG below as a PyTorch module whose attributes are named like its nodes."""

    def __init__(self, vocab: int, T: int, d: int, heads: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(T, d))
        self.ln = nn.LayerNorm(d)
        self.att = nn.MultiheadAttention(d, heads, batch_first=True)
        self.out = nn.Linear(d, vocab, bias=False)
        self.register_buffer("mask", torch.triu(torch.full((T, T), float("-inf")), 1), persistent=False)

    def forward(self, ids):
        h = self.tok(ids) + self.pos
        a, _ = self.att(*[self.ln(h)] * 3, attn_mask=self.mask, need_weights=False)
        return self.out(h + a)


def test_a_dag_with_attention_loads_by_node_name():
    spec = {"input": {"shape": [6], "dtype": "int", "vocab": 11}, "output": "out", "nodes": [
        {"name": "tok", "op": "embedding", "inputs": ["x"], "dim": 8},
        {"name": "pos", "op": "pos_embedding", "inputs": ["tok"]},
        {"name": "ln", "op": "layer_norm", "inputs": ["pos"]},
        {"name": "att", "op": "attention", "inputs": ["ln"], "heads": 2, "causal": True},
        {"name": "res", "op": "add", "inputs": ["pos", "att"]},
        {"name": "out", "op": "unembed", "inputs": ["res"]}]}
    m, theta, weights = trained_like(spec, seed=5)
    net = load(TinyGPT(11, 6, 8, 2), spec, weights)
    same_predictions(m, theta, net, np.random.default_rng(3).integers(0, 11, (4, 6)))


def test_names_follow_the_spec_form():
    seq = torch_state_dict({"input": 3, "layers": ["linear 4", "relu", "linear 2"]},
                           {"linear0.W": np.ones((3, 4)), "linear0.b": np.zeros(4), "linear2.W": np.ones((4, 2)),
                            "linear2.b": np.zeros(2)})
    assert {k: v.shape for k, v in seq.items()} == {"0.weight": (4, 3), "0.bias": (4,), "2.weight": (2, 4),
                                                    "2.bias": (2,)}
    dag = torch_state_dict({"input": 3, "nodes": [{"name": "h", "op": "linear", "inputs": ["x"], "units": 4}]},
                           {"h.W": np.ones((3, 4)), "h.b": np.zeros(4)})
    assert sorted(dag) == ["h.bias", "h.weight"]
