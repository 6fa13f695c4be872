"""Normalization and sequence ops (layer_norm, group_norm, embedding, unembed, pos_embedding,
matmul, softmax, attention): finite differences on shapes and values drawn by hypothesis,
and PyTorch autograd in float64 (forward, input and parameter gradients)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dptrain.engine import Model, SpecError, gradcheck
from hypothesis import given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=12, deadline=None)


def _against_torch(spec, X, ref, seed=0, rtol=1e-10):
    """Run `spec` (float64, parameters drawn away from their init) and `ref(x, *params)` in torch
    on the same values; compare the output, g_in (float inputs) and every parameter's gradient."""
    rng = np.random.default_rng(seed)
    m = Model(spec, dtype=np.float64)
    theta = m.init_params(seed) + rng.standard_normal(m.num_params) * 0.3
    ints = m.spec.input.dtype == "int"
    G = rng.standard_normal((len(X), *m.output_shape))
    out = m.forward(theta, X).copy()
    g_x, grad = m.backward(G, input_grad=not ints)
    views, gviews = m.views(theta), m.views(grad)
    params = [torch.tensor(views[p.name], requires_grad=True) for p in m.params]
    xt = torch.tensor(X, requires_grad=not ints)
    want = ref(xt, *params)
    want.backward(torch.tensor(G))
    np.testing.assert_allclose(out, want.detach().numpy(), rtol=rtol, atol=1e-12)
    if not ints:
        np.testing.assert_allclose(g_x, xt.grad.numpy(), rtol=rtol, atol=1e-11)
    for p, t in zip(m.params, params):
        np.testing.assert_allclose(gviews[p.name], t.grad.numpy(), rtol=rtol, atol=1e-11, err_msg=p.name)
    return m


def _gradcheck_ok(spec, seed=0, n=3):
    report = gradcheck(spec, seed=seed, n=n, max_per_tensor=12)
    assert report.ok(), "\n".join(report.lines())


# --- normalization ------------------------------------------------------------------------------

@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), affine=st.booleans(),
       eps=st.sampled_from([1e-5, 1e-3, 0.5]), seed=st.integers(0, 1000))
def test_layer_norm_is_pytorchs(shape, affine, eps, seed):
    X = np.random.default_rng(seed).standard_normal((3, *shape)) * 2 + 1
    spec = {"input": shape, "layers": [{"op": "layer_norm", "eps": eps, "affine": affine}]}
    _against_torch(spec, X, lambda x, *gb: F.layer_norm(x, (shape[-1],), *gb, eps=eps), seed)


@SETTINGS
@given(groups=st.integers(1, 3), per_group=st.integers(1, 3), spatial=st.lists(st.integers(1, 4), max_size=2),
       affine=st.booleans(), seed=st.integers(0, 1000))
def test_group_norm_is_pytorchs(groups, per_group, spatial, affine, seed):
    shape = [groups * per_group, *spatial]
    X = np.random.default_rng(seed).standard_normal((3, *shape)) * 2 - 1
    spec = {"input": shape, "layers": [{"op": "group_norm", "groups": groups, "affine": affine}]}
    _against_torch(spec, X, lambda x, *gb: F.group_norm(x, groups, *gb, eps=1e-5), seed)


@SETTINGS
@given(shape=st.lists(st.integers(2, 4), min_size=1, max_size=3), groups=st.sampled_from([1, 2]),
       seed=st.integers(0, 1000))
def test_norms_match_finite_differences(shape, groups, seed):
    shape = [shape[0] * groups, *shape[1:]]
    for op in ({"op": "layer_norm"}, {"op": "group_norm", "groups": groups}):
        _gradcheck_ok({"input": shape, "layers": [op, "tanh", "linear 3"], "loss": "mse"}, seed)


def test_group_norm_needs_groups_dividing_the_channels():
    with pytest.raises(SpecError, match=r"model.layers\[0\] \(group_norm0\).inputs: groups 4 must divide the 6"):
        Model({"input": [6, 3], "layers": [{"op": "group_norm", "groups": 4}]})
    with pytest.raises(SpecError, match=r"model.layers\[0\].eps: must be a positive number"):
        Model({"input": 4, "layers": [{"op": "layer_norm", "eps": 0}]})


# --- embeddings, positions, matmul, softmax -----------------------------------------------------

def _tokens(T, vocab):
    return {"shape": [T], "dtype": "int", "vocab": vocab}


@SETTINGS
@given(T=st.integers(1, 6), vocab=st.integers(1, 7), dim=st.integers(1, 5), seed=st.integers(0, 1000))
def test_embedding_is_pytorchs(T, vocab, dim, seed):
    X = np.random.default_rng(seed).integers(0, vocab, (4, T))  # repeated ids: g_W adds them up
    spec = {"input": _tokens(T, vocab), "layers": [{"op": "embedding", "dim": dim}]}
    _against_torch(spec, X, lambda x, W: F.embedding(x, W), seed)


