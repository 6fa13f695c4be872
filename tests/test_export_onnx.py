"""`dptrain export`: every op of the engine as ONNX; onnxruntime's predictions equal the
engine's within float32 tolerance, for models that together use every registered op."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from dptrain.engine import Model
from dptrain.engine.registry import OPS
from dptrain.export.to_onnx import to_onnx

from .test_export_torch import trained_like

SPECS = {
    "cnn": {"input": [2, 12, 12], "layers": [
        {"op": "conv2d", "out": 4, "kernel": 3, "padding": 1, "stride": 1, "dilation": 1, "groups": 2}, "batch_norm",
        "relu", "max_pool2d 2", {"op": "conv2d", "out": 6, "kernel": [3, 2], "stride": 2, "padding": [1, 0],
                                 "bias": False},
        {"op": "avg_pool2d", "kernel": 2, "stride": 1, "padding": 1}, "group_norm 3", "leaky_relu 0.1",
        "dropout 0.2", "global_avg_pool", "linear 5"]},
    "seq1d": {"input": [3, 10], "layers": ["standardize", {"op": "conv1d", "out": 4, "kernel": 3, "dilation": 2}, "elu",
                                           {"op": "transpose", "axes": [1, 0]}, "layer_norm",
                                           {"op": "reshape", "shape": [24]}, "linear 6", "prelu", "softplus",
                                           "flatten", "linear 3"]},
    "math": {"input": 6, "output": "out", "nodes": [
        {"name": "a", "op": "slice", "inputs": ["x"], "start": 0, "stop": 3},
        {"name": "b", "op": "slice", "inputs": ["x"], "start": 3, "stop": 6},
        {"name": "s", "op": "add", "inputs": ["a", "b", "a"]}, {"name": "d", "op": "sub", "inputs": ["a", "b"]},
        {"name": "m", "op": "mul", "inputs": ["s", "d"]}, {"name": "e", "op": "exp", "inputs": ["d"]},
        {"name": "q", "op": "div", "inputs": ["m", "e"]}, {"name": "sg", "op": "sigmoid", "inputs": ["q"]},
        {"name": "l", "op": "log", "inputs": ["sg"]}, {"name": "t", "op": "tanh", "inputs": ["l"]},
        {"name": "si", "op": "sin", "inputs": ["t"]}, {"name": "co", "op": "cos", "inputs": ["t"]},
        {"name": "p", "op": "pow", "inputs": ["co"], "exponent": 2.0},
        {"name": "c", "op": "concat", "inputs": ["si", "p", "x"]},
        {"name": "g", "op": "gelu", "inputs": ["c"]}, {"name": "h", "op": "linear", "inputs": ["g"], "units": 12},
        {"name": "h2", "op": "linear", "inputs": ["h"], "units": 12, "share": "h"},
        {"name": "o", "op": "linear", "inputs": ["h2"], "units": 4},
        {"name": "out", "op": "softmax", "inputs": ["o"]}]},
    "gpt": {"input": {"shape": [7], "dtype": "int", "vocab": 13}, "output": "logits", "nodes": [
        {"name": "tok", "op": "embedding", "inputs": ["x"], "dim": 8, "std": 0.5},
        {"name": "pos", "op": "pos_embedding", "inputs": ["tok"]},
        {"name": "ln", "op": "layer_norm", "inputs": ["pos"]},
        {"name": "att", "op": "attention", "inputs": ["ln"], "heads": 2, "causal": True},
        {"name": "res", "op": "add", "inputs": ["pos", "att"]},
        {"name": "fc", "op": "linear", "inputs": ["res"], "units": 16},
        {"name": "act", "op": "gelu", "inputs": ["fc"], "approximate": "tanh"},
        {"name": "self", "op": "attention", "inputs": ["act"], "heads": 4, "bias": False},
        {"name": "act_t", "op": "transpose", "inputs": ["act"], "axes": [1, 0]},
        {"name": "qk", "op": "matmul", "inputs": ["self", "act_t"]},
        {"name": "mix", "op": "matmul", "inputs": [{"name": "sm", "op": "softmax", "inputs": ["qk"]}, "res"]},
        {"name": "res2", "op": "add", "inputs": ["res", "mix"]},
        {"name": "logits", "op": "unembed", "inputs": ["res2"], "share": "tok"}]},
}


def _fix(spec: dict) -> dict:
    """A node given inline as another node's input (the gpt spec's softmax) becomes its own node."""
    if "nodes" not in spec:
        return spec
    nodes = []
    for n in spec["nodes"]:
        inline = [i for i in n["inputs"] if isinstance(i, dict)]
        nodes += inline
        nodes.append({**n, "inputs": [i["name"] if isinstance(i, dict) else i for i in n["inputs"]]})
    return {**spec, "nodes": nodes}


def inputs(m: Model, n: int, rng: np.random.Generator) -> np.ndarray:
    if m.spec.input.dtype == "int":
        return rng.integers(0, m.spec.input.vocab, (n, *m.input_shape))
    return rng.standard_normal((n, *m.input_shape)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_onnxruntime_predicts_what_the_engine_predicts(name, tmp_path):
    spec = _fix(SPECS[name])
    m, theta, weights = trained_like(spec, seed=7)
    proto = to_onnx(spec, weights)
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(proto.SerializeToString())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    X = inputs(m, 5, np.random.default_rng(1))
    (got,) = session.run(None, {"x": X})
    np.testing.assert_allclose(got, m.predict(theta, X), rtol=2e-4, atol=2e-5)
    (one,) = session.run(None, {"x": X[:1]})  # the batch axis is dynamic
    assert one.shape == (1, *m.output_shape)


def test_every_registered_op_is_exported_and_checked():
    used = {n["op"] for s in SPECS.values() for n in (_fix(s).get("nodes") or [])}
    used |= {(layer if isinstance(layer, str) else layer["op"]).split()[0]
             for s in SPECS.values() for layer in s.get("layers", [])}
    assert used == set(OPS)
