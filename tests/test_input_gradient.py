"""Backpropagation to the data as a feature: the InputGradient rpc, `dptrain saliency` and
`dptrain visualize`, against a real server; the engine's gradients against finite
differences and PyTorch."""
from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
from dptrain.cli import main
from dptrain.engine import Model, SpecError

from .test_service_e2e import JOB

SMALL = {**JOB, "epochs": 1, "workers": 1}


def test_the_engine_gradient_is_pytorchs():
    m = Model({"input": 6, "layers": ["linear 8", "tanh", "linear 3"]}, dtype=np.float64)
    theta = m.init_params(0)
    X = np.random.default_rng(0).standard_normal((4, 6))
    g, out = m.input_gradient(theta, X, unit=2)
    v = m.views(theta)
    xt = torch.tensor(X, requires_grad=True)
    z = torch.tanh(xt @ torch.tensor(v["linear0.W"]) + torch.tensor(v["linear0.b"])) @ torch.tensor(
        v["linear2.W"]) + torch.tensor(v["linear2.b"])
    z[:, 2].sum().backward()
    np.testing.assert_allclose(g, xt.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(out, z.detach().numpy(), rtol=1e-12)
    hidden, h_out = m.input_gradient(theta, X, node="tanh1")  # each example's largest hidden unit
    assert h_out.shape == (4, 8) and hidden.shape == X.shape
    with pytest.raises(SpecError, match="node: unknown node 'nope'"):
        m.input_gradient(theta, X, node="nope")
    with pytest.raises(SpecError, match=r"unit: must be in \[0, 3\)"):
        m.input_gradient(theta, X, unit=3)


@pytest.fixture(scope="module")
def trained(server):
    from dptrain.client import Client

    with Client(server.address) as c:
        job = c.submit(SMALL, name="saliency")
        c.wait(job.id)
        return job.id


def test_the_rpc_returns_the_gradient_of_the_trained_model(client, trained):
    X = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    g, out = client.input_gradient(trained, X, unit=4)
    _, _, weights = client.weights(trained)
    m = Model(SMALL["model"])
    theta = np.concatenate([weights[p.name].ravel() for p in m.params])
    want, want_out = m.input_gradient(theta, X, unit=4)
    np.testing.assert_array_equal(g, want)
    np.testing.assert_array_equal(out, want_out)


@pytest.mark.parametrize("kwargs, code, says", [
    ({"node": "nope"}, grpc.StatusCode.INVALID_ARGUMENT, "unknown node"),
    ({"unit": 10}, grpc.StatusCode.INVALID_ARGUMENT, "unit: must be in [0, 10)"),
    ({"node": "n" * 65}, grpc.StatusCode.INVALID_ARGUMENT, "node"),
])
def test_bad_requests_are_named(client, trained, kwargs, code, says):
    with pytest.raises(grpc.RpcError) as e:
        client.input_gradient(trained, np.zeros((1, 64), np.float32), **kwargs)
    assert e.value.code() == code and says in e.value.details()


def test_inputs_of_the_wrong_shape_are_named(client, trained):
    with pytest.raises(grpc.RpcError) as e:
        client.input_gradient(trained, np.zeros((2, 63), np.float32))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "inputs: must have shape (n, 64)" in e.value.details()


def test_saliency_and_visualize_commands(server, trained, tmp_path):
    X = np.random.default_rng(2).standard_normal((3, 64)).astype(np.float32)
    np.savez(tmp_path / "x.npz", X=X)
    addr = ["--address", server.address]
    assert main(["saliency", trained, str(tmp_path / "x.npz"), "-o", str(tmp_path / "g.npz"), *addr]) == 0
    with np.load(tmp_path / "g.npz") as f:
        assert f["gradients"].shape == (3, 64) and f["outputs"].shape == (3, 10)
    assert main(["visualize", trained, "--unit", "3", "--steps", "20", "-o", str(tmp_path / "u.npz"), *addr]) == 0
    with np.load(tmp_path / "u.npz") as f:
        x = f["input"]
    assert x.shape == (64,)
    from dptrain.client import Client

    with Client(server.address) as c:  # the climb raised unit 3 above where it starts (x = 0)
        before, after = c.predict(trained, np.zeros((1, 64), np.float32)), c.predict(trained, x[None])
    assert after[0, 3] > before[0, 3] + 1.0
