"""Issue 10, items 19, 20 and the engine part of 17: NaN-safe masks, pow at 0, PReLU at 0,
label checks, a gradcheck that fails on NaN and tells kinks from wrong gradients, and op
attributes bounded at submit. Cross-checked against PyTorch in float64."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dptrain.cli import main
from dptrain.core.config import TrainConfig
from dptrain.engine import Limits, Model, SpecError, gradcheck
from dptrain.engine.registry import OPS

INF, NAN = np.inf, np.nan
RELU_POW = {"input": 3, "layers": ["linear 4", "relu", "pow 0.5", "linear 1"], "loss": "mse"}


def _op_grad(name: str, x: np.ndarray, g_out: np.ndarray, params: dict | None = None, **attrs):
    """One op's forward and backward in float64: (out, g_in, param grads)."""
    op = OPS[name](**attrs)
    op.dtype = np.dtype(np.float64)
    with np.errstate(all="ignore"):
        out = op.forward([x], params or {}).copy()
        (g_in,), grads = op.backward(g_out, [True])
    return out, g_in.copy(), {k: v.copy() for k, v in grads.items()}


def _torch_grad(f, x: np.ndarray, g_out: np.ndarray, *params: torch.Tensor):
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    f(xt, *params).backward(torch.tensor(g_out, dtype=torch.float64))
    return xt.grad.numpy(), [p.grad.numpy() for p in params]


def _same(a: np.ndarray, b: np.ndarray) -> None:
    """NaN where NaN, the same infinities, finite values equal to ~1 ulp of 1.

    ELU's derivative is computed as out + alpha, which is 0 at x = -50 where PyTorch's
    alpha e^x is 2e-22: an absolute difference at the rounding level of alpha, kept so
    that trained weights stay bit for bit what they were.
    """
    np.testing.assert_allclose(a, b, rtol=1e-15, atol=1e-15)


# --- item 19: masks, pow, PReLU at 0, labels -------------------------------------------------
X_EDGE = np.array([[-50.0, -1.0, -0.0, 0.0, 0.5, 2.0]])
G_EDGE = [np.full_like(X_EDGE, v) for v in (INF, -INF, NAN)] + [np.array([[2.5, -1.0, 3.0, -2.0, 0.5, 4.0]])]
ACTIVATIONS = [
    ("relu", {}, F.relu),
    ("leaky_relu", {"alpha": 0.1}, lambda t: F.leaky_relu(t, 0.1)),
    ("leaky_relu", {"alpha": 0.0}, lambda t: F.leaky_relu(t, 0.0)),
    ("elu", {"alpha": 1.0}, F.elu),
    ("elu", {"alpha": 0.5}, lambda t: F.elu(t, 0.5)),
]


@pytest.mark.parametrize("g_out", G_EDGE, ids=["inf", "-inf", "nan", "finite"])
@pytest.mark.parametrize("name, attrs, torch_f", ACTIVATIONS, ids=[f"{a[0]}{a[1]}" for a in ACTIVATIONS])
def test_masked_backward_matches_pytorch_for_any_upstream_gradient(name, attrs, torch_f, g_out):
    """ReLU selects (inf * 0 was NaN where PyTorch gives 0); the others multiply by their slope, as PyTorch."""
    out, g_in, _ = _op_grad(name, X_EDGE, g_out, **attrs)
    want, _ = _torch_grad(torch_f, X_EDGE, g_out)
    _same(g_in, want)
    np.testing.assert_array_equal(out, torch_f(torch.tensor(X_EDGE)).numpy())


@pytest.mark.parametrize("g_out", G_EDGE, ids=["inf", "-inf", "nan", "finite"])
def test_prelu_matches_pytorch_including_the_slope_at_zero(g_out):
    """PReLU's slope at exactly 0 is alpha (it was 1), like leaky_relu's and PyTorch's."""
    alpha = np.full(X_EDGE.shape[1], 0.25)
    _, g_in, grads = _op_grad("prelu", X_EDGE, g_out, {"alpha": alpha})
    w = torch.full((X_EDGE.shape[1],), 0.25, dtype=torch.float64, requires_grad=True)
    want, (want_alpha,) = _torch_grad(F.prelu, X_EDGE, g_out, w)
    _same(g_in, want)
    _same(grads["alpha"], want_alpha)


def test_prelu_and_leaky_relu_agree_at_zero():
    x, g = np.array([[0.0, -0.0]]), np.ones((1, 2))
    _, prelu, _ = _op_grad("prelu", x, g, {"alpha": np.full(2, 0.3)})
    _, leaky, _ = _op_grad("leaky_relu", x, g, alpha=0.3)
    np.testing.assert_array_equal(prelu, [[0.3, 0.3]])
    np.testing.assert_array_equal(leaky, prelu)


