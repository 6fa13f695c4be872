"""DAGs: the worked example, branches, residuals, shared parameters, additivity.

The mathematics is in docs/backprop.md, 'Branch and merge nodes' and 'Parameter sharing'.
"""
from __future__ import annotations

import math

import numpy as np
from dptrain.engine import Model, gradcheck
from hypothesis import given, settings
from hypothesis import strategies as st

WORKED_EXAMPLE = {  # y = e^(xz) + xz/ln(x) + sin(ln(x))/(xz), input columns (x, z)
    "input": 2, "output": "y",
    "nodes": [
        {"name": "x1", "op": "slice", "inputs": ["x"], "start": 0, "stop": 1},
        {"name": "z", "op": "slice", "inputs": ["x"], "start": 1, "stop": 2},
        {"name": "a", "op": "mul", "inputs": ["x1", "z"]},
        {"name": "b", "op": "log", "inputs": ["x1"]},
        {"name": "c", "op": "sin", "inputs": ["b"]},
        {"name": "d", "op": "exp", "inputs": ["a"]},
        {"name": "e", "op": "div", "inputs": ["a", "b"]},
        {"name": "f", "op": "div", "inputs": ["c", "a"]},
        {"name": "y", "op": "add", "inputs": ["d", "e", "f"]},
    ],
}


def test_worked_example_of_branches_and_merges():
    x, z = 2.0, 3.0
    model = Model(WORKED_EXAMPLE, dtype=np.float64)
    theta = model.init_params(0)
    y = model.forward(theta, np.array([[x, z]]))[0, 0]
    g_x, _ = model.backward(np.ones((1, 1)), input_grad=True)
    ln = math.log(x)
    # Derived by hand with the quotient rule, independently of the graph above.
    y_ref = math.exp(x * z) + x * z / ln + math.sin(ln) / (x * z)
    dy_dx = (z * math.exp(x * z) + z / ln - z / ln**2
             + math.cos(ln) / (x**2 * z) - math.sin(ln) / (x**2 * z))
    dy_dz = x * math.exp(x * z) + x / ln - math.sin(ln) / (x * z**2)
    assert math.isclose(y, y_ref, rel_tol=1e-14)
    assert math.isclose(g_x[0, 0], dy_dx, rel_tol=1e-13)
    assert math.isclose(g_x[0, 1], dy_dz, rel_tol=1e-13)


RESIDUAL_SHARED = {
    "input": 5, "output": "out", "loss": "softmax_cross_entropy",
    "nodes": [
        {"name": "h", "op": "linear", "inputs": ["x"], "units": 6},
        {"name": "a", "op": "tanh", "inputs": ["h"]},
        {"name": "h2", "op": "linear", "inputs": ["a"], "units": 6},
        {"name": "a2", "op": "gelu", "inputs": ["h2"]},
        {"name": "h3", "op": "linear", "inputs": ["a2"], "units": 6, "share": "h2"},  # tied
        {"name": "r", "op": "add", "inputs": ["a", "h3"]},  # residual: a feeds two nodes
        {"name": "c", "op": "concat", "inputs": ["r", "a"]},
        {"name": "out", "op": "linear", "inputs": ["c"], "units": 4},
    ],
}


def test_branch_merge_residual_and_shared_parameters_gradcheck():
    report = gradcheck(RESIDUAL_SHARED, n=5)
    assert report.max_rel_error <= 1e-6, report


def test_shared_parameter_gradient_is_the_sum_over_its_users():
    """Untie h3 from h2 with equal weights: the tied gradient is g_h2 + g_h3."""
    tied = Model(RESIDUAL_SHARED, dtype=np.float64)
    untied_spec = {**RESIDUAL_SHARED, "nodes": [{k: v for k, v in n.items() if k != "share"}
                                                 for n in RESIDUAL_SHARED["nodes"]]}
    untied = Model(untied_spec, dtype=np.float64)
    theta = tied.init_params(1)
    t_views = tied.views(theta)
    theta_u = np.empty(untied.num_params)
    u_views = untied.views(theta_u)
    for name, v in u_views.items():
        v[...] = t_views[name.replace("h3.", "h2.")]
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((7, 5)), rng.integers(0, 4, 7)
    g_tied = tied.views(tied.grad_sum(theta, X, y).grad)
    g_untied = untied.views(untied.grad_sum(theta_u, X, y).grad)
    for p in ("W", "b"):
        np.testing.assert_allclose(g_tied[f"h2.{p}"], g_untied[f"h2.{p}"] + g_untied[f"h3.{p}"], rtol=1e-12)


