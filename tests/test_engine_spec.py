"""Spec parsing and validation: each invalid spec names the node and field."""
from __future__ import annotations

import pytest
from dptrain.engine import Limits, Model, ModelSpec, SpecError

MLP = {"input": 4, "layers": ["linear 8", "relu", "linear 3"], "loss": "cross_entropy"}


def node(name, op, inputs, **attrs):
    return {"name": name, "op": op, "inputs": inputs, **attrs}


def dag(*nodes, **extra):
    return {"input": 4, "nodes": list(nodes), "loss": "mse", **extra}


INVALID = [
    ({"layers": ["linear 3"]}, "model.input", "positive integer"),
    ({**MLP, "input": -3}, "model.input", "positive integer"),
    ({**MLP, "layers": []}, "model.layers", "non-empty"),
    ({**MLP, "layers": ["linear 8", "swish"]}, "model.layers[1].op", "unknown op 'swish'"),
    ({**MLP, "layers": ["linear many"]}, "model.layers[0]", "cannot read units"),
    ({**MLP, "layers": ["linear 0"]}, "model.layers[0].units", "positive integer"),
    ({**MLP, "layers": ["linear 99999999"]}, "model.layers[0].units", "exceeds the limit"),
    ({**MLP, "layers": [{"op": "linear"}]}, "model.layers[0].units", "required"),
    ({**MLP, "layers": [{"op": "linear", "units": 3, "colour": 1}]}, "model.layers[0].colour", "unknown field"),
    ({**MLP, "layers": ["relu 3"]}, "model.layers[0]", "takes no argument"),
    ({**MLP, "loss": "hinge"}, "model.loss", "unknown loss 'hinge'"),
    ({**MLP, "layers": ["linear 1"]}, "model.loss", "width >= 2"),
    ({**MLP, "extra": 1}, "model.extra", "unknown field"),
    ({**MLP, "nodes": []}, "model", "exactly one of"),
    (dag(node("h", "linear", ["nope"], units=2)), "model.nodes[0] (h).inputs", "unknown input 'nope'"),
    (dag(node("a", "tanh", ["b"]), node("b", "tanh", ["a"]), node("c", "add", ["a", "x"])),
     "model.nodes[0] (a).inputs", "cycle"),
    (dag(node("h", "linear", ["x"], units=2), node("h", "relu", ["h"])), "model.nodes[1] (h).name", "duplicate"),
    (dag(node("x", "relu", ["x"])), "model.nodes[0] (x).name", "duplicate"),
    (dag(node("1h", "relu", ["x"])), "model.nodes[0].name", "identifier"),
    (dag(node("h", "linear", ["x"], units=2), node("s", "add", ["h", "x"])),
     "model.nodes[1] (s).inputs", "same width"),
    (dag(node("s", "add", ["x"])), "model.nodes[0] (s).inputs", "at least 2"),
    (dag(node("s", "sub", ["x", "x", "x"])), "model.nodes[0] (s).inputs", "takes 2"),
    (dag(node("h", "linear", ["x"], units=2), node("g", "linear", ["h"], units=3, share="h")),
     "model.nodes[1] (g).share", "parameters differ"),
    (dag(node("h", "linear", ["x"], units=2), node("g", "relu", ["h"], share="zz")),
     "model.nodes[1] (g).share", "unknown node"),
    (dag(node("h", "linear", ["x"], units=2), node("g", "relu", ["x"]), output="h"),
     "model.nodes[1] (g)", "does not contribute"),
    (dag(node("h", "linear", ["x"], units=2), output="zz"), "model.output", "unknown node"),
    (dag(node("s", "slice", ["x"], start=3, stop=9)), "model.nodes[0] (s).inputs", "start:stop"),
    (dag(node("p", "pow", ["x"])), "model.nodes[0] (p).exponent", "required"),
    (dag(node("p", "pow", ["x"], exponent="two")), "model.nodes[0] (p).exponent", "must be a number"),
    ("linear 3", "model", "mapping"),
]


@pytest.mark.parametrize("spec, field, words", INVALID, ids=[f"{i}-{c[1]}" for i, c in enumerate(INVALID)])
def test_invalid_spec_names_the_field(spec, field, words):
    with pytest.raises(SpecError) as info:
        Model(spec)
    assert info.value.field == field
    assert words in info.value.message


def test_parameter_budget():
    assert Model(MLP).num_params == 4 * 8 + 8 + 8 * 3 + 3 == 67
    with pytest.raises(SpecError, match="67 parameters exceed the limit of 66"):
        Model(MLP, limits=Limits(max_params=66))


def test_sequential_shorthand_equals_dict_layers_and_round_trips():
    a = ModelSpec.from_dict(MLP)
    layers = [{"op": "linear", "units": 8}, {"op": "relu"}, {"op": "linear", "units": 3}]
    b = ModelSpec.from_dict({**MLP, "layers": layers})
    assert a == b
    assert ModelSpec.from_dict(a.to_dict()) == a
    assert [n.name for n in a.nodes] == ["linear0", "relu1", "linear2"]


def test_yaml_spec_loads():
    yaml = pytest.importorskip("yaml")
    spec = yaml.safe_load("input: 4\nlayers: [linear 8, leaky_relu 0.2, linear 3]\nloss: cross_entropy\n")
    assert Model(spec).spec.nodes[1].attrs == {"alpha": 0.2}


def test_shape_errors_name_the_layer_in_the_sequential_form():
    from dptrain.engine.graph import build_graph
    from dptrain.engine.spec import ModelSpec

    spec = ModelSpec.from_dict({"input": 64, "layers": ["linear 8", {"op": "slice", "start": 5, "stop": 2},
                                                        "linear 10"], "loss": "cross_entropy"})
    with pytest.raises(SpecError, match=r"^model\.layers\[1\] \(slice1\)"):
        build_graph(spec)
    dag = ModelSpec.from_dict({"input": 4, "nodes": [{"name": "s", "op": "slice", "inputs": ["x"], "start": 3,
                                                      "stop": 1}], "loss": "mse"})
    with pytest.raises(SpecError, match=r"^model\.nodes\[0\] \(s\)"):
        build_graph(dag)


def test_the_shorthand_takes_an_ops_positional_attributes_in_order():
    m = Model({"input": [1, 12, 12], "layers": ["conv2d 4 3", "relu", "max_pool2d 2", "flatten", "dropout 0.1",
                                                "linear 3"], "loss": "cross_entropy"})
    ops = m.graph.ops
    assert ops["conv2d0"].attrs["out"] == 4 and ops["conv2d0"].attrs["kernel"] == 3
    assert ops["max_pool2d2"].attrs["kernel"] == 2 and ops["dropout4"].attrs["p"] == 0.1
    assert m.output_shape == (3,)
    seq = Model({"input": {"shape": [8], "dtype": "int", "vocab": 11},
                 "layers": ["embedding 16", "attention 4", "group_norm 2", "unembed"]})
    assert seq.graph.ops["attention1"].attrs["heads"] == 4 and seq.output_shape == (8, 11)
    with pytest.raises(SpecError, match=r"model.layers\[0\]: op 'conv2d' takes out, kernel in the shorthand"):
        Model({"input": [1, 8, 8], "layers": ["conv2d 4 3 1"]})
    with pytest.raises(SpecError, match=r"model.layers\[0\]: cannot read kernel from '3.5'"):
        Model({"input": [1, 8, 8], "layers": ["conv2d 4 3.5"]})
    with pytest.raises(SpecError, match=r"model.layers\[0\]: op 'relu' takes no argument"):
        Model({"input": 4, "layers": ["relu 2"]})