@pytest.mark.parametrize("c", [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, -1.0])
def test_pow_at_zero_matches_pytorch(c):
    """x^0 is 1 with derivative 0 everywhere, x = 0 included (it was 0 * inf = NaN)."""
    x = np.array([[0.0, 0.5, 2.0]])
    for g in (np.array([[1.0, -2.0, 0.5]]), np.full_like(x, INF)):
        out, g_in, _ = _op_grad("pow", x, g, exponent=c)
        want, _ = _torch_grad(lambda t: t.pow(c), x, g)
        torch_out = torch.tensor(x).pow(c).numpy()
        np.testing.assert_array_equal(out[:, 0], torch_out[:, 0])  # at 0: exactly PyTorch's 0, 1 or inf
        # Elsewhere PyTorch's vectorised pow (its AVX-512 kernel) may be 1 ulp off numpy's.
        np.testing.assert_array_max_ulp(out[:, 1:], torch_out[:, 1:], maxulp=1)
        _same(g_in, want)


def test_relu_then_sqrt_trains_at_step_one_like_pytorch():
    """The issue's spec: where ReLU is off, pow 0.5 sends inf back; the gradient must stay finite."""
    X = np.random.default_rng(3).standard_normal((16, 3))
    y = np.random.default_rng(4).standard_normal((16, 1))
    model = Model(RELU_POW, dtype=np.float64)
    theta = model.init_params(0)
    with np.errstate(all="ignore"):
        s = model.grad_sum(theta, X, y)
    v = {k: torch.tensor(a, requires_grad=True) for k, a in model.views(theta).items()}
    hidden = torch.tensor(X) @ v["linear0.W"] + v["linear0.b"]
    assert (hidden <= 0).any(), "the test needs ReLU units that are off"
    out = F.relu(hidden).pow(0.5) @ v["linear3.W"] + v["linear3.b"]
    ((out - torch.tensor(y)) ** 2).sum().backward()
    want = np.concatenate([v[p.name].grad.numpy().ravel() for p in model.params])
    assert np.all(np.isfinite(s.grad))
    np.testing.assert_allclose(s.grad, want, rtol=1e-12, atol=1e-12)
    f32 = Model(RELU_POW)  # what workers run
    with np.errstate(all="ignore"):
        g32 = f32.grad_sum(theta.astype(np.float32), X.astype(np.float32), y.astype(np.float32)).grad
    assert np.all(np.isfinite(g32))


def test_relu_then_sqrt_job_trains_in_the_local_loop():
    """The same spec as a job: step 1's gradient norm was NaN, and every later loss."""
    from dptrain.core.trainer import Trainer

    job = {"model": RELU_POW, "dataset": {"name": "regression", "params": {"n": 256, "d": 3, "outputs": 1}},
           "optimizer": {"name": "sgd", "lr": 0.01}, "batch_size": 64, "epochs": 2}
    with np.errstate(all="ignore"):  # inf from pow 0.5 at 0 and the inf * 0 that ReLU repairs
        steps = list(Trainer(TrainConfig.from_dict(job), backend="local").run())
    assert len(steps) == 8
    assert all(np.isfinite(m.loss) and np.isfinite(m.grad_norm) for m in steps)
    assert steps[-1].loss < steps[0].loss


def test_finite_gradients_keep_their_bits():
    """The repair runs only after a NaN: otherwise g_in is g_out * mask to the bit (signed zeros too)."""
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((32, 16)).astype(dtype)
        x[0] = 0
        g = rng.standard_normal((32, 16)).astype(dtype)
        op = OPS["relu"]()
        op.dtype = np.dtype(dtype)
        op.forward([x], {})
        (g_in,), _ = op.backward(g, [True])
        assert g_in.tobytes() == np.multiply(g, np.maximum(x, 0) > 0).tobytes()


@pytest.mark.parametrize("y, words", [
    (np.array([0, -1]), "label -1 at row 1 is out of range"),
    (np.array([3, 0]), "label 3 at row 0 is out of range"),
    (np.array([0.0, 1.5]), "must be integers"),
    (np.array([True, False]), "must be integers"),
    (np.array([[0], [1]]), "one label per row"),
])
def test_cross_entropy_rejects_bad_labels(y, words):
    """Label -1 used to score the last class silently (numpy's negative indexing)."""
    model = Model({"input": 2, "layers": ["linear 3"], "loss": "cross_entropy"}, dtype=np.float64)
    theta, X = model.init_params(0), np.ones((2, 2))
    for call in (model.grad_sum, model.evaluate):
        with pytest.raises(SpecError) as info:
            call(theta, X, y)
        assert info.value.field == "y" and words in info.value.message


# --- item 20: gradcheck ----------------------------------------------------------------------
def _node(name, op, inputs, **attrs):
    return {"name": name, "op": op, "inputs": inputs, **attrs}


