"""Every op and loss against central finite differences (float64, rel. error <= 1e-6)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dptrain.engine import gradcheck
from dptrain.engine.registry import OPS
from hypothesis import given, settings
from hypothesis import strategies as st

TOL = 1e-6
POINTWISE = ["sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "softplus", "prelu",
             "exp", "log", "sin", "cos", "pow"]
BINARY = ["add", "sub", "mul", "div", "concat"]
ATTRS = {"leaky_relu": {"alpha": 0.1}, "elu": {"alpha": 0.7}, "pow": {"exponent": 3.0}}


def _spec(op: str, width: int, loss: str = "mse") -> dict:
    """x -> op -> linear -> loss; binary ops take the two halves of x."""
    if op in BINARY:
        nodes = [{"name": "a", "op": "slice", "inputs": ["x"], "start": 0, "stop": width},
                 {"name": "b", "op": "slice", "inputs": ["x"], "start": width, "stop": 2 * width},
                 {"name": "h", "op": op, "inputs": ["a", "b"]}]
        n_in = 2 * width
    else:
        nodes = [{"name": "h", "op": op, "inputs": ["x"], **ATTRS.get(op, {})}]
        n_in = width
    nodes.append({"name": "out", "op": "linear", "inputs": ["h"], "units": 3})
    return {"input": n_in, "nodes": nodes, "output": "out", "loss": loss}


def _inputs(op: str, n: int, width: int, seed: int) -> np.ndarray:
    """Values away from kinks (relu at 0) and domain edges (log, div, pow at 0)."""
    rng = np.random.default_rng(seed)
    mag = rng.uniform(0.3, 1.5, size=(n, width))
    positive = op in ("log", "div", "pow")
    return mag if positive else mag * rng.choice([-1.0, 1.0], size=mag.shape)


ELSEWHERE = {  # ops checked in their own test files (finite differences and PyTorch)
    "prelu": "test_hardening_engine.py", "dropout": "test_engine_dropout.py", "batch_norm": "test_engine_batchnorm.py",
    "standardize": "test_standardize.py",
    **dict.fromkeys(["conv2d", "conv1d", "max_pool2d", "avg_pool2d", "global_avg_pool", "flatten", "reshape",
                     "transpose"], "test_engine_vision.py"),
    **dict.fromkeys(["layer_norm", "group_norm", "embedding", "unembed", "pos_embedding", "matmul", "softmax",
                     "attention"], "test_engine_sequence.py"),
}


def test_every_registered_op_is_covered():
    here = Path(__file__).parent
    assert set(OPS) == set(POINTWISE) | set(BINARY) | {"linear", "slice"} | set(ELSEWHERE)
    for op, test_file in ELSEWHERE.items():
        assert f'"{op}"' in (here / test_file).read_text(), f"{op} is not tested in {test_file}"


@pytest.mark.parametrize("op", POINTWISE + BINARY)
@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 5), width=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_op_matches_finite_differences(op, n, width, seed):
    spec = _spec(op, width)
    X = _inputs(op, n, 2 * width if op in BINARY else width, seed)
    y = np.random.default_rng(seed + 1).standard_normal((n, 3))
    report = gradcheck(spec, seed=seed, X=X, y=y)
    assert report.max_rel_error <= TOL, report


@pytest.mark.parametrize("loss", ["mse", "softmax_cross_entropy", "binary_cross_entropy"])
@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 6), width=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_loss_matches_finite_differences(loss, n, width, seed):
    spec = {"input": width, "layers": ["linear 4", "tanh", "linear 3"], "loss": loss}
    report = gradcheck(spec, seed=seed, n=n)
    assert report.max_rel_error <= TOL, report


def test_linear_without_bias():
    spec = {"input": 4, "layers": [{"op": "linear", "units": 3, "bias": False}, "tanh", "linear 2"],
            "loss": "mse"}
    assert gradcheck(spec).max_rel_error <= TOL


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    from dptrain.engine import Model

    model = Model({"input": 2, "layers": ["linear 3"], "loss": "cross_entropy"}, dtype=np.float64)
    theta = model.init_params(0) * 1e4
    s = model.grad_sum(theta, np.array([[50.0, -50.0], [-30.0, 80.0]]), np.array([0, 2]))
    assert np.isfinite(s.loss) and np.all(np.isfinite(s.grad))
