"""LR schedules: values at chosen steps worked out by hand, validation, properties."""

from __future__ import annotations

import math

import pytest
from dptrain.core.optim import OptimizerSpec
from dptrain.core.schedules import ScheduleSpec, SpecError, lr_at
from hypothesis import given, settings
from hypothesis import strategies as st


def lrs(spec: ScheduleSpec, base: float, steps: range, total: int) -> list[float]:
    return [lr_at(spec, base, s, total) for s in steps]


def test_constant_is_base_lr_everywhere():
    assert lrs(ScheduleSpec("constant"), 0.3, range(0, 50), 50) == [0.3] * 50


def test_linear_warmup_then_constant():
    spec = ScheduleSpec("constant", warmup_steps=4)
    # base * (s + 1) / W: 0.1/4, 0.2/4, 0.3/4, 0.4/4, then base.
    assert lrs(spec, 0.4, range(6), 100) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4], rel=1e-15)


def test_step_decay_counts_from_end_of_warmup():
    spec = ScheduleSpec("step", warmup_steps=2, step_size=3, gamma=0.5)
    expected = [0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]
    assert lrs(spec, 1.0, range(12), 100) == pytest.approx(expected, rel=1e-15)


def test_cosine_values():
    spec = ScheduleSpec("cosine", min_lr=0.1)
    total = 10
    assert lr_at(spec, 1.0, 0, total) == pytest.approx(1.0, rel=1e-15)
    # t/T = 0.2: cos(36 deg) = 0.80901699..., (1 + c)/2 = 0.90450850 -> 0.1 + 0.9 * that.
    assert lr_at(spec, 1.0, 2, total) == pytest.approx(0.914057647468726, rel=1e-12)
    assert lr_at(spec, 1.0, 5, total) == pytest.approx(0.55, rel=1e-12)  # cos(pi/2) = 0
    assert lr_at(spec, 1.0, 9, total) == pytest.approx(0.1 + 0.9 * (1 - math.cos(math.pi / 10)) / 2, rel=1e-12)
    # Held at min_lr from the horizon on (no warm restart).
    assert lrs(spec, 1.0, range(10, 15), total) == [0.1] * 5


def test_cosine_after_warmup_spans_remaining_steps():
    spec = ScheduleSpec("cosine", warmup_steps=2)
    # T = 12 - 2 = 10: step 2 -> t=0 (base), step 7 -> t=5 (half), step 12 -> 0.
    assert lrs(spec, 2.0, range(3), 12) == pytest.approx([1.0, 2.0, 2.0], rel=1e-15)
    assert lr_at(spec, 2.0, 7, 12) == pytest.approx(1.0, rel=1e-12)
    assert lr_at(spec, 2.0, 12, 12) == 0.0


def test_spec_total_steps_overrides_run_length():
    spec = ScheduleSpec("cosine", total_steps=4)
    assert lr_at(spec, 1.0, 2, 1000) == pytest.approx(0.5, rel=1e-12)
    assert lr_at(spec, 1.0, 500, 1000) == 0.0


def test_cosine_when_run_is_not_longer_than_warmup():
    spec = ScheduleSpec("cosine", warmup_steps=5, min_lr=0.01)
    assert lr_at(spec, 1.0, 4, 3) == pytest.approx(1.0)
    assert lr_at(spec, 1.0, 5, 3) == 0.01


def test_optimizer_spec_lr_at_uses_its_base_lr_and_schedule():
    spec = OptimizerSpec("adam", lr=0.5, schedule=ScheduleSpec("step", step_size=2, gamma=0.1))
    assert [spec.lr_at(s, 10) for s in range(5)] == pytest.approx([0.5, 0.5, 0.05, 0.05, 0.005], rel=1e-14)


@pytest.mark.parametrize("step,total", [(-1, 10), (0, 0)])
def test_lr_at_rejects_bad_arguments(step, total):
    with pytest.raises(ValueError):
        lr_at(ScheduleSpec(), 0.1, step, total)