ACTS = ["relu", "tanh", "sigmoid", "gelu", "elu", "softplus", "leaky_relu", "prelu"]


@settings(max_examples=30, deadline=None)
@given(depth=st.integers(1, 3), width=st.integers(1, 9), acts=st.lists(st.sampled_from(ACTS), min_size=3, max_size=3),
       n=st.integers(2, 40), cuts=st.lists(st.floats(0, 1), max_size=5), seed=st.integers(0, 2**16),
       loss=st.sampled_from(["softmax_cross_entropy", "mse", "binary_cross_entropy"]))
def test_gradient_sums_add_over_any_partition_of_the_batch(depth, width, acts, n, cuts, seed, loss):
    layers = []
    for i in range(depth):
        layers += [f"linear {width}", acts[i]]
    layers.append("linear 3")
    model = Model({"input": 4, "layers": layers, "loss": loss}, dtype=np.float64)
    theta = model.init_params(seed)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    y = {"softmax_cross_entropy": rng.integers(0, 3, n), "mse": rng.standard_normal((n, 3)),
         "binary_cross_entropy": rng.integers(0, 2, (n, 3)).astype(float)}[loss]
    whole = model.grad_sum(theta, X, y)
    whole_grad = whole.grad.copy()
    bounds = sorted({0, n, *(int(c * n) for c in cuts)})
    parts = [model.grad_sum(theta, X[a:b], y[a:b]) for a, b in zip(bounds, bounds[1:]) if b > a]
    total = np.sum([p.grad for p in parts], axis=0)
    scale = np.max(np.abs(whole_grad)) or 1.0
    assert np.max(np.abs(total - whole_grad)) <= 1e-10 * scale
    assert math.isclose(sum(p.loss for p in parts), whole.loss, rel_tol=1e-10)
    assert sum(p.count for p in parts) == whole.count == n
    assert sum(p.correct for p in parts) == whole.correct


def test_float32_by_default_float64_on_request():
    spec = {"input": 3, "layers": ["linear 2"], "loss": "mse"}
    m32, m64 = Model(spec), Model(spec, dtype="float64")
    assert m32.init_params(0).dtype == np.float32 and m64.init_params(0).dtype == np.float64
    X, y = np.ones((2, 3)), np.zeros((2, 2))
    assert m32.grad_sum(m32.init_params(0), X, y).grad.dtype == np.float32


def test_initialisation_is_deterministic_and_scaled_per_activation():
    spec = {"input": 400, "layers": ["linear 300", "relu", "linear 300", "tanh", "linear 10"],
            "loss": "cross_entropy"}
    model = Model(spec)
    a, b = model.init_params(7), model.init_params(7)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != model.init_params(8).tobytes()
    v = model.views(a)
    assert abs(v["linear0.W"].std() - math.sqrt(2 / 400)) < 0.01 * math.sqrt(2 / 400) * 5  # He
    assert abs(v["linear2.W"].std() - math.sqrt(2 / 600)) < 0.01 * math.sqrt(2 / 600) * 5  # Glorot
    assert np.all(v["linear0.b"] == 0)


def test_parameters_live_in_one_flat_buffer():
    model = Model({"input": 3, "layers": ["linear 4", "prelu", "linear 2"], "loss": "mse"})
    theta = model.init_params(0)
    views = model.views(theta)
    assert [p.name for p in model.params] == ["linear0.W", "linear0.b", "prelu1.alpha", "linear2.W", "linear2.b"]
    assert model.num_params == 3 * 4 + 4 + 4 + 4 * 2 + 2 == theta.size
    views["linear2.b"][0] = 42.0
    assert theta[-2] == 42.0  # a view, not a copy
