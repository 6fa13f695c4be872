"""Examples are tensors: the input's shape and kind, shapes inferred node by node, last-axis
ops over sequences, and the sequence cross-entropy (one sub-loss per token, label smoothing)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from dptrain.core.trainer import check_compatible
from dptrain.data import Layout
from dptrain.engine import Model, SpecError, gradcheck

SEQ = {"input": [5, 4], "layers": ["linear 6", "tanh", "linear 3"], "loss": "cross_entropy"}


def test_the_input_forms_read_back_as_written():
    for given in (64, [1, 28, 28], {"shape": [16], "dtype": "int", "vocab": 96}):
        spec = {"input": given, "nodes": [{"name": "o", "op": "linear" if given != 64 else "tanh", "inputs": ["x"],
                                           **({"units": 3} if given != 64 else {})}]}
        if isinstance(given, dict):
            spec["nodes"] = [{"name": "e", "op": "tanh", "inputs": ["x"]}]
            with pytest.raises(SpecError, match=r"model.nodes\[0\] \(e\).inputs: .*token ids"):
                Model(spec)
            continue
        assert Model(spec).spec.to_dict()["input"] == given


@pytest.mark.parametrize("given, field, says", [
    ([0, 3], "model.input[0]", "positive integer"),
    ([1, 2, 3, 4, 5], "model.input", "list of 1 to 4"),
    ({"shape": [5], "dtype": "int"}, "model.input.vocab", "positive integer"),
    ({"shape": [5], "vocab": 9}, "model.input.vocab", "only for dtype: int"),
    ({"shape": [5], "dtype": "complex", "vocab": 3}, "model.input.dtype", "'float' or 'int'"),
    ([1000, 1000, 10], "model.input", "exceed the limit"),
])
def test_a_bad_input_is_named(given, field, says):
    with pytest.raises(SpecError) as e:
        Model({"input": given, "layers": ["tanh"]})
    assert (e.value.field, says in e.value.message) == (field, True), str(e.value)


def test_linear_acts_on_the_last_axis_like_a_per_token_linear():
    m = Model(SEQ, dtype=np.float64)
    assert m.output_shape == (5, 3)
    theta = m.init_params(0)
    X = np.random.default_rng(0).standard_normal((2, 5, 4))
    out = m.forward(theta, X).copy()
    for t in range(5):  # token by token, as a 2-D model would compute it
        flat = Model({"input": 4, "layers": ["linear 6", "tanh", "linear 3"]}, dtype=np.float64)
        np.testing.assert_allclose(flat.forward(theta, X[:, t]), out[:, t], rtol=1e-12)


def test_sequence_models_pass_gradcheck():
    assert gradcheck(SEQ, n=3).ok
    assert gradcheck({**SEQ, "loss": {"name": "cross_entropy", "label_smoothing": 0.2}}, n=3).ok


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_sequence_cross_entropy_is_pytorchs_sum_over_tokens(smoothing):
    m = Model({**SEQ, "loss": {"name": "cross_entropy", "label_smoothing": smoothing}}, dtype=np.float64)
    rng = np.random.default_rng(1)
    z = rng.standard_normal((3, 5, 3)) * 3
    y = rng.integers(0, 3, size=(3, 5))
    loss, g, correct = m.loss_fn.loss_and_grad(z, y)
    zt = torch.tensor(z, requires_grad=True)
    want = torch.nn.functional.cross_entropy(zt.reshape(-1, 3), torch.tensor(y).reshape(-1), reduction="sum",
                                             label_smoothing=smoothing)
    want.backward()
    assert loss == pytest.approx(want.item(), rel=1e-12)
    np.testing.assert_allclose(g, zt.grad.numpy(), rtol=1e-10, atol=1e-14)
    assert correct == int((z.argmax(-1) == y).sum())
    assert m.loss_fn.count(z) == 15  # one sub-loss per token: the global divisor counts tokens


def test_a_bad_loss_option_is_named():
    with pytest.raises(SpecError) as e:
        Model({**SEQ, "loss": {"name": "cross_entropy", "label_smoothing": 1.5, "temperature": 2}})
    fields = dict(e.value.errors)
    assert "in [0, 1)" in fields["model.loss.label_smoothing"]
    assert "unknown field" in fields["model.loss.temperature"]


def test_inputs_of_the_wrong_shape_are_named():
    m = Model({"input": [2, 4], "layers": ["linear 2"]})
    with pytest.raises(SpecError, match=r"inputs: must have shape \(n, 2, 4\)"):
        m.check_input(np.zeros((3, 8)), "inputs")


def test_the_dataset_layout_must_fit_the_model():
    m = Model(SEQ)
    check_compatible(m, Layout(10, (5, 4), "classification", 3, y_shape=(5,)), "seq")
    with pytest.raises(SpecError, match=r"model.input: is \[5, 4\] but dataset 'img' has examples of shape \[1"):
        check_compatible(m, Layout(10, (1, 5, 4), "classification", 3, y_shape=(5,)), "img")
    with pytest.raises(SpecError, match="do not fit labels of shape"):
        check_compatible(m, Layout(10, (5, 4), "classification", 3), "one label each")
    with pytest.raises(SpecError, match="holds token ids"):
        check_compatible(m, Layout(10, (5, 4), "classification", 3, x_int=True, y_shape=(5,)), "ids")
    flat = Model({"input": 64, "layers": ["linear 10"], "loss": "cross_entropy"})
    with pytest.raises(SpecError, match="model.input: is 64 but dataset 'd' has 8 features"):
        check_compatible(flat, Layout(10, (8,), "classification", 10), "d")
