"""A trained model as ONNX: the graph of its output node, in evaluation mode, float32.

Each engine op becomes the ONNX operators that compute it (`EMIT`, one small function per
op): most map one to one (linear is MatMul + Add on the last axis, as in the engine;
conv2d is Conv; layer_norm is LayerNormalization; gelu is Gelu with its `approximate`),
attention is composed from MatMul, Reshape, Transpose and Softmax with the causal mask a
constant, and dropout is the identity (evaluation). The ONNX graph's input ``x`` has the
model input's shape with a dynamic batch axis (int64 token ids for token models); its
output ``y`` is the output node's values, what ``predict`` returns (logits, before any
loss). Opset 21. Needs the ``onnx`` package (`pip install 'dptrain[onnx]'`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

OPSET = 21


class _Graph:
    """The ONNX graph under construction: nodes, initializers, unique value names."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._names: set[str] = set()

    def name(self, base: str) -> str:
        n, i = base, 0
        while n in self._names:
            i += 1
            n = f"{base}_{i}"
        self._names.add(n)
        return n

    def const(self, base: str, value: Any, dtype: Any = np.float32) -> str:
        name = self.name(base)
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(np.asarray(value, dtype=dtype)), name))
        return name

    def op(self, op_type: str, inputs: list[str], base: str, **attrs: Any) -> str:
        out = self.name(base)
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


Emit = Callable[[_Graph, str, list[str], Mapping[str, Any], Mapping[str, np.ndarray]], str]


def _pairs(value: Any, rank: int) -> list[int]:
    items = value if isinstance(value, list) else [value]
    full = [int(items[0]), int(items[-1])]
    return full if rank == 2 else [full[1]]


def _linear(g, n, x, a, p):
    y = g.op("MatMul", [x[0], g.const(f"{n}.W", p["W"])], n)
    return g.op("Add", [y, g.const(f"{n}.b", p["b"])], n) if "b" in p else y


def _conv(rank: int) -> Emit:
    def emit(g, n, x, a, p):
        k, s, d = (_pairs(a[key], rank) for key in ("kernel", "stride", "dilation"))
        pad = _pairs(a["padding"], rank)
        inputs = [x[0], g.const(f"{n}.W", p["W"])] + ([g.const(f"{n}.b", p["b"])] if "b" in p else [])
        return g.op("Conv", inputs, n, kernel_shape=k, strides=s, dilations=d, pads=pad + pad, group=int(a["groups"]))
    return emit


def _pool(op_type: str) -> Emit:
    def emit(g, n, x, a, p):
        k = _pairs(a["kernel"], 2)
        s = k if a["stride"] is None else _pairs(a["stride"], 2)
        pad = _pairs(a["padding"], 2)
        extra = {"count_include_pad": 1} if op_type == "AveragePool" else {}
        return g.op(op_type, [x[0]], n, kernel_shape=k, strides=s, pads=pad + pad, **extra)
    return emit


def _global_avg_pool(g, n, x, a, p):
    return g.op("Flatten", [g.op("GlobalAveragePool", [x[0]], f"{n}.pool")], n, axis=1)


def _affine(g, n, p, channels: int) -> tuple[str, str]:
    """gamma and beta, or 1 and 0 without `affine`."""
    ones, zeros = np.ones(channels), np.zeros(channels)
    return (g.const(f"{n}.gamma", p.get("gamma", ones)), g.const(f"{n}.beta", p.get("beta", zeros)))


def _batch_norm(g, n, x, a, p):
    c = p["running_mean"].shape[0]
    gamma, beta = _affine(g, n, p, c)
    return g.op("BatchNormalization", [x[0], gamma, beta, g.const(f"{n}.mean", p["running_mean"]),
                                       g.const(f"{n}.var", p["running_var"])], n, epsilon=float(a["eps"]))


def _layer_norm(dim: Callable[[Mapping[str, np.ndarray]], int]) -> Emit:
    def emit(g, n, x, a, p):
        gamma, beta = _affine(g, n, p, dim(p))
        return g.op("LayerNormalization", [x[0], gamma, beta], n, axis=-1, epsilon=float(a["eps"]))
    return emit