# sin^2 + cos^2 = 1: the true gradient of everything before it is exactly 0, backprop and
# the differences are rounding noise; seed 10 gave a false failure at 1.06e-6.
SIN2_COS2 = {"input": 3, "loss": "mse", "output": "out", "nodes": [
    _node("h", "linear", ["x"], units=4), _node("s", "sin", ["h"]), _node("c", "cos", ["h"]),
    _node("s2", "mul", ["s", "s"]), _node("c2", "mul", ["c", "c"]), _node("o", "add", ["s2", "c2"]),
    _node("out", "linear", ["o"], units=2)]}


def test_gradcheck_fails_on_nan():
    """log of negative inputs: every error was NaN and the check said ok (NaN > worst is False)."""
    report = gradcheck({"input": 3, "layers": ["linear 4", "log", "linear 2"], "loss": "mse"})
    assert not report.ok()
    assert report.max_rel_error == np.inf
    assert report.lines()[-1].startswith("FAILED")


def test_gradcheck_fails_when_only_backprop_is_nan(monkeypatch):
    class NanTanh(OPS["tanh"]):
        def g(self, g_out, g_in):
            super().g(g_out, g_in)
            g_in[0, 0] = np.nan

    monkeypatch.setitem(OPS, "nan_tanh", NanTanh)
    report = gradcheck({"input": 3, "layers": ["linear 4", "nan_tanh", "linear 2"], "loss": "mse"})
    assert not report.ok() and report.nonfinite
    assert "NaN or inf" in report.lines()[-1]


def test_gradcheck_passes_a_correct_spec():
    report = gradcheck({"input": 4, "layers": ["linear 5", "gelu", "linear 3"], "loss": "cross_entropy"})
    assert report.ok() and not report.kinks and report.lines()[-1].startswith("ok:")


def test_gradcheck_has_margin_where_the_true_gradient_is_zero():
    for seed in range(20):
        report = gradcheck(SIN2_COS2, seed=seed)
        assert report.ok(), report.lines()
        assert report.max_rel_error < 1e-7  # a 10x margin below the tolerance


@pytest.mark.parametrize("op, side", [("elu", "both"), ("relu", "left"), ("leaky_relu", "left"),
                                      ("prelu", "left")])
def test_gradcheck_reports_a_kink_at_a_sampled_point_not_a_failure(op, side):
    """x[0, 0] = 0 sits on the kink: elu's second derivative jumps there, the others' first."""
    X = np.array([[0.0, 0.7, -0.4], [0.5, -1.2, 0.9]])
    y = np.array([[0.3, -0.2], [1.0, 0.1]])
    report = gradcheck({"input": 3, "layers": [op, "linear 2"], "loss": "mse"}, X=X, y=y)
    assert report.ok(), report.lines()
    assert [(p.where, p.kink) for p in report.kinks] == [("input[0, 0]", side)]
    assert any("kink at a sampled point" in line for line in report.lines())


class _Tanh1001(OPS["tanh"]):
    """tanh with a derivative 0.1% too large: a wrong gradient gradcheck must catch."""

    def g(self, g_out, g_in):
        super().g(g_out, g_in)
        g_in *= 1.001


class _HalfReLU(OPS["relu"]):
    """ReLU with the derivative 0.5 where x <= 0: wrong at a kink and away from it."""

    def g(self, g_out, g_in):
        np.multiply(g_out, np.where(self.out > 0, 1.0, 0.5), out=g_in)


@pytest.mark.parametrize("broken", [_Tanh1001, _HalfReLU])
def test_gradcheck_fails_a_wrong_gradient_even_at_a_kink(monkeypatch, broken):
    monkeypatch.setitem(OPS, "broken", broken)
    X = np.array([[0.0, 0.7, -0.4], [0.5, -1.2, 0.9]])
    y = np.array([[0.3, -0.2], [1.0, 0.1]])
    report = gradcheck({"input": 3, "layers": ["broken", "linear 2"], "loss": "mse"}, X=X, y=y)
    assert not report.ok() and report.wrong and not report.kinks
    assert "input[0, 0]" in {p.where for p in report.wrong}
    assert "wrong gradient" in report.lines()[-1]


def test_gradcheck_refuses_a_meaningless_tolerance(tmp_path):
    spec = {"input": 3, "layers": ["linear 2"], "loss": "mse"}
    for tol in (0.0, -1.0, float("nan"), 2.0):
        with pytest.raises(ValueError, match="tol"):
            gradcheck(spec, tol=tol)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    assert main(["gradcheck", str(path), "--tol", "0"]) == 2


