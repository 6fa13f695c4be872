"""Batch norm per micro-chunk: per chunk, PyTorch's BatchNorm in training mode (forward,
gradients, running statistics); evaluation uses the running statistics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from dptrain.engine import Context, Model, SpecError


def _train_ctx(n):
    return Context(0, 0, np.arange(n))


@pytest.mark.parametrize("shape", [[6], [3, 5, 5], [2, 7]])
def test_one_chunk_is_pytorchs_batchnorm_in_training(shape):
    m = Model({"input": shape, "nodes": [{"name": "bn", "op": "batch_norm", "inputs": ["x"]}]}, dtype=np.float64)
    theta = m.init_params(0)
    v = m.views(theta)
    rng = np.random.default_rng(0)
    v["bn.gamma"][:] = rng.uniform(0.5, 2, v["bn.gamma"].shape)
    v["bn.beta"][:] = rng.standard_normal(v["bn.beta"].shape)
    X = rng.standard_normal((4, *shape)) * 3 + 1
    g = rng.standard_normal((4, *shape))
    out = m.forward(theta, X, _train_ctx(4)).copy()
    g_x, grad = m.backward(g, input_grad=True)
    bn = {1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm2d}[len(shape)](shape[0]).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(v["bn.gamma"]))
        bn.bias.copy_(torch.tensor(v["bn.beta"]))
    xt = torch.tensor(X, requires_grad=True)
    want = bn(xt)
    want.backward(torch.tensor(g))
    np.testing.assert_allclose(out, want.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g_x, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    gv = m.views(grad)
    np.testing.assert_allclose(gv["bn.gamma"], bn.weight.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(gv["bn.beta"], bn.bias.grad.numpy(), rtol=1e-10)
    assert not gv["bn.running_mean"].any() and not gv["bn.running_var"].any()  # never trained


def test_running_statistics_follow_pytorch_and_serve_evaluation():
    spec = {"input": 6, "layers": ["linear 8", {"op": "batch_norm", "momentum": 0.3}, "relu", "linear 3"],
            "loss": "cross_entropy"}
    m = Model(spec, dtype=np.float64)
    theta = m.init_params(0)
    rng = np.random.default_rng(1)
    bn = torch.nn.BatchNorm1d(8, momentum=0.3).double()
    for step in range(3):  # one chunk per step: exactly PyTorch's update
        X = rng.standard_normal((5, 6))
        s = m.grad_sum(theta, X, np.arange(5) % 3, ctx=Context(0, step, np.arange(5)))
        before = m.buffers_of(theta)
        m.update_buffers(theta, before, s.stats)
        v = m.views(theta)
        h = torch.tensor(X @ v["linear0.W"] + v["linear0.b"])
        bn(h)
        np.testing.assert_allclose(v["batch_norm1.running_mean"], bn.running_mean.numpy(), rtol=1e-12)
        np.testing.assert_allclose(v["batch_norm1.running_var"], bn.running_var.numpy(), rtol=1e-12)
    bn.eval()
    X = rng.standard_normal((4, 6))
    v = m.views(theta)
    hidden = Model({"input": 6, "layers": ["linear 8", "batch_norm"]}, dtype=np.float64)
    hv = hidden.views(th := hidden.init_params(0))
    for k in ("linear0.W", "linear0.b"):
        hv[k][:] = v[k]
    for k in ("gamma", "beta", "running_mean", "running_var"):
        hv[f"batch_norm1.{k}"][:] = v[f"batch_norm1.{k}"]
    want = bn(torch.tensor(X @ v["linear0.W"] + v["linear0.b"])).detach().numpy()
    np.testing.assert_allclose(hidden.forward(th, X), want, rtol=1e-12, atol=1e-12)  # no context: evaluation


def test_chunk_statistics_add_up_to_the_step_average():
    """Two chunks' stats summed along the tree = their example-weighted average."""
    m = Model({"input": 4, "layers": ["batch_norm", "linear 2"], "loss": "mse"}, dtype=np.float64)
    theta = m.init_params(0)
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((7, 4)), rng.standard_normal((7, 2))
    a = m.grad_sum(theta, X[:4], y[:4], ctx=Context(0, 0, np.arange(4))).stats
    b = m.grad_sum(theta, X[4:], y[4:], ctx=Context(0, 0, np.arange(4, 7))).stats
    total = a + b
    assert total[0] == 7
    want_mean = (X[:4].mean(0) * 4 + X[4:].mean(0) * 3) / 7
    np.testing.assert_allclose(total[1:5] / total[0], want_mean, rtol=1e-12)


def test_backward_in_training_matches_finite_differences():
    spec = {"input": [2, 3, 3], "nodes": [
        {"name": "bn", "op": "batch_norm", "inputs": ["x"]}, {"name": "a", "op": "tanh", "inputs": ["bn"]},
        {"name": "out", "op": "linear", "inputs": ["a"], "units": 2}], "loss": "mse"}
    m = Model(spec, dtype=np.float64)
    theta = m.init_params(0)
    rng = np.random.default_rng(3)
    theta += rng.standard_normal(theta.shape) * 0.1
    X, y = rng.standard_normal((5, 2, 3, 3)), rng.standard_normal((5, 2, 3, 2))
    ctx = _train_ctx(5)
    grad = m.grad_sum(theta, X, y, ctx=ctx).grad.copy()
    trained = [p for p in m.params if p.trainable]
    for p in trained:
        for j in rng.choice(p.size, min(p.size, 6), replace=False):
            i, h = p.offset + j, 1e-6
            up, down = theta.copy(), theta.copy()
            up[i] += h
            down[i] -= h
            fd = (m.grad_sum(up, X, y, ctx=ctx).loss - m.grad_sum(down, X, y, ctx=ctx).loss) / (2 * h)
            assert fd == pytest.approx(grad[i], rel=1e-5, abs=1e-7), p.name


def test_bad_attributes_are_named():
    with pytest.raises(SpecError, match=r"model.layers\[0\].momentum: must be a number in \[0, 1\)"):
        Model({"input": 4, "layers": [{"op": "batch_norm", "momentum": 2}]})