def _group_norm(g, n, x, a, p):
    """(N, C, ...) normalised per group of C / groups channels, then a per-channel affine map."""
    groups = int(a["groups"])
    grouped = g.op("Reshape", [x[0], g.const(f"{n}.groups", [0, groups, -1], np.int64)], f"{n}.grouped")
    mean = g.op("ReduceMean", [grouped, g.const(f"{n}.axis", [2], np.int64)], f"{n}.mean", keepdims=1)
    centred = g.op("Sub", [grouped, mean], f"{n}.centred")
    var = g.op("ReduceMean", [g.op("Mul", [centred, centred], f"{n}.sq"), g.const(f"{n}.axis2", [2], np.int64)],
               f"{n}.var", keepdims=1)
    inv = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [var, g.const(f"{n}.eps", float(a["eps"]))], f"{n}.ve")],
                                  f"{n}.sd")], f"{n}.inv")
    normed = g.op("Reshape", [g.op("Mul", [centred, inv], f"{n}.xhat"), g.op("Shape", [x[0]], f"{n}.shape")],
                  f"{n}.normed")
    if "gamma" not in p:
        return g.op("Identity", [normed], n)
    c = p["gamma"].shape[0]
    rank = len(p["_in_shape"])  # per-example axes after the batch axis
    shape = (c,) + (1,) * (rank - 1)
    scaled = g.op("Mul", [normed, g.const(f"{n}.gamma", p["gamma"].reshape(shape))], f"{n}.scaled")
    return g.op("Add", [scaled, g.const(f"{n}.beta", p["beta"].reshape(shape))], n)


def _unary(op_type: str, **fixed: Any) -> Emit:
    return lambda g, n, x, a, p: g.op(op_type, [x[0]], n, **fixed)


def _with_alpha(op_type: str) -> Emit:
    return lambda g, n, x, a, p: g.op(op_type, [x[0]], n, alpha=float(a["alpha"]))


def _nary(op_type: str) -> Emit:
    def emit(g, n, x, a, p):
        out = x[0]
        for i, other in enumerate(x[1:]):
            out = g.op(op_type, [out, other], n if i == len(x) - 2 else f"{n}.part")
        return out
    return emit


def _attention(g, n, x, a, p):
    """softmax(Q K^T / sqrt(d) + mask) V Wo, per head, on (N, T, D) inputs."""
    heads, D = int(a["heads"]), p["Wq"].shape[0]
    dh = D // heads
    split = g.const(f"{n}.split", [0, 0, heads, dh], np.int64)

    def proj(w: str, b: str) -> str:
        y = g.op("MatMul", [x[0], g.const(f"{n}.{w}", p[w])], f"{n}.{w}x")
        if b in p:
            y = g.op("Add", [y, g.const(f"{n}.{b}", p[b])], f"{n}.{w}xb")
        return g.op("Reshape", [y, split], f"{n}.{w}h")

    q = g.op("Transpose", [proj("Wq", "bq")], f"{n}.q", perm=[0, 2, 1, 3])  # (N, H, T, d)
    kt = g.op("Transpose", [proj("Wk", "bk")], f"{n}.kt", perm=[0, 2, 3, 1])  # (N, H, d, T)
    v = g.op("Transpose", [proj("Wv", "bv")], f"{n}.v", perm=[0, 2, 1, 3])
    scores = g.op("Mul", [g.op("MatMul", [q, kt], f"{n}.qk"), g.const(f"{n}.scale", 1.0 / math.sqrt(dh))],
                  f"{n}.scores")
    if a["causal"]:
        T = int(p["_in_shape"][-2])
        mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), 1)
        scores = g.op("Add", [scores, g.const(f"{n}.mask", mask)], f"{n}.masked")
    probs = g.op("Softmax", [scores], f"{n}.P", axis=-1)
    ctx = g.op("Transpose", [g.op("MatMul", [probs, v], f"{n}.ctxh")], f"{n}.ctxt", perm=[0, 2, 1, 3])
    merged = g.op("Reshape", [ctx, g.const(f"{n}.merge", [0, 0, D], np.int64)], f"{n}.ctx")
    out = g.op("MatMul", [merged, g.const(f"{n}.Wo", p["Wo"])], f"{n}.o" if "bo" in p else n)
    return g.op("Add", [out, g.const(f"{n}.bo", p["bo"])], n) if "bo" in p else out


