"""Optimizers against updates computed by hand in float64, plus state, dtype, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dptrain.core.optim import OptimizerSpec, SpecError, make_optimizer
from dptrain.core.schedules import ScheduleSpec
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

NAMES = ["sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"]
DTYPES = [np.float32, np.float64]
HPARAMS = dict(momentum=0.8, beta1=0.85, beta2=0.99, eps=1e-6, alpha=0.9)


# --------------------------------------------------------------------------- reference
# Deliberately textbook formulas on python floats (float64), one element at a time,
# written without looking at the implementation's operation order.


def reference(name, theta, grads, lrs, wd=0.0, clip=None, **hp):
    """Parameters after each step, and the pre-clip norms, for scalar python lists."""
    mu, b1, b2, eps, alpha = hp["momentum"], hp["beta1"], hp["beta2"], hp["eps"], hp["alpha"]
    theta = [float(x) for x in theta]
    n = len(theta)
    buf, m, v = [0.0] * n, [0.0] * n, [0.0] * n
    history, norms = [], []
    for t, (grad, lr) in enumerate(zip(grads, lrs), start=1):
        g = [float(x) for x in grad]
        norm = math.sqrt(sum(x * x for x in g))
        norms.append(norm)
        if clip is not None and norm > clip:
            g = [x * clip / norm for x in g]
        if name != "adamw":
            g = [gi + wd * th for gi, th in zip(g, theta)]
        for i in range(n):
            if name == "sgd":
                theta[i] -= lr * g[i]
            elif name in ("momentum", "nesterov"):
                buf[i] = g[i] if t == 1 else mu * buf[i] + g[i]
                d = g[i] + mu * buf[i] if name == "nesterov" else buf[i]
                theta[i] -= lr * d
            elif name == "rmsprop":
                v[i] = alpha * v[i] + (1 - alpha) * g[i] ** 2
                theta[i] -= lr * g[i] / (math.sqrt(v[i]) + eps)
            else:
                if name == "adamw":
                    theta[i] -= lr * wd * theta[i]
                m[i] = b1 * m[i] + (1 - b1) * g[i]
                v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
                m_hat = m[i] / (1 - b1**t)
                v_hat = v[i] / (1 - b2**t)
                theta[i] -= lr * m_hat / (math.sqrt(v_hat) + eps)
        history.append(list(theta))
    return history, norms


def problem(dtype, n=7, steps=5, seed=0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=n).astype(dtype)
    grads = [rng.normal(scale=0.7, size=n).astype(dtype) for _ in range(steps)]
    lrs = [0.05, 0.1, 0.02, 0.07, 0.03][:steps]
    return theta, grads, lrs


def run(opt, theta, grads, lrs):
    params = theta.copy()
    history, norms = [], []
    for g, lr in zip(grads, lrs):
        norms.append(opt.step(params, g.copy(), lr))
        history.append(params.copy())
    return history, norms


def tol(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-13)


# --------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("wd,clip", [(0.0, None), (0.1, None), (0.0, 1.0), (0.05, 0.5)])
def test_matches_hand_computed_updates(name, dtype, wd, clip):
    theta, grads, lrs = problem(dtype)
    spec = OptimizerSpec(name, weight_decay=wd, clip_norm=clip, **HPARAMS)
    got, got_norms = run(make_optimizer(spec, theta.size, dtype), theta, grads, lrs)
    want, want_norms = reference(name, theta, grads, lrs, wd=wd, clip=clip, **HPARAMS)
    for step, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, w, **tol(dtype), err_msg=f"step {step}")
    # Norms are accumulated in float64 whatever the dtype: equal to a float64 sum.
    np.testing.assert_allclose(got_norms, want_norms, rtol=1e-14)


def test_momentum_worked_example():
    # theta=1, lr=0.1, mu=0.9, g=1,2,3:  b=1 -> 0.9;  b=2.9 -> 0.61;  b=5.61 -> 0.049
    opt = make_optimizer(OptimizerSpec("momentum", momentum=0.9), 1, np.float64)
    p = np.array([1.0])
    out = []
    for g in (1.0, 2.0, 3.0):
        opt.step(p, np.array([g]), 0.1)
        out.append(p[0])
    assert out == pytest.approx([0.9, 0.61, 0.049], abs=1e-15)


def test_nesterov_worked_example():
    # b=1, d=1+0.9=1.9 -> 0.81;  b=2.9, d=2+2.61=4.61 -> 0.349
    opt = make_optimizer(OptimizerSpec("nesterov", momentum=0.9), 1, np.float64)
    p = np.array([1.0])
    opt.step(p, np.array([1.0]), 0.1)
    assert p[0] == pytest.approx(0.81, abs=1e-15)
    opt.step(p, np.array([2.0]), 0.1)
    assert p[0] == pytest.approx(0.349, abs=1e-15)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_first_step_is_lr_times_sign(name):
    # t=1: m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps) ~ lr * sign(g).
    opt = make_optimizer(OptimizerSpec(name, eps=1e-12), 3, np.float64)
    p = np.zeros(3)
    opt.step(p, np.array([-3.0, 1e-3, 250.0]), 0.01)
    np.testing.assert_allclose(p, [0.01, -0.01, -0.01], rtol=1e-8)


def test_rmsprop_first_step():
    # v = (1 - alpha) g^2 = 0.01 g^2, so the step is lr * g / (0.1 |g| + eps) ~ 10 lr sign(g).
    opt = make_optimizer(OptimizerSpec("rmsprop", alpha=0.99, eps=1e-12), 2, np.float64)
    p = np.ones(2)
    opt.step(p, np.array([4.0, -0.5]), 0.01)
    np.testing.assert_allclose(p, [0.9, 1.1], rtol=1e-10)


# --------------------------------------------------------------------------- weight decay


def test_adamw_decay_is_decoupled_from_the_gradient():
    # Zero gradient: m = v = 0 so the Adam step is 0 and only the shrink remains:
    # theta_t = theta_0 * prod(1 - lr_k * wd).
    opt = make_optimizer(OptimizerSpec("adamw", weight_decay=0.1), 2, np.float64)
    p = np.array([2.0, -4.0])
    for lr in (0.5, 0.25):
        opt.step(p, np.zeros(2), lr)
    np.testing.assert_allclose(p, np.array([2.0, -4.0]) * 0.95 * 0.975, rtol=1e-15)


def test_adam_weight_decay_is_l2_through_the_moments():
    # Zero gradient: g_eff = wd * theta enters Adam, so the first step is ~lr * sign(theta),
    # not the tiny shrink lr * wd * theta of AdamW.
    opt = make_optimizer(OptimizerSpec("adam", weight_decay=0.1, eps=1e-12), 2, np.float64)
    p = np.array([2.0, -4.0])
    opt.step(p, np.zeros(2), 0.01)
    np.testing.assert_allclose(p, [1.99, -3.99], rtol=1e-9)


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "rmsprop"])
def test_l2_decay_with_zero_gradient(name):
    # The first step sees g = wd * theta.
    theta = np.array([1.0, -2.0])
    opt = make_optimizer(OptimizerSpec(name, weight_decay=0.5, **HPARAMS), 2, np.float64)
    p = theta.copy()
    opt.step(p, np.zeros(2), 0.1)
    want, _ = reference(name, theta, [[0.0, 0.0]], [0.1], wd=0.5, **HPARAMS)
    np.testing.assert_allclose(p, want[0], rtol=1e-13)
    assert not np.allclose(p, theta)


# --------------------------------------------------------------------------- clipping


def test_clipping_scales_to_clip_norm_and_returns_preclip_norm():
    opt = make_optimizer(OptimizerSpec("sgd", clip_norm=1.0), 2, np.float64)
    p = np.zeros(2)
    assert opt.step(p, np.array([3.0, 4.0]), 1.0) == 5.0
    np.testing.assert_allclose(p, [-0.6, -0.8], rtol=1e-15)


def test_clipping_happens_before_weight_decay():
    # g = [3,4] -> [0.6, 0.8], then + 0.5 * [1, 1] = [1.1, 1.3]; theta = 1 - 0.1 * that.
    opt = make_optimizer(OptimizerSpec("sgd", clip_norm=1.0, weight_decay=0.5), 2, np.float64)
    p = np.ones(2)
    opt.step(p, np.array([3.0, 4.0]), 0.1)
    np.testing.assert_allclose(p, [0.89, 0.87], rtol=1e-14)


def test_no_clipping_below_threshold():
    opt = make_optimizer(OptimizerSpec("sgd", clip_norm=10.0), 2, np.float32)
    p = np.zeros(2, np.float32)
    assert opt.step(p, np.array([3.0, 4.0], np.float32), 1.0) == 5.0
    assert p.tolist() == [-3.0, -4.0]


def test_float32_norm_is_accumulated_in_float64():
    # Squares of 1e30 overflow float32 but not float64.
    opt = make_optimizer(OptimizerSpec("sgd", clip_norm=1.0), 2, np.float32)
    p = np.zeros(2, np.float32)
    g = np.array([3e30, 4e30], np.float32)
    norm = opt.step(p, g, 1.0)
    assert norm == pytest.approx(5e30, rel=1e-7)
    np.testing.assert_allclose(p, [-0.6, -0.8], rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    g=hnp.arrays(np.float32, st.integers(1, 40), elements=st.floats(-1e4, 1e4, width=32)),
    clip=st.floats(1e-3, 1e3),
)
def test_clipped_update_never_exceeds_clip_norm(g, clip):
    opt = make_optimizer(OptimizerSpec("sgd", clip_norm=clip), g.size, np.float32)
    p = np.zeros_like(g)
    norm = opt.step(p, g.copy(), 1.0)
    assert norm == pytest.approx(float(np.linalg.norm(g.astype(np.float64))), rel=1e-12)
    assert np.linalg.norm(p.astype(np.float64)) <= min(clip, norm) * (1 + 1e-6) + 1e-30


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_gradient_raises_and_changes_nothing(bad):
    opt = make_optimizer(OptimizerSpec("adam"), 3, np.float32)
    p = np.ones(3, np.float32)
    opt.step(p, np.ones(3, np.float32), 0.1)
    before_p, before_state = p.copy(), opt.state_dict()
    with pytest.raises(FloatingPointError):
        opt.step(p, np.array([1.0, bad, 1.0], np.float32), 0.1)
    assert p.tobytes() == before_p.tobytes()
    after = opt.state_dict()
    assert all(after[k].tobytes() == before_state[k].tobytes() for k in before_state)


# --------------------------------------------------------------------------- state and determinism


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_roundtrip_continues_bitwise(name, dtype):
    theta, grads, lrs = problem(dtype, steps=5, seed=1)
    spec = OptimizerSpec(name, weight_decay=0.01, clip_norm=2.0)
    a = make_optimizer(spec, theta.size, dtype)
    params = theta.copy()
    for g, lr in zip(grads[:3], lrs[:3]):
        a.step(params, g.copy(), lr)
    saved_state, saved_params = a.state_dict(), params.copy()
    assert saved_state["step"].shape == () and saved_state["step"].dtype == np.int64
    assert int(saved_state["step"]) == 3
    assert all(v.dtype == dtype for k, v in saved_state.items() if k != "step")

    for g, lr in zip(grads[3:], lrs[3:]):
        a.step(params, g.copy(), lr)
    b = make_optimizer(spec, theta.size, dtype)
    b.load_state_dict(saved_state)
    resumed = saved_params.copy()
    for g, lr in zip(grads[3:], lrs[3:]):
        b.step(resumed, g.copy(), lr)

    assert resumed.tobytes() == params.tobytes()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(sa[k].tobytes() == sb[k].tobytes() for k in sa)


def test_state_dict_is_a_snapshot():
    opt = make_optimizer(OptimizerSpec("adam"), 2, np.float32)
    p = np.ones(2, np.float32)
    opt.step(p, np.ones(2, np.float32), 0.1)
    state = opt.state_dict()
    m = state["exp_avg"].copy()
    opt.step(p, np.ones(2, np.float32), 0.1)
    assert state["exp_avg"].tobytes() == m.tobytes() and int(state["step"]) == 1
    state["exp_avg"][:] = 123.0  # mutating a loaded dict must not reach the optimizer
    opt.load_state_dict(state)
    state["exp_avg"][:] = 0.0
    assert opt.state_dict()["exp_avg"].tolist() == [123.0, 123.0]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.pop("exp_avg_sq"),
        lambda s: s.update(extra=np.zeros(2)),
        lambda s: s.update(exp_avg=np.zeros(2, np.float64)),
        lambda s: s.update(exp_avg=np.zeros(3, np.float32)),
        lambda s: s.update(step=np.array([1])),
        lambda s: s.update(step=np.array(-1)),
        lambda s: s.update(step=np.array(1.0)),
    ],
)
def test_load_state_dict_rejects_mismatched_state(mutate):
    opt = make_optimizer(OptimizerSpec("adam"), 2, np.float32)
    state = opt.state_dict()
    mutate(state)
    with pytest.raises(ValueError):
        opt.load_state_dict(state)
    assert opt.step_count == 0


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_across_instances(name):
    theta, grads, lrs = problem(np.float32, n=1000, seed=2)
    spec = OptimizerSpec(name, weight_decay=0.01, clip_norm=3.0)
    runs = [run(make_optimizer(spec, theta.size, np.float32), theta, grads, lrs) for _ in range(2)]
    assert all(x.tobytes() == y.tobytes() for x, y in zip(runs[0][0], runs[1][0]))
    assert runs[0][1] == runs[1][1]


# --------------------------------------------------------------------------- arguments and dtypes


@pytest.mark.parametrize("name", NAMES)
def test_float32_is_preserved(name):
    opt = make_optimizer(OptimizerSpec(name), 4, np.float32)
    p = np.ones(4, np.float32)
    norm = opt.step(p, np.full(4, 0.5, np.float32), 0.1)
    assert p.dtype == np.float32 and isinstance(norm, float)
    assert all(v.dtype == np.float32 for k, v in opt.state_dict().items() if k != "step")


def test_step_rejects_bad_arguments():
    opt = make_optimizer(OptimizerSpec("sgd"), 3, np.float32)
    p = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="grad must be a float32"):
        opt.step(p, np.ones(3, np.float64), 0.1)
    with pytest.raises(ValueError, match="params must be a float32"):
        opt.step(np.ones(4, np.float32), np.ones(3, np.float32), 0.1)
    with pytest.raises(ValueError, match="share memory"):
        opt.step(p, p, 0.1)
    with pytest.raises(ValueError, match="lr"):
        opt.step(p, np.ones(3, np.float32), float("nan"))
    assert opt.step_count == 0 and p.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("dtype,n", [(np.float16, 3), (np.int32, 3), (np.float32, 0), (np.float32, 2.0)])
def test_make_optimizer_rejects_bad_dtype_or_size(dtype, n):
    with pytest.raises((TypeError, ValueError)):
        make_optimizer(OptimizerSpec("sgd"), n, dtype)


# --------------------------------------------------------------------------- spec validation


def test_from_dict_full_spec():
    spec = OptimizerSpec.from_dict(
        {
            "name": "adamw",
            "lr": 1,
            "beta2": 0.98,
            "weight_decay": 0.01,
            "clip_norm": 1,
            "schedule": {"name": "cosine", "warmup_steps": 100, "min_lr": 0.001},
        }
    )
    assert spec == OptimizerSpec(
        "adamw", lr=1.0, beta2=0.98, weight_decay=0.01, clip_norm=1.0,
        schedule=ScheduleSpec("cosine", warmup_steps=100, min_lr=0.001),
    )
    assert isinstance(spec.lr, float) and isinstance(spec.clip_norm, float)
    assert OptimizerSpec.from_dict({"name": "sgd"}).schedule == ScheduleSpec("constant")


@pytest.mark.parametrize(
    "d,field,fragment",
    [
        ({"name": "adam", "lr": -1}, "optimizer.lr", "must be > 0, got -1"),
        ({"name": "adam", "lr": 0}, "optimizer.lr", "> 0"),
        ({"name": "adam", "lr": float("inf")}, "optimizer.lr", "finite"),
        ({"name": "adam", "lr": "fast"}, "optimizer.lr", "must be a number"),
        ({"name": "lamb"}, "optimizer.name", "must be one of"),
        ({"lr": 0.1}, "optimizer.name", "required"),
        ({"name": "adam", "beta1": 1.0}, "optimizer.beta1", "[0, 1)"),
        ({"name": "adam", "beta2": -0.1}, "optimizer.beta2", "[0, 1)"),
        ({"name": "adam", "eps": 0}, "optimizer.eps", "> 0"),
        ({"name": "rmsprop", "alpha": 1}, "optimizer.alpha", "[0, 1)"),
        ({"name": "momentum", "momentum": 1.2}, "optimizer.momentum", "[0, 1)"),
        ({"name": "nesterov", "momentum": 0}, "optimizer.momentum", "> 0"),
        ({"name": "sgd", "momentum": 0.9}, "optimizer.momentum", "no momentum"),
        ({"name": "sgd", "weight_decay": -1e-4}, "optimizer.weight_decay", ">= 0"),
        ({"name": "sgd", "weight_decay": True}, "optimizer.weight_decay", "must be a number"),
        ({"name": "sgd", "clip_norm": 0}, "optimizer.clip_norm", "> 0"),
        ({"name": "sgd", "lr": 0.01, "schedule": {"name": "cosine", "min_lr": 0.1}},
         "optimizer.schedule.min_lr", "<= lr"),
        ({"name": "sgd", "schedule": {"name": "step", "gama": 0.5}}, "optimizer.schedule.gama",
         "unknown field (did you mean 'gamma'?)"),
        ({"name": "sgd", "learning_rate": 0.1}, "optimizer.learning_rate", "unknown field"),
    ],
)
def test_from_dict_errors_name_the_field(d, field, fragment):
    with pytest.raises(SpecError) as exc:
        OptimizerSpec.from_dict(d)
    assert exc.value.field == field
    assert fragment in exc.value.message
    assert str(exc.value) == f"{field}: {exc.value.message}"


def test_from_dict_reports_every_error_at_once():
    with pytest.raises(SpecError) as exc:
        OptimizerSpec.from_dict({"name": "adam", "lrr": 1, "betas": 2, "eps": 0, "momentum": 0.5})
    fields = [f for f, _ in exc.value.errors]
    assert sorted(fields) == ["optimizer.betas", "optimizer.eps", "optimizer.lrr", "optimizer.momentum"]
    assert str(exc.value) == "\n".join(f"{f}: {m}" for f, m in exc.value.errors)
    assert "unknown field" in dict(exc.value.errors)["optimizer.betas"]


def test_numeric_strings_are_numbers():
    """YAML 1.1 (PyYAML) reads `lr: 3e-3` as the string '3e-3'."""
    assert OptimizerSpec.from_dict({"name": "adam", "lr": "3e-3", "eps": " 1e-6 "}).lr == 0.003


def test_from_dict_rejects_non_mapping_and_uses_custom_path():
    with pytest.raises(SpecError, match=r"^optimizer: must be a mapping"):
        OptimizerSpec.from_dict(["adam"])
    with pytest.raises(SpecError, match=r"^job\.optim\.lr: "):
        OptimizerSpec.from_dict({"name": "sgd", "lr": -1}, path="job.optim")


# --------------------------------------------------------------------------- optional: torch


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_matches_torch_optim(name, dtype):
    torch = pytest.importorskip("torch")
    theta, grads, lrs = problem(dtype, n=200, seed=3)
    wd = 0.05
    spec = OptimizerSpec(name, weight_decay=wd, **HPARAMS)
    got, _ = run(make_optimizer(spec, theta.size, dtype), theta, grads, lrs)
    # float32 agrees to an ulp or two (torch's kernels fuse multiply-adds), float64 tightly.
    close = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)

    p = torch.nn.Parameter(torch.tensor(theta))
    if name in ("sgd", "momentum", "nesterov"):
        mu = 0.0 if name == "sgd" else HPARAMS["momentum"]
        opt = torch.optim.SGD([p], lr=lrs[0], momentum=mu, nesterov=name == "nesterov", weight_decay=wd)
    elif name == "rmsprop":
        opt = torch.optim.RMSprop([p], lr=lrs[0], alpha=HPARAMS["alpha"], eps=HPARAMS["eps"], weight_decay=wd)
    else:
        cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        betas = (HPARAMS["beta1"], HPARAMS["beta2"])
        opt = cls([p], lr=lrs[0], betas=betas, eps=HPARAMS["eps"], weight_decay=wd)
    for step, (g, lr) in enumerate(zip(grads, lrs)):
        for group in opt.param_groups:
            group["lr"] = lr
        p.grad = torch.tensor(g)
        opt.step()
        np.testing.assert_allclose(got[step], p.detach().numpy(), **close, err_msg=f"step {step}")
