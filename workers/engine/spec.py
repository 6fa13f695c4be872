"""The declarative model spec: a sequential shorthand or a general DAG, both JSON/YAML.

Sequential::

    {"input": 784, "layers": ["linear 512", "relu", "linear 10"], "loss": "cross_entropy"}

DAG (named nodes; ``x`` is the input; ``share`` reuses another node's parameters)::

    {"input": 64, "loss": "mse", "output": "out",
     "nodes": [{"name": "h", "op": "linear", "inputs": ["x"], "units": 64},
               {"name": "a", "op": "tanh", "inputs": ["h"]},
               {"name": "h2", "op": "linear", "inputs": ["a"], "units": 64, "share": "h"},
               {"name": "r", "op": "add", "inputs": ["a", "h2"]},
               {"name": "out", "op": "linear", "inputs": ["r"], "units": 1}]}

Validation names the offending node and field: ``model.nodes[2] (h2).share: ...``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import SpecError, show
from .losses import ALIASES, LOSSES
from .op import ATTR_BOUND
from .registry import OPS, POSITIONAL

INPUT = "x"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")


@dataclass(frozen=True)
class Limits:
    """Guards against specs that would exhaust a worker's memory, all checked when the model is built.

    `max_activations` bounds the values one example keeps for the backward pass (every
    node's width, summed): parameter-free ops (512 nodes of width 16384) would otherwise
    need gigabytes per chunk while the parameter budget sees nothing.
    """

    max_nodes: int = 512  # layers or nodes
    max_width: int = 16384  # units of a layer, and any node's output width
    max_input: int = 1_000_000  # input features
    max_params: int = 100_000_000  # parameters, shared ones counted once
    max_activations: int = 1 << 20  # sum of all nodes' output widths (values per example)


@dataclass(frozen=True)
class NodeSpec:
    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    share: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "op": self.op, "inputs": list(self.inputs), **self.attrs}
        if self.share:
            d["share"] = self.share
        return d


@dataclass(frozen=True)
class ModelSpec:
    input: int
    nodes: tuple[NodeSpec, ...]
    output: str
    loss: str | None = None
    form: str = field(default="nodes", compare=False)  # "layers" if written in the sequential form: errors say so

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], limits: Limits = Limits(), path: str = "model") -> "ModelSpec":
        """Parse either form; structural checks here, shape checks in `dptrain.engine.graph`."""
        if isinstance(d, ModelSpec):
            return d
        if not isinstance(d, Mapping):
            raise SpecError(path, f"must be a mapping, got {type(d).__name__}")
        allowed = {"input", "layers", "nodes", "output", "loss"}
        _no_unknown(d, allowed, path)
        n_in = _positive_int(d.get("input"), f"{path}.input", limits.max_input)
        if ("layers" in d) == ("nodes" in d):
            raise SpecError(path, "give exactly one of 'layers' (sequential) or 'nodes' (DAG)")
        if "layers" in d:
            if "output" in d:
                raise SpecError(f"{path}.output", "only for the DAG form ('nodes')")
            nodes = _sequential(d["layers"], f"{path}.layers", limits)
            output = nodes[-1].name
        else:
            nodes = _dag(d["nodes"], f"{path}.nodes", limits)
            output = d.get("output", nodes[-1].name if nodes else None)
            if output not in {n.name for n in nodes}:
                raise SpecError(f"{path}.output", f"unknown node {show(output)}")
        loss = d.get("loss")
        if loss is not None:
            loss = ALIASES.get(loss, loss)
            if loss not in LOSSES:
                raise SpecError(f"{path}.loss", f"unknown loss {show(d['loss'])}; choose one of {sorted(LOSSES)}")
        return cls(input=n_in, nodes=tuple(nodes), output=output, loss=loss,
                   form="layers" if "layers" in d else "nodes")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"input": self.input, "nodes": [n.to_dict() for n in self.nodes],
                             "output": self.output}
        if self.loss:
            d["loss"] = self.loss
        return d


def _no_unknown(d: Mapping[str, Any], allowed: set[str], path: str) -> None:
    unknown = sorted((str(k) for k in set(d) - allowed))
    if unknown:
        key = unknown[0] if len(unknown[0]) <= 64 else show(unknown[0])
        raise SpecError(f"{path}.{key}", f"unknown field; allowed: {sorted(allowed)}")


def _positive_int(v: Any, path: str, limit: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise SpecError(path, f"must be a positive integer, got {show(v)}")
    if v > limit:
        raise SpecError(path, f"{show(v)} exceeds the limit of {limit}")
    return v


def _sequential(layers: Any, path: str, limits: Limits) -> list[NodeSpec]:
    if not isinstance(layers, list) or not layers:
        raise SpecError(path, "must be a non-empty list of layers")
    if len(layers) > limits.max_nodes:
        raise SpecError(path, f"{len(layers)} layers exceed the limit of {limits.max_nodes}")
    nodes, prev = [], INPUT
    for i, layer in enumerate(layers):
        where = f"{path}[{i}]"
        if isinstance(layer, str):
            op, attrs = _shorthand(layer, where)
        elif isinstance(layer, Mapping):
            if "op" not in layer:
                raise SpecError(where, "missing 'op'")
            op, attrs = layer["op"], {k: v for k, v in layer.items() if k != "op"}
            for key in ("inputs", "name", "share"):
                if key in attrs:
                    raise SpecError(f"{where}.{key}", "only for the DAG form ('nodes')")
        else:
            raise SpecError(where, f"must be a string like 'linear 64' or a mapping, got {show(layer)}")
        name = f"{op}{i}"
        nodes.append(_node(name, op, (prev,), attrs, None, where, limits))
        prev = name
    return nodes


def _shorthand(text: str, where: str) -> tuple[str, dict[str, Any]]:
    parts = text.split()
    if not parts or len(parts) > 2:
        raise SpecError(where, f"expected 'op' or 'op argument', got {show(text)}")
    op = parts[0]
    if len(parts) == 1:
        return op, {}
    if op not in POSITIONAL:
        raise SpecError(where, f"op {show(op)} takes no argument in the shorthand, got {show(text)}")
    try:
        value: Any = int(parts[1]) if POSITIONAL[op] == "units" else float(parts[1])
    except ValueError:
        raise SpecError(where, f"cannot read {POSITIONAL[op]} from {show(parts[1])}") from None
    return op, {POSITIONAL[op]: value}


def _dag(raw: Any, path: str, limits: Limits) -> list[NodeSpec]:
    if not isinstance(raw, list) or not raw:
        raise SpecError(path, "must be a non-empty list of nodes")
    if len(raw) > limits.max_nodes:
        raise SpecError(path, f"{len(raw)} nodes exceed the limit of {limits.max_nodes}")
    nodes, seen = [], {INPUT}
    for i, d in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(d, Mapping):
            raise SpecError(where, f"must be a mapping, got {show(d)}")
        name = d.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise SpecError(f"{where}.name", f"must be an identifier-like string, got {show(name)}")
        where = f"{where} ({name})"
        if name in seen:
            hint = " ('x' is the input)" if name == INPUT else ""
            raise SpecError(f"{where}.name", f"duplicate name {name!r}{hint}")
        seen.add(name)
        if "op" not in d:
            raise SpecError(f"{where}.op", "missing")
        inputs = d.get("inputs")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(s, str) for s in inputs):
            raise SpecError(f"{where}.inputs", f"must be a non-empty list of node names, got {show(inputs)}")
        attrs = {k: v for k, v in d.items() if k not in ("name", "op", "inputs", "share")}
        nodes.append(_node(name, d["op"], tuple(inputs), attrs, d.get("share"), where, limits))
    return nodes


def _node(name: str, op: Any, inputs: tuple[str, ...], attrs: dict[str, Any], share: Any,
          where: str, limits: Limits) -> NodeSpec:
    if op not in OPS:
        raise SpecError(f"{where}.op", f"unknown op {show(op)}; choose one of {sorted(OPS)}")
    cls = OPS[op]
    allowed = set(cls.attr_defaults) | set(cls.required_attrs)
    _no_unknown(attrs, allowed, where)
    for key in cls.required_attrs:
        if key not in attrs:
            raise SpecError(f"{where}.{key}", f"required by op {op!r}")
    for key, value in attrs.items():
        _check_attr(op, key, value, f"{where}.{key}", limits)
    if cls.arity is None and len(inputs) < 2:
        raise SpecError(f"{where}.inputs", f"op {op!r} needs at least 2 inputs, got {len(inputs)}")
    if cls.arity is not None and len(inputs) != cls.arity:
        raise SpecError(f"{where}.inputs", f"op {op!r} takes {cls.arity} input(s), got {len(inputs)}")
    if share is not None and not isinstance(share, str):
        raise SpecError(f"{where}.share", f"must name a node, got {show(share)}")
    return NodeSpec(name=name, op=op, inputs=inputs, attrs=dict(attrs), share=share)


def _check_attr(op: str, key: str, value: Any, where: str, limits: Limits) -> None:
    """Types and ranges, so that nothing accepted here can only fail at run time.

    Numeric attributes must be finite and within the op's bound (`Op.attr_bounds`, else
    `ATTR_BOUND`): ``pow`` exponent 1e308 or ``leaky_relu`` alpha inf would overflow every
    step. Column indices stop at the widest value a node can have.
    """
    if key in ("units", "start", "stop"):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "units" else 0):
            kind = "positive" if key == "units" else "non-negative"
            raise SpecError(where, f"must be a {kind} integer, got {show(value)}")
        if key == "units" and value > limits.max_width:
            raise SpecError(where, f"width {show(value)} exceeds the limit of {limits.max_width}")
        widest = max(limits.max_input, limits.max_width)
        if value > widest:
            raise SpecError(where, f"{show(value)} exceeds the widest possible input, {widest}")
    elif key == "bias":
        if not isinstance(value, bool):
            raise SpecError(where, f"must be true or false, got {show(value)}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(where, f"must be a number, got {show(value)}")
    else:
        bound = OPS[op].attr_bounds.get(key, ATTR_BOUND)
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(where, f"must be a finite number, got {value!r}")
        if abs(value) > bound:
            raise SpecError(where, f"{show(value)} is out of range: |{key}| <= {bound:g} for op {op!r}")
