"""Image and shape ops (conv2d, conv1d, max_pool2d, avg_pool2d, global_avg_pool, flatten, reshape,
transpose): finite differences on shapes and attributes drawn by hypothesis, PyTorch autograd in
float64 (forward, input and parameter gradients), named spec errors, and a LeNet-like model."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dptrain.engine import Model, SpecError, conv, gradcheck
from hypothesis import given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=25, deadline=None)


def _against_torch(spec, X, ref, seed=0, rtol=1e-10):
    """Run `spec` (float64, parameters drawn away from their init) and `ref(x, *params)` in torch
    on the same values; compare the output, g_in and every parameter's gradient."""
    rng = np.random.default_rng(seed)
    m = Model(spec, dtype=np.float64)
    theta = m.init_params(seed) + rng.standard_normal(m.num_params) * 0.3
    G = rng.standard_normal((len(X), *m.output_shape))
    out = m.forward(theta, X).copy()
    g_x, grad = m.backward(G, input_grad=True)
    views, gviews = m.views(theta), m.views(grad)
    params = [torch.tensor(views[p.name], requires_grad=True) for p in m.params]
    xt = torch.tensor(X, requires_grad=True)
    want = ref(xt, *params)
    want.backward(torch.tensor(G))
    np.testing.assert_allclose(out, want.detach().numpy(), rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(g_x, xt.grad.numpy(), rtol=rtol, atol=1e-11)
    for p, t in zip(m.params, params):
        np.testing.assert_allclose(gviews[p.name], t.grad.numpy(), rtol=rtol, atol=1e-11, err_msg=p.name)
    return m


def _gradcheck_ok(spec, X, seed=0):
    """Finite differences through `spec` + tanh + a small linear head (mse), on the inputs X."""
    m = Model(spec)
    head = [{"op": "flatten"}] if len(m.output_shape) > 1 else []
    full = {**spec, "layers": [*spec["layers"], "tanh", *head, "linear 2"], "loss": "mse"}
    y = np.random.default_rng(seed).standard_normal((len(X), 2))
    report = gradcheck(full, seed=seed, X=X, y=y, max_per_tensor=30)
    assert report.ok(), "\n".join(report.lines())


def _distinct(shape, seed):
    """Values in +-[0.5, 1.5], pairwise distinct by >= 1e-3, so a max pool has no tie within 2h of
    the finite-difference stencil (the max is a kink there) and PyTorch's choice among ties never matters."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    return (rng.permutation(n) * (1.0 / n) + 0.5 + rng.uniform(0, 1e-4, n)).reshape(shape) * rng.choice([-1, 1], shape)


# --- geometry drawn by hypothesis ------------------------------------------------------------------

@st.composite
def conv2d_case(draw):
    groups = draw(st.integers(1, 3))
    c, out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    hw = [draw(st.integers(max(1, d[i] * (k[i] - 1) + 1 - 2 * p[i]), 7)) for i in range(2)]
    attrs = {"out": out, "kernel": list(k), "stride": list(s), "padding": list(p), "dilation": list(d),
             "groups": groups, "bias": draw(st.booleans())}
    return [c, *hw], attrs


@st.composite
def conv1d_case(draw):
    groups = draw(st.integers(1, 3))
    c, out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    k, d, p, s = draw(st.integers(1, 4)), draw(st.integers(1, 2)), draw(st.integers(0, 2)), draw(st.integers(1, 3))
    n = draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), 9))
    attrs = {"out": out, "kernel": k, "stride": s, "padding": p, "dilation": d, "groups": groups,
             "bias": draw(st.booleans())}
    return [c, n], attrs


@st.composite
def pool_case(draw):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    s = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    hw = [draw(st.integers(max(1, k[i] - 2 * p[i]), 7)) for i in range(2)]
    attrs = {"kernel": list(k), "padding": list(p), **({"stride": list(s)} if s else {})}
    return [draw(st.integers(1, 3)), *hw], attrs


def _torch_conv2d(a):
    def ref(x, W, b=None):
        return F.conv2d(x, W, b, stride=a["stride"], padding=a["padding"], dilation=a["dilation"], groups=a["groups"])
    return ref


def _torch_conv1d(a):
    def ref(x, W, b=None):
        return F.conv1d(x, W, b, stride=a["stride"], padding=a["padding"], dilation=a["dilation"], groups=a["groups"])
    return ref


def _torch_pool(fn, a):
    return lambda x: fn(x, a["kernel"], a.get("stride"), a["padding"])


# --- convolutions ------------------------------------------------------------------------------------

@SETTINGS
@given(case=conv2d_case(), seed=st.integers(0, 1000))
def test_conv2d_is_pytorchs(case, seed):
    shape, attrs = case
    X = np.random.default_rng(seed).standard_normal((3, *shape))
    _against_torch({"input": shape, "layers": [{"op": "conv2d", **attrs}]}, X, _torch_conv2d(attrs), seed)


@SETTINGS
@given(case=conv1d_case(), seed=st.integers(0, 1000))
def test_conv1d_is_pytorchs(case, seed):
    shape, attrs = case
    X = np.random.default_rng(seed).standard_normal((3, *shape))
    _against_torch({"input": shape, "layers": [{"op": "conv1d", **attrs}]}, X, _torch_conv1d(attrs), seed)


@SETTINGS
@given(case=conv2d_case(), seed=st.integers(0, 1000))
def test_conv2d_matches_finite_differences(case, seed):
    shape, attrs = case
    _gradcheck_ok({"input": shape, "layers": [{"op": "conv2d", **attrs}]},
                  np.random.default_rng(seed).standard_normal((2, *shape)), seed)


@SETTINGS
@given(case=conv1d_case(), seed=st.integers(0, 1000))
def test_conv1d_matches_finite_differences(case, seed):
    shape, attrs = case
    _gradcheck_ok({"input": shape, "layers": [{"op": "conv1d", **attrs}]},
                  np.random.default_rng(seed).standard_normal((2, *shape)), seed)


@SETTINGS
@given(case=conv2d_case(), seed=st.integers(0, 1000))
def test_conv2d_in_blocks_of_one_example_is_pytorchs(case, seed):
    """im2col runs in blocks of examples (conv.BLOCK_VALUES); with a block per example the
    multi-block path is the one taken, and its values are PyTorch's. (Its bits may differ
    from one block's: BLAS sums a 1-column product as a GEMV. Only a chunk's bits must be
    fixed, and the blocks depend on the chunk and the layer alone.)"""
    shape, attrs = case
    spec = {"input": shape, "layers": [{"op": "conv2d", **attrs}]}
    X = np.random.default_rng(seed).standard_normal((3, *shape))
    saved, conv.BLOCK_VALUES = conv.BLOCK_VALUES, 1
    try:
        blocked = _against_torch(spec, X, _torch_conv2d(attrs), seed)
        assert len(next(iter(blocked.graph.ops.values()))._blocks()) == 3
    finally:
        conv.BLOCK_VALUES = saved


def test_conv_init_and_layout():
    m = Model({"input": [4, 9, 9], "layers": [{"op": "conv2d", "out": 64, "kernel": [3, 5], "groups": 2}, "relu"]})
    W = m.views(m.init_params(0))["conv2d0.W"]
    assert W.shape == (64, 2, 3, 5) and m.output_shape == (64, 7, 5)
    assert W.std() == pytest.approx(np.sqrt(2 / (2 * 3 * 5)), rel=0.1)  # He on fan_in = C/groups kh kw
    assert Model({"input": [2, 9], "layers": [{"op": "conv1d", "out": 4, "kernel": 3}]}).output_shape == (4, 7)


def test_conv_is_deterministic_and_per_example():
    """The same chunk gives the same bits on every call and in a fresh model (reused buffers carry
    nothing over, e.g. the padding's border), whatever ran in between; each example's values depend
    on that example only (a split batch agrees to rounding: the GEMM's column blocking may differ)."""
    spec = {"input": [3, 10, 9], "layers": [{"op": "conv2d", "out": 8, "kernel": 3, "padding": [1, 2]},
                                            {"op": "max_pool2d", "kernel": 3, "stride": 2, "padding": 1}]}
    rng = np.random.default_rng(0)
    X, G = rng.standard_normal((7, 3, 10, 9), dtype=np.float32), rng.standard_normal((7, 8, 5, 6), dtype=np.float32)

    def step(m, theta, X, G):
        out = m.forward(theta, X).copy()
        g_x, grad = m.backward(G, input_grad=True)
        return out, g_x, grad.copy()

    m = Model(spec)
    theta = m.init_params(0)
    first = step(m, theta, X, G)
    parts = [step(m, theta, X[s], G[s]) for s in (slice(0, 3), slice(3, 7))]
    for a, b in zip(first, (step(m, theta, X, G)), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first, step(Model(spec), theta, X, G), strict=True):
        np.testing.assert_array_equal(a, b)
    for i in (0, 1):
        np.testing.assert_allclose(first[i], np.concatenate([p[i] for p in parts]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(first[2], parts[0][2] + parts[1][2], rtol=1e-4, atol=1e-5)


# --- pooling -------------------------------------------------------------------------------------------

@SETTINGS
@given(case=pool_case(), seed=st.integers(0, 1000))
def test_pools_are_pytorchs(case, seed):
    shape, attrs = case
    X = _distinct((3, *shape), seed)  # tie-free: the max's gradient goes to one value
    _against_torch({"input": shape, "layers": [{"op": "max_pool2d", **attrs}]}, X, _torch_pool(F.max_pool2d, attrs))
    _against_torch({"input": shape, "layers": [{"op": "avg_pool2d", **attrs}]}, X, _torch_pool(F.avg_pool2d, attrs))


@SETTINGS
@given(case=pool_case(), seed=st.integers(0, 1000))
def test_pools_match_finite_differences(case, seed):
    shape, attrs = case
    X = _distinct((2, *shape), seed)
    for op in ("max_pool2d", "avg_pool2d"):
        _gradcheck_ok({"input": shape, "layers": [{"op": op, **attrs}]}, X, seed)


def test_max_pool_gives_a_tie_to_its_first_maximum():
    X = np.array([[[[1.0, 3.0, 3.0], [3.0, 0.0, 2.0], [3.0, 3.0, 3.0]]]])
    m = Model({"input": [1, 3, 3], "layers": [{"op": "max_pool2d", "kernel": 2, "stride": 1}]}, dtype=np.float64)
    out = m.forward(m.init_params(0), X)
    np.testing.assert_array_equal(out, [[[[3, 3], [3, 3]]]])
    g_x, _ = m.backward(np.array([[[[1.0, 10.0], [100.0, 1000.0]]]]), input_grad=True)
    # windows in row-major order; each one's first 3 (row-major within the window) takes its gradient
    np.testing.assert_array_equal(g_x, [[[[0, 11, 0], [100, 0, 0], [0, 1000, 0]]]])


def test_max_pool_sends_an_infinite_gradient_only_to_the_maximum():
    """g_out = inf reaches the window's maximum alone; the other values get 0, not inf * 0 = NaN (as PyTorch)."""
    X = _distinct((2, 2, 4, 5), 3)
    m = Model({"input": [2, 4, 5], "layers": [{"op": "max_pool2d", "kernel": 2, "stride": 1}]}, dtype=np.float64)
    m.forward(m.init_params(0), X)
    G = np.random.default_rng(0).standard_normal((2, 2, 3, 4))
    G[0, 1, 1, 2], G[1, 0, 2, 3] = np.inf, -np.inf
    g_x, _ = m.backward(G, input_grad=True)
    xt = torch.tensor(X, requires_grad=True)
    F.max_pool2d(xt, 2, 1).backward(torch.tensor(G))
    np.testing.assert_array_equal(g_x, xt.grad.numpy())


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=3), seed=st.integers(0, 1000))
def test_global_avg_pool_is_pytorchs_and_matches_finite_differences(shape, seed):
    X = np.random.default_rng(seed).standard_normal((3, *shape))
    adaptive = F.adaptive_avg_pool2d if len(shape) == 3 else F.adaptive_avg_pool1d
    _against_torch({"input": shape, "layers": ["global_avg_pool"]}, X, lambda x: adaptive(x, 1).flatten(1))
    _gradcheck_ok({"input": shape, "layers": ["global_avg_pool"]}, X[:2], seed)


# --- shape ops ------------------------------------------------------------------------------------------

@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data())
def test_shape_ops_are_pytorchs_and_match_finite_differences(shape, data):
    n = int(np.prod(shape))
    rng = np.random.default_rng(n)
    X = rng.standard_normal((3, *shape))
    axes = data.draw(st.permutations(range(len(shape))))
    target = data.draw(st.sampled_from([[n], [-1], [1, n], [n, -1, 1]] + ([[2, -1]] if n % 2 == 0 else [])))
    layers = {"flatten": ("flatten", lambda x: x.flatten(1)),
              "reshape": ({"op": "reshape", "shape": target}, lambda x: x.reshape(len(x), *target)),
              "transpose": ({"op": "transpose", "axes": list(axes)},
                            lambda x: x.permute(0, *(a + 1 for a in axes)))}
    for layer, ref in layers.values():
        _against_torch({"input": shape, "layers": [layer]}, X, ref)
        _gradcheck_ok({"input": shape, "layers": [layer]}, X[:2])


# --- named spec errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layers, field, says", [
    (["relu", {"op": "conv2d", "out": 4, "kernel": 5}], r"model.layers\[1\] \(conv2d1\).inputs",
     "kernel 5 is larger than the padded input 4 (height)"),
    (["relu", {"op": "conv2d", "out": 4, "kernel": 3, "dilation": 2, "padding": 0}],
     r"model.layers\[1\] \(conv2d1\).inputs", "kernel 3 (dilated: 5) is larger than the padded input 4"),
    (["relu", {"op": "conv2d", "out": 4, "kernel": 1, "groups": 2}], r"model.layers\[1\] \(conv2d1\).inputs",
     "groups 2 must divide the 3 input channels and the 4 output channels"),
    (["relu", {"op": "reshape", "shape": [5, 10]}], r"model.layers\[1\] \(reshape1\).inputs",
     "shape [5, 10] holds 50 values, the input 48"),
    (["relu", {"op": "reshape", "shape": [-1, 5]}], r"model.layers\[1\] \(reshape1\).inputs",
     "48 is not a multiple of 5"),
    (["relu", {"op": "reshape", "shape": [-1, -1]}], r"model.layers\[1\] \(reshape1\).inputs", "more than one -1"),
    (["relu", {"op": "transpose", "axes": [0, 1]}], r"model.layers\[1\] \(transpose1\).inputs",
     "must be a permutation of the example's 3 axes"),
    (["relu", {"op": "max_pool2d", "kernel": 2, "padding": 2}], r"model.layers\[1\] \(max_pool2d1\).inputs",
     "padding 2 must be at most half the kernel 2"),
    (["relu", {"op": "avg_pool2d", "kernel": [2, 5]}], r"model.layers\[1\] \(avg_pool2d1\).inputs",
     "kernel 5 is larger than the padded input 4 (width)"),
    (["flatten", {"op": "conv1d", "out": 2, "kernel": 3}], r"model.layers\[1\] \(conv1d1\).inputs",
     "conv1d takes (channels, length) examples, got [48]"),
    (["relu", {"op": "conv2d", "out": 4, "kernel": [3, 3, 3]}], r"model.layers\[1\].kernel",
     "must be an integer or a list of 1 to 2 integers"),
    (["relu", {"op": "conv2d", "out": 4, "kernel": 3, "padding": -1}], r"model.layers\[1\].padding",
     "must be in [0,"),
    (["flatten", {"op": "conv1d", "out": 2, "kernel": [3, 3]}], r"model.layers\[1\].kernel",
     "must be an integer or a list of one integer"),
    (["relu", {"op": "conv2d", "kernel": 3}], r"model.layers\[1\].out", "required by op 'conv2d'"),
])
def test_a_bad_image_op_is_named(layers, field, says):
    with pytest.raises(SpecError) as e:
        Model({"input": [3, 4, 4], "layers": layers})
    assert any(re.fullmatch(field, f) and says in msg for f, msg in e.value.errors), str(e.value)


# --- a whole model ----------------------------------------------------------------------------------------

LENET = {"input": [1, 12, 12], "layers": [
    {"op": "conv2d", "out": 3, "kernel": 3}, "relu", {"op": "max_pool2d", "kernel": 2},
    {"op": "conv2d", "out": 4, "kernel": 3, "padding": 1}, "relu", {"op": "avg_pool2d", "kernel": 2},
    "flatten", "linear 8", "relu", "linear 3"], "loss": "cross_entropy"}


def test_a_lenet_like_model_passes_gradcheck():
    m = Model(LENET)
    assert m.output_shape == (3,) and [p.scheme for p in m.params][:1] == ["he"]
    X = _distinct((3, 1, 12, 12), 0)
    y = np.array([0, 2, 1])
    report = gradcheck(LENET, X=X, y=y, max_per_tensor=15)
    assert report.ok(), "\n".join(report.lines())