EMIT: dict[str, Emit] = {
    "linear": _linear,
    "prelu": lambda g, n, x, a, p: g.op("PRelu", [x[0], g.const(f"{n}.alpha", p["alpha"])], n),
    "relu": _unary("Relu"), "sigmoid": _unary("Sigmoid"), "tanh": _unary("Tanh"), "softplus": _unary("Softplus"),
    "leaky_relu": _with_alpha("LeakyRelu"), "elu": _with_alpha("Elu"),
    "gelu": lambda g, n, x, a, p: g.op("Gelu", [x[0]], n, approximate=str(a["approximate"])),
    "exp": _unary("Exp"), "log": _unary("Log"), "sin": _unary("Sin"), "cos": _unary("Cos"),
    "pow": lambda g, n, x, a, p: g.op("Pow", [x[0], g.const(f"{n}.c", float(a["exponent"]))], n),
    "add": _nary("Add"), "sub": _nary("Sub"), "mul": _nary("Mul"), "div": _nary("Div"),
    "concat": lambda g, n, x, a, p: g.op("Concat", x, n, axis=-1),
    "slice": lambda g, n, x, a, p: g.op("Slice", [x[0], g.const(f"{n}.start", [int(a["start"])], np.int64),
                                                  g.const(f"{n}.stop", [int(a["stop"])], np.int64),
                                                  g.const(f"{n}.axes", [-1], np.int64)], n),
    "dropout": _unary("Identity"),
    "batch_norm": _batch_norm,
    "layer_norm": _layer_norm(lambda p: int(p["_in_shape"][-1])),
    "group_norm": _group_norm,
    "conv2d": _conv(2), "conv1d": _conv(1),
    "max_pool2d": _pool("MaxPool"), "avg_pool2d": _pool("AveragePool"), "global_avg_pool": _global_avg_pool,
    "flatten": lambda g, n, x, a, p: g.op("Flatten", [x[0]], n, axis=1),
    "reshape": lambda g, n, x, a, p: g.op("Reshape", [x[0], g.const(f"{n}.shape", [0, *a["shape"]], np.int64)], n),
    "transpose": lambda g, n, x, a, p: g.op("Transpose", [x[0]], n, perm=[0, *(int(i) + 1 for i in a["axes"])]),
    "embedding": lambda g, n, x, a, p: g.op("Gather", [g.const(f"{n}.W", p["W"]), x[0]], n, axis=0),
    "unembed": lambda g, n, x, a, p: g.op("MatMul", [x[0], g.const(f"{n}.WT", p["W"].T)], n),
    "pos_embedding": lambda g, n, x, a, p: g.op("Add", [x[0], g.const(f"{n}.P", p["P"])], n),
    "matmul": lambda g, n, x, a, p: g.op("MatMul", x, n),
    "softmax": lambda g, n, x, a, p: g.op("Softmax", [x[0]], n, axis=-1),
    "attention": _attention,
    "standardize": lambda g, n, x, a, p: g.op("Div", [g.op("Sub", [x[0], g.const(f"{n}.mean", p["mean"])], f"{n}.c"),
                                                     g.const(f"{n}.std", p["std"])], n),
}


def to_onnx(spec: Mapping[str, Any], weights: Mapping[str, np.ndarray], name: str = "dptrain") -> Any:
    """The ONNX ModelProto of `spec` (a job spec or its model part) with `weights` (as
    GetWeights returns them: ``{"linear0.W": ...}``), checked by ``onnx.checker``."""
    import onnx
    from dptrain.engine import Model
    from onnx import TensorProto, helper

    model = Model(spec.get("model", spec))
    g = _Graph()
    values = {"x": "x"}
    g._names.add("x")
    for node in model.graph.order:
        op = model.graph.ops[node.name]
        params = {name: np.asarray(weights[flat], dtype=np.float32)  # a shared node reads its owner's
                  for name, flat in model.graph.uses.get(node.name, {}).items()}
        # the emitters that need the input's per-example shape read it here, beside the weights
        params["_in_shape"] = np.array(model.graph.shapes[node.inputs[0]])
        if node.op == "attention" and len(params["_in_shape"]) != 2:
            raise ValueError(f"{node.name}: ONNX export takes attention over (T, D) examples, "
                             f"got {list(params['_in_shape'])}")
        values[node.name] = EMIT[node.op](g, node.name, [values[i] for i in node.inputs], op.attrs, params)
    out = g.op("Identity", [values[model.spec.output]], "y")
    x_type = TensorProto.INT64 if model.spec.input.dtype == "int" else TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes, name,
        [helper.make_tensor_value_info("x", x_type, ["batch", *model.input_shape])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", *model.output_shape])],
        g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="dptrain")
    onnx.checker.check_model(proto, full_check=True)
    return proto
