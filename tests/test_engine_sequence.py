"""Normalization and sequence ops (layer_norm, group_norm, embedding, unembed, pos_embedding,
matmul, softmax, attention): finite differences on shapes and values drawn by hypothesis,
and PyTorch autograd in float64 (forward, input and parameter gradients)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dptrain.engine import Model, SpecError, gradcheck
from dptrain.engine.sequence import scatter_add_rows
from hypothesis import given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=25, deadline=None)


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
    """Signs alternate along each example, so every normalised row (>= 2 values) has a standard
    deviation >= 0.5: near-equal values would put curvature ~1/sd^5 inside the stencil."""
    shape = [shape[0] * groups, *shape[1:]]
    rng = np.random.default_rng(seed)
    X = rng.uniform(0.5, 1.5, (3, *shape)) * (-1.0) ** np.arange(np.prod(shape)).reshape(shape)
    for op in ({"op": "layer_norm"}, {"op": "group_norm", "groups": groups}):
        y = rng.standard_normal((3, *shape[:-1], 3))
        report = gradcheck({"input": shape, "layers": [op, "tanh", "linear 3"], "loss": "mse"}, seed=seed, X=X, y=y,
                           max_per_tensor=12)
        assert report.ok(), "\n".join(report.lines())


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_embedding_gradient_has_np_add_ats_bits(dtype):
    """The scatter-add sums each id's rows in position order, as np.add.at does."""
    rng = np.random.default_rng(4)
    ids, rows = rng.integers(0, 50, 3000), rng.standard_normal((3000, 7)).astype(dtype)
    want = np.zeros((60, 7), dtype)
    np.add.at(want, ids, rows)
    np.testing.assert_array_equal(scatter_add_rows(ids, rows, np.full((60, 7), np.nan, dtype)), want)


# --- attention ------------------------------------------------------------------------------------

def _torch_attention(heads, causal):
    """A hand-written reference: x (..., T, D) and the op's parameters in its order."""
    def ref(x, Wq, Wk, Wv, Wo, bq=0.0, bk=0.0, bv=0.0, bo=0.0):
        *lead, T, D = x.shape
        dh = D // heads

        def split(t):
            return t.reshape(*lead, T, heads, dh).transpose(-2, -3)  # (..., heads, T, dh)

        q, k, v = split(x @ Wq + bq), split(x @ Wk + bk), split(x @ Wv + bv)
        s = q @ k.transpose(-1, -2) / dh ** 0.5
        if causal:
            s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        return (F.softmax(s, -1) @ v).transpose(-2, -3).reshape(*lead, T, D) @ Wo + bo
    return ref


@SETTINGS
@given(lead=st.lists(st.integers(1, 2), max_size=1), T=st.integers(1, 6), heads=st.integers(1, 3),
       dh=st.integers(1, 3), causal=st.booleans(), bias=st.booleans(), seed=st.integers(0, 1000))
def test_attention_is_pytorchs(lead, T, heads, dh, causal, bias, seed):
    X = np.random.default_rng(seed).standard_normal((3, *lead, T, heads * dh))
    spec = {"input": [*lead, T, heads * dh], "layers": [{"op": "attention", "heads": heads, "causal": causal,
                                                         "bias": bias}]}
    m = _against_torch(spec, X, _torch_attention(heads, causal), seed)
    if causal:  # masked positions: exactly zero probability
        P = m.graph.ops["attention0"].P
        assert not P[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]].any()
        np.testing.assert_allclose(P.sum(-1), 1, rtol=1e-14)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_is_nn_multihead_attention_with_the_same_weights(causal):
    T, D, heads = 6, 8, 2
    mha = torch.nn.MultiheadAttention(D, heads, batch_first=True).double()
    mask = torch.ones(T, T, dtype=torch.bool).triu(1) if causal else None

    def ref(x, Wq, Wk, Wv, Wo, bq, bk, bv, bo):
        state = {"in_proj_weight": torch.cat([Wq, Wk, Wv], 1).T, "in_proj_bias": torch.cat([bq, bk, bv]),
                 "out_proj.weight": Wo.T, "out_proj.bias": bo}
        out, _ = torch.func.functional_call(mha, state, (x, x, x), {"attn_mask": mask, "need_weights": False})
        return out

    X = np.random.default_rng(5).standard_normal((4, T, D))
    _against_torch({"input": [T, D], "layers": [{"op": "attention", "heads": heads, "causal": causal}]}, X, ref)


