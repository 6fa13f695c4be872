"""Activation recomputation frees segments' values after forward and recomputes them in
backward: the same bits, less memory; bad segments are named."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from dptrain.engine import Context, Model, SpecError

MLP = {"input": 16, "layers": ["linear 64", "batch_norm", "relu", "dropout 0.2", "linear 64", "tanh",
                               "linear 64", "gelu", "linear 5"], "loss": "cross_entropy"}
DAG = {"input": 8, "loss": "mse", "nodes": [
    {"name": "a", "op": "linear", "inputs": ["x"], "units": 8}, {"name": "b", "op": "tanh", "inputs": ["a"]},
    {"name": "c", "op": "linear", "inputs": ["b"], "units": 8}, {"name": "d", "op": "add", "inputs": ["a", "c"]},
    {"name": "e", "op": "relu", "inputs": ["d"]}, {"name": "out", "op": "linear", "inputs": ["e"], "units": 2}]}


def _sums(spec, X, y, ctx=None):
    m = Model(spec)
    theta = m.init_params(0)
    results = []
    for _ in range(2):  # twice: the second pass runs on freed and reallocated buffers
        s = m.grad_sum(theta, X, y, ctx=ctx)
        g_x, _ = m.backward(m.loss_fn.loss_and_grad(m.forward(theta, X, ctx), y)[1].copy(), input_grad=True)
        results.append((s.grad.tobytes(), s.loss, None if s.stats is None else s.stats.tobytes(), g_x.tobytes()))
    assert results[0] == results[1]
    return results[0]


@pytest.mark.parametrize("recompute", [1, 2, 3, 7, [["linear4", "linear6"]],
                                       [["linear0", "relu2"], ["tanh5", "gelu7"]]])
def test_the_same_bits_with_batch_norm_and_dropout(recompute):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((12, 16)).astype(np.float32), np.arange(12) % 5
    ctx = Context(0, 3, np.arange(12))
    assert _sums({**MLP, "recompute": recompute}, X, y, ctx) == _sums(MLP, X, y, ctx)


@pytest.mark.parametrize("recompute", [1, 2, [["b", "d"]]])
def test_the_same_bits_when_values_cross_segments(recompute):
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((9, 8)).astype(np.float32), rng.standard_normal((9, 2)).astype(np.float32)
    assert _sums({**DAG, "recompute": recompute}, X, y) == _sums(DAG, X, y)


def test_input_gradients_see_every_node():
    m = Model({**DAG, "recompute": 2})
    plain = Model(DAG)
    theta = m.init_params(0)
    X = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    for node in ("b", "d", "out"):
        want = plain.input_gradient(theta, X, node, 0)[0]
        np.testing.assert_array_equal(m.input_gradient(theta, X, node, 0)[0], want)


def test_it_uses_less_memory():
    spec = {"input": 64, "layers": [x for _ in range(6) for x in ("linear 256", "relu")] + ["linear 4"],
            "loss": "cross_entropy"}
    X, y = np.random.default_rng(3).standard_normal((256, 64)).astype(np.float32), np.arange(256) % 4

    def peak(s):
        m = Model(s)
        theta = m.init_params(0)
        tracemalloc.start()
        m.grad_sum(theta, X, y)
        used = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return used

    assert peak({**spec, "recompute": 4}) < 0.85 * peak(spec)


@pytest.mark.parametrize("recompute, field, says", [
    (0, "model.recompute", "must be in [1,"),
    ("all", "model.recompute", "list of [first, last]"),
    ([["a", "nope"]], "model.recompute[0]", "unknown node 'nope'"),
    ([["a"]], "model.recompute[0]", "[first, last] pair"),
    ([["d", "b"]], "model.recompute[0]", "comes after"),
    ([["a", "c"], ["b", "d"]], "model.recompute", "overlap"),
])
def test_bad_segments_are_named(recompute, field, says):
    with pytest.raises(SpecError) as e:
        Model({**DAG, "recompute": recompute})
    assert e.value.field == field and says in e.value.message, str(e.value)