@SETTINGS
@given(T=st.integers(1, 6), vocab=st.integers(2, 7), dim=st.integers(1, 5), seed=st.integers(0, 1000))
def test_tied_embedding_and_unembed_are_pytorchs_weight_tying(T, vocab, dim, seed):
    X = np.random.default_rng(seed).integers(0, vocab, (3, T))
    spec = {"input": _tokens(T, vocab), "nodes": [
        {"name": "emb", "op": "embedding", "inputs": "x", "dim": dim},
        {"name": "pos", "op": "pos_embedding", "inputs": "emb"},
        {"name": "out", "op": "unembed", "inputs": "pos", "share": "emb"}]}
    m = _against_torch(spec, X, lambda x, W, P: (F.embedding(x, W) + P) @ W.T, seed)
    assert [p.name for p in m.params] == ["emb.W", "pos.P"]


def test_the_tied_gradient_is_the_sum_of_both_uses():
    rng = np.random.default_rng(0)
    nodes = [{"name": "emb", "op": "embedding", "inputs": "x", "dim": 4},
             {"name": "h", "op": "tanh", "inputs": "emb"},
             {"name": "out", "op": "unembed", "inputs": "h"}]
    untied = Model({"input": _tokens(5, 6), "nodes": nodes, "loss": "cross_entropy"}, dtype=np.float64)
    tied = Model({"input": _tokens(5, 6), "nodes": nodes[:2] + [{**nodes[2], "share": "emb"}],
                  "loss": "cross_entropy"}, dtype=np.float64)
    theta = tied.init_params(0)
    both = np.concatenate([theta, theta])  # the untied model with its two tables equal
    X, y = rng.integers(0, 6, (7, 5)), rng.integers(0, 6, (7, 5))
    g = tied.grad_sum(theta, X, y).grad
    gu = untied.views(untied.grad_sum(both, X, y).grad)
    np.testing.assert_allclose(g, (gu["emb.W"] + gu["out.W"]).ravel(), rtol=1e-13, atol=1e-15)


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), seed=st.integers(0, 1000))
def test_pos_embedding_and_softmax_are_pytorchs(shape, seed):
    X = np.random.default_rng(seed).standard_normal((3, *shape)) * 3
    _against_torch({"input": shape, "layers": ["pos_embedding"]}, X, lambda x, P: x + P, seed)
    _against_torch({"input": shape, "layers": ["softmax"]}, X, lambda x: F.softmax(x, -1), seed)


@SETTINGS
@given(lead=st.lists(st.integers(1, 3), max_size=2), k=st.integers(1, 5), n=st.integers(1, 5),
       seed=st.integers(0, 1000))
def test_matmul_is_pytorchs(lead, k, n, seed):
    """x (..., k, k) @ linear_n(x) (..., k, n): both operands depend on x, so g_x adds two terms."""
    X = np.random.default_rng(seed).standard_normal((3, *lead, k, k))
    spec = {"input": [*lead, k, k], "nodes": [{"name": "b", "op": "linear", "inputs": "x", "units": n},
                                               {"name": "ab", "op": "matmul", "inputs": ["x", "b"]}]}
    _against_torch(spec, X, lambda x, W, b: torch.matmul(x, x @ W + b), seed)


@SETTINGS
@given(T=st.integers(1, 5), vocab=st.integers(2, 6), dim=st.integers(1, 4), seed=st.integers(0, 1000))
def test_sequence_ops_match_finite_differences(T, vocab, dim, seed):
    _gradcheck_ok({"input": _tokens(T, vocab), "nodes": [
        {"name": "emb", "op": "embedding", "inputs": "x", "dim": dim},
        {"name": "pos", "op": "pos_embedding", "inputs": "emb"},
        {"name": "p", "op": "softmax", "inputs": "pos"},
        {"name": "out", "op": "unembed", "inputs": "p", "share": "emb"}], "loss": "cross_entropy"}, seed)
    _gradcheck_ok({"input": [2, dim, dim], "nodes": [
        {"name": "b", "op": "linear", "inputs": "x", "units": T},
        {"name": "ab", "op": "matmul", "inputs": ["x", "b"]}], "loss": "mse"}, seed)


def test_sequence_spec_errors_are_named():
    with pytest.raises(SpecError, match=r"model.nodes\[1\] \(ab\).inputs: matmul needs \(..., m, k\) @ "
                                        r"\(..., k, n\) with equal leading axes, got \[3, 4\] @ \[3, 5\]"):
        Model({"input": [3, 4], "nodes": [{"name": "b", "op": "linear", "inputs": "x", "units": 5},
                                          {"name": "ab", "op": "matmul", "inputs": ["x", "b"]}]})
    with pytest.raises(SpecError, match=r"model.layers\[0\] \(embedding0\).inputs: op 'embedding' reads integer"):
        Model({"input": [8], "layers": [{"op": "embedding", "dim": 4}]})
    with pytest.raises(SpecError, match=r"model.layers\[0\] \(unembed0\).inputs: needs the model input's vocab"):
        Model({"input": [8, 4], "layers": ["unembed"]})
    with pytest.raises(SpecError, match=r"model.layers\[0\].dim: required by op 'embedding'"):
        Model({"input": _tokens(8, 5), "layers": ["embedding"]})
    with pytest.raises(SpecError, match=r"model.nodes\[1\] \(out\).share: parameters differ"):
        Model({"input": _tokens(8, 5), "nodes": [{"name": "emb", "op": "embedding", "inputs": "x", "dim": 4},
                                                 {"name": "out", "op": "linear", "inputs": "emb", "units": 4,
                                                  "share": "emb"}]})
