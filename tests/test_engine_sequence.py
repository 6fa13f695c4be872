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