def test_from_dict_roundtrip_and_number_normalisation():
    spec = ScheduleSpec.from_dict({"name": "step", "warmup_steps": 3, "step_size": 7, "gamma": 1})
    assert spec == ScheduleSpec("step", 3, 7, 1.0, None, 0.0)
    assert isinstance(spec.gamma, float)


@pytest.mark.parametrize(
    "d,field,fragment",
    [
        ({"name": "linear"}, "optimizer.schedule.name", "must be one of"),
        ({}, "optimizer.schedule.name", "required"),
        ({"name": "step", "gamma": 0}, "optimizer.schedule.gamma", "(0, 1]"),
        ({"name": "step", "gamma": 1.5}, "optimizer.schedule.gamma", "(0, 1]"),
        ({"name": "step", "gamma": "fast"}, "optimizer.schedule.gamma", "must be a number"),
        ({"name": "step", "step_size": 0}, "optimizer.schedule.step_size", "in [1, "),
        ({"name": "step", "step_size": 2.0}, "optimizer.schedule.step_size", "integer"),
        ({"name": "constant", "warmup_steps": -1}, "optimizer.schedule.warmup_steps", "in [0, "),
        ({"name": "constant", "warmup_steps": True}, "optimizer.schedule.warmup_steps", "integer"),
        ({"name": "cosine", "warmup_steps": 10, "total_steps": 10}, "optimizer.schedule.total_steps", "> warmup_steps"),
        ({"name": "cosine", "min_lr": -0.1}, "optimizer.schedule.min_lr", ">= 0"),
        ({"name": "cosine", "min_lr": float("nan")}, "optimizer.schedule.min_lr", "finite"),
        ({"name": "cosine", "warmup": 10}, "optimizer.schedule.warmup", "did you mean 'warmup_steps'"),
    ],
)
def test_from_dict_errors_name_the_field(d, field, fragment):
    with pytest.raises(SpecError) as exc:
        ScheduleSpec.from_dict(d, path="optimizer.schedule")
    assert exc.value.field == field
    assert fragment in exc.value.message
    assert str(exc.value).startswith(f"{field}: ")


def test_numeric_strings_are_numbers_for_float_fields_only():
    """YAML 1.1 (PyYAML) reads `gamma: 5e-1` as the string '5e-1': a float field takes it."""
    assert ScheduleSpec.from_dict({"name": "step", "gamma": "5e-1"}).gamma == 0.5
    with pytest.raises(SpecError, match=r"^schedule\.step_size: must be an integer"):
        ScheduleSpec.from_dict({"name": "step", "step_size": "10"})


def test_nested_in_optimizer_spec_errors_carry_full_path():
    with pytest.raises(SpecError, match=r"^optimizer\.schedule\.gamma: "):
        OptimizerSpec.from_dict({"name": "sgd", "schedule": {"name": "step", "gamma": -1}})
    with pytest.raises(SpecError, match=r"^optimizer\.schedule: must be a mapping"):
        OptimizerSpec.from_dict({"name": "sgd", "schedule": "cosine"})


@settings(max_examples=60, deadline=None)
@given(
    warmup=st.integers(0, 20),
    extra=st.integers(1, 200),
    base=st.floats(1e-5, 10.0),
    min_frac=st.floats(0.0, 1.0),
)
def test_cosine_is_bounded_and_monotone_after_warmup(warmup, extra, base, min_frac):
    total = warmup + extra
    spec = ScheduleSpec("cosine", warmup_steps=warmup, min_lr=base * min_frac)
    values = lrs(spec, base, range(total + 3), total)
    ramp, decay = values[:warmup], values[warmup:]
    assert all(0.0 < a < b for a, b in zip(ramp, ramp[1:] + [base * (1 + 1e-12)]))
    assert decay[0] == pytest.approx(base, rel=1e-12)
    assert all(b <= a * (1 + 1e-12) for a, b in zip(decay, decay[1:]))
    assert all(spec.min_lr * (1 - 1e-12) <= v <= base * (1 + 1e-12) for v in decay)