def test_gradcheck_command_exit_codes(tmp_path, capsys):
    cases = {"log": ({"input": 3, "layers": ["linear 4", "log", "linear 2"], "loss": "mse"}, 1, "FAILED"),
             "ok": ({"model": {"input": 3, "layers": ["linear 4", "tanh", "linear 2"], "loss": "mse"}}, 0, "ok:"),
             "kinked": (SIN2_COS2, 0, "ok:")}
    for name, (spec, code, words) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(spec))
        capsys.readouterr()
        assert main(["gradcheck", str(path), "--seed", "10"]) == code, name
        assert words in capsys.readouterr().out.splitlines()[-1], name


# --- item 17, engine part: attributes and sizes are checked when the spec is read -------------
def _layers(*layers):
    return {"input": 4, "layers": [*layers, "linear 2"], "loss": "mse"}


BAD_ATTRS = [
    (_layers("pow 1e308"), "model.layers[0].exponent", "out of range"),
    (_layers({"op": "pow", "exponent": -101}), "model.layers[0].exponent", "out of range"),
    (_layers({"op": "pow", "exponent": 10**400}), "model.layers[0].exponent", "out of range"),
    (_layers("leaky_relu inf"), "model.layers[0].alpha", "finite"),
    (_layers({"op": "leaky_relu", "alpha": float("-inf")}), "model.layers[0].alpha", "finite"),
    (_layers({"op": "elu", "alpha": float("inf")}), "model.layers[0].alpha", "finite"),
    (_layers({"op": "elu", "alpha": float("nan")}), "model.layers[0].alpha", "finite"),
    (_layers({"op": "elu", "alpha": 1e6}), "model.layers[0].alpha", "out of range"),
    (_layers({"op": "prelu", "init": 1e300}), "model.layers[0].init", "out of range"),
    ({"input": 4, "loss": "mse", "nodes": [_node("p", "pow", ["x"], exponent=1e308)]},
     "model.nodes[0] (p).exponent", "out of range"),
    ({"input": 4, "loss": "mse", "nodes": [_node("s", "slice", ["x"], start=0, stop=10**30)]},
     "model.nodes[0] (s).stop", "exceeds"),
]


@pytest.mark.parametrize("spec, field, words", BAD_ATTRS, ids=[f"{i}-{c[1]}" for i, c in enumerate(BAD_ATTRS)])
def test_op_attributes_are_bounded_at_submit(spec, field, words):
    """These were accepted and could only overflow at run time; the job's own parser rejects them."""
    job = {"model": spec, "dataset": {"name": "teacher", "params": {"n": 64, "d": 4}},
           "optimizer": {"name": "sgd", "lr": 0.1}}
    with pytest.raises(SpecError) as info:
        TrainConfig.from_dict(job)
    assert info.value.field == field and words in info.value.message


def test_attribute_bounds_keep_the_usual_values():
    for layer in ("pow 100", "pow -2", "pow 0", "leaky_relu 0.2", "elu 1000", "prelu -0.5"):
        Model(_layers(layer))


def test_activation_values_per_example_are_bounded():
    """512 parameter-free nodes of width 16384 have no parameters but need GBs per chunk."""
    spec = {"input": 16384, "layers": ["relu"] * 64 + ["linear 2"], "loss": "mse"}
    with pytest.raises(SpecError) as info:
        Model(spec)
    assert info.value.field == "model" and "values per example" in info.value.message
    Model(spec, limits=Limits(max_activations=2_000_000))


def test_limits_on_width_and_parameters_are_enforced():
    with pytest.raises(SpecError, match="width 16385 exceeds"):
        Model(_layers("linear 16385"))
    with pytest.raises(SpecError, match="parameters exceed"):
        Model({"input": 16384, "layers": ["linear 16384"] * 2, "loss": "mse"})


@pytest.mark.parametrize("spec", [
    {"input": 4, "layers": ["x" * 1_000_000], "loss": "mse"},
    {"input": 4, "layers": ["relu " + "9" * 1_000_000], "loss": "mse"},
    {"input": 4, "layers": [{"op": "swish" * 100_000}], "loss": "mse"},
    {"input": 4, "layers": ["relu"], "loss": "l" * 1_000_000},
    {"input": 4, "loss": "mse", "nodes": [_node("h", "relu", ["y" * 1_000_000])]},
    {"input": 4, "loss": "mse", "nodes": [{"name": "h", "op": "relu", "inputs": ["x"], "k" * 1_000_000: 1}]},
    {"input": 10**5000, "layers": ["relu"], "loss": "mse"},
    {"input": 4, "layers": ["linear 2", {"op": "linear", "units": 10**5000}], "loss": "mse"},
    {"input": 4, "layers": [{"op": "pow", "exponent": 10**5000}], "loss": "mse"},
])
def test_errors_never_echo_a_huge_client_string(spec):
    with pytest.raises(SpecError) as info:
        Model(spec)
    assert len(str(info.value)) < 400
