"""Dropout's mask is a function of (seed, step, dataset row, node): the same whatever the
chunk or worker, off in evaluation, and backward uses the forward's mask."""
from __future__ import annotations

import numpy as np
import pytest
from dptrain.engine import Context, Model, SpecError
from dptrain.engine.dropout import keep_mask

SPEC = {"input": 8, "layers": ["linear 16", "relu", "dropout 0.25", "linear 3"], "loss": "cross_entropy"}


def _batch(n=6):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 8)), np.arange(n) % 3


def test_the_mask_of_an_example_does_not_depend_on_its_chunk():
    """(The outputs themselves may differ in the last bit between batch sizes: BLAS picks
    kernels by shape. That is why chunks are fixed; the mask must not add to it.)"""
    m = Model(SPEC, dtype=np.float64)
    (drop,) = [op for op in m.graph.ops.values() if op.uses_context]
    theta = m.init_params(0)
    X, y = _batch()
    rows = np.arange(100, 106)
    m.forward(theta, X, Context(1, 5, rows))
    whole = drop.keep.copy()
    assert 0 < whole.mean() < 1
    for lo, hi in ((0, 2), (2, 5), (5, 6)):  # the same examples in other chunks, other order
        m.forward(theta, X[lo:hi][::-1], Context(1, 5, rows[lo:hi][::-1]))
        np.testing.assert_array_equal(drop.keep[::-1], whole[lo:hi])


def test_the_mask_changes_with_step_seed_node_and_row():
    base = keep_mask(1, 5, "d", np.arange(50), 40, 0.5)
    for other in (keep_mask(1, 6, "d", np.arange(50), 40, 0.5), keep_mask(2, 5, "d", np.arange(50), 40, 0.5),
                  keep_mask(1, 5, "e", np.arange(50), 40, 0.5), keep_mask(1, 5, "d", np.arange(1, 51), 40, 0.5)):
        assert (other != base).mean() > 0.3


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_the_drop_rate_is_p(p):
    keep = keep_mask(3, 7, "d", np.arange(2000), 500, p)
    assert abs((1 - keep.mean()) - p) < 0.005


def test_off_without_a_training_context():
    m = Model(SPEC, dtype=np.float64)
    theta = m.init_params(0)
    X, _ = _batch()
    plain = Model({**SPEC, "layers": ["linear 16", "relu", "linear 3"]}, dtype=np.float64).forward(theta, X).copy()
    np.testing.assert_array_equal(m.forward(theta, X), plain)
    np.testing.assert_array_equal(m.forward(theta, X, Context(1, 5, np.arange(6), train=False)), plain)


def test_backward_matches_finite_differences_for_a_fixed_mask():
    m = Model(SPEC, dtype=np.float64)
    theta = m.init_params(0)
    X, y = _batch()
    ctx = Context(1, 5, np.arange(6))
    grad = m.grad_sum(theta, X, y, ctx=ctx).grad.copy()
    rng = np.random.default_rng(1)
    for j in rng.choice(theta.size, 25, replace=False):
        h = 1e-6
        up, down = theta.copy(), theta.copy()
        up[j] += h
        down[j] -= h
        fd = (m.grad_sum(up, X, y, ctx=ctx).loss - m.grad_sum(down, X, y, ctx=ctx).loss) / (2 * h)
        assert fd == pytest.approx(grad[j], rel=1e-5, abs=1e-8)


def test_a_bad_rate_is_named():
    with pytest.raises(SpecError, match=r"model.layers\[2\].p: must be a number in \[0, 1\)"):
        Model({**SPEC, "layers": ["linear 16", "relu", {"op": "dropout", "p": 1.0}, "linear 3"]})