@SETTINGS
@given(T=st.integers(1, 4), heads=st.integers(1, 2), dh=st.integers(1, 3), causal=st.booleans(),
       bias=st.booleans(), seed=st.integers(0, 1000))
def test_attention_matches_finite_differences(T, heads, dh, causal, bias, seed):
    _gradcheck_ok({"input": [T, heads * dh], "layers": [
        {"op": "attention", "heads": heads, "causal": causal, "bias": bias}], "loss": "mse"}, seed)


def _block(T=5, vocab=7, D=8, heads=2):
    """A 1-layer pre-norm transformer language model, its output projection tied to the embedding."""
    return {"input": _tokens(T, vocab), "loss": "cross_entropy", "output": "logits", "nodes": [
        {"name": "emb", "op": "embedding", "inputs": "x", "dim": D},
        {"name": "h0", "op": "pos_embedding", "inputs": "emb"},
        {"name": "ln1", "op": "layer_norm", "inputs": "h0"},
        {"name": "att", "op": "attention", "inputs": "ln1", "heads": heads, "causal": True},
        {"name": "h1", "op": "add", "inputs": ["h0", "att"]},
        {"name": "ln2", "op": "layer_norm", "inputs": "h1"},
        {"name": "fc1", "op": "linear", "inputs": "ln2", "units": 4 * D},
        {"name": "act", "op": "gelu", "inputs": "fc1"},
        {"name": "fc2", "op": "linear", "inputs": "act", "units": D},
        {"name": "h2", "op": "add", "inputs": ["h1", "fc2"]},
        {"name": "ln3", "op": "layer_norm", "inputs": "h2"},
        {"name": "logits", "op": "unembed", "inputs": "ln3", "share": "emb"}]}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_transformer_block_matches_finite_differences(seed):
    m = Model(_block(), dtype=np.float64)
    assert m.output_shape == (5, 7) and "logits.W" not in {p.name for p in m.params}
    report = gradcheck(_block(), seed=seed, n=3, max_per_tensor=30)
    assert report.ok(), "\n".join(report.lines())


def test_causal_attention_sees_no_future_token():
    """Changing the last token changes no earlier position's logits."""
    m = Model(_block(), dtype=np.float64)
    theta = m.init_params(0)
    X = np.random.default_rng(6).integers(0, 7, (2, 5))
    before = m.forward(theta, X).copy()
    X[:, -1] = (X[:, -1] + 1) % 7
    after = m.forward(theta, X)
    np.testing.assert_array_equal(after[:, :-1], before[:, :-1])
    assert (after[:, -1] != before[:, -1]).any()


def test_attention_spec_errors_are_named():
    with pytest.raises(SpecError, match=r"model.layers\[0\] \(attention0\).inputs: heads 3 must divide the width "
                                        r"D = 8"):
        Model({"input": [4, 8], "layers": [{"op": "attention", "heads": 3}]})
    with pytest.raises(SpecError, match=r"model.layers\[0\] \(attention0\).inputs: attention needs a sequence"):
        Model({"input": 8, "layers": [{"op": "attention", "heads": 2}]})
    with pytest.raises(SpecError, match=r"model.layers\[0\].causal: must be true or false"):
        Model({"input": [4, 8], "layers": [{"op": "attention", "heads": 2, "causal": 1}]})


# --- gelu's tanh form (GPT-2's; the examples' transformer MLP may use it) -------------------------

@SETTINGS
@given(lead=st.lists(st.integers(1, 4), min_size=1, max_size=2), seed=st.integers(0, 2**16),
       approximate=st.sampled_from(["none", "tanh"]))
def test_gelu_is_pytorchs_in_both_forms(lead, seed, approximate):
    X = np.random.default_rng(seed).standard_normal((3, *lead)) * 2
    spec = {"input": lead, "layers": [{"op": "gelu", "approximate": approximate}]}
    _against_torch(spec, X, lambda x: torch.nn.functional.gelu(x, approximate=approximate), seed)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_finite_differences(approximate):
    _gradcheck_ok({"input": 5, "layers": ["linear 4", {"op": "gelu", "approximate": approximate}, "linear 3"],
                   "loss": "cross_entropy"}, n=4)


def test_gelu_refuses_an_unknown_form():
    with pytest.raises(SpecError, match=r"approximate: must be one of 'none', 'tanh', got 'fast'"):
        Model({"input": 4, "layers": [{"op": "gelu", "approximate": "fast"}]})
