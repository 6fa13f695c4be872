"""The declarative model spec: a sequential shorthand or a general DAG, both JSON/YAML.

Sequential::

    {"input": 784, "layers": ["linear 512", "relu", "linear 10"], "loss": "cross_entropy"}

The input is one example's shape: ``784`` (features), ``[1, 28, 28]`` (a float image,
channels first) or ``{shape: [64], dtype: int, vocab: 96}`` (token ids in [0, vocab)).

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

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from . import attrs
from .errors import SpecError, key_path, show, unknown_field
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


MAX_RANK = 4
"""Axes of one example at most (e.g. channels, depth, height, width)."""


@dataclass(frozen=True)
class InputSpec:
    """One example's shape and kind: floats, or integer token ids below `vocab`."""

    shape: tuple[int, ...]
    dtype: str = "float"  # "float" or "int"
    vocab: int | None = None

    def to_dict(self) -> Any:
        """The shortest form that reads back the same (a plain width for a float vector)."""
        if self.dtype == "int":
            return {"shape": list(self.shape), "dtype": "int", "vocab": self.vocab}
        return self.shape[0] if len(self.shape) == 1 else list(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


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
    input: InputSpec
    nodes: tuple[NodeSpec, ...]
    output: str
    loss: str | None = None
    loss_options: Mapping[str, Any] = field(default_factory=dict)  # e.g. label_smoothing
    recompute: Any = None  # k (segments of k nodes) or [[first, last], ...]: see graph.segments
    form: str = field(default="nodes", compare=False)  # "layers" if written in the sequential form: errors say so

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], limits: Limits = Limits(), path: str = "model") -> "ModelSpec":
        """Parse either form, reporting every error at once; structural checks here, shape
        checks in `dptrain.engine.graph`."""
        if isinstance(d, ModelSpec):
            return d
        if not isinstance(d, Mapping):
            raise SpecError(path, f"must be a mapping, got {type(d).__name__}")
        errs: Errors = []
        _no_unknown(d, {"input", "layers", "nodes", "output", "loss", "recompute"}, path, errs)
        n_in = _input(d.get("input"), f"{path}.input", limits, errs)
        nodes: list[NodeSpec] = []
        output = None
        if ("layers" in d) == ("nodes" in d):
            errs.append((path, "give exactly one of 'layers' (sequential) or 'nodes' (DAG)"))
        elif "layers" in d:
            if "output" in d:
                errs.append((f"{path}.output", "only for the DAG form ('nodes')"))
            nodes, complete = _sequential(d["layers"], f"{path}.layers", limits, errs)
            output = nodes[-1].name if nodes else None
        else:
            nodes, complete = _dag(d["nodes"], f"{path}.nodes", limits, errs)
            output = d.get("output", nodes[-1].name if nodes else None)
            if complete and output not in {n.name for n in nodes}:
                errs.append((f"{path}.output", f"unknown node {show(output)}"))
        loss, options = _loss(d.get("loss"), f"{path}.loss", errs)
        recompute = _recompute(d.get("recompute"), f"{path}.recompute", {n.name for n in nodes}, limits, errs)
        if errs:
            raise SpecError.of(errs)
        return cls(input=n_in, nodes=tuple(nodes), output=output, loss=loss, loss_options=options,
                   recompute=recompute, form="layers" if "layers" in d else "nodes")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"input": self.input.to_dict(), "nodes": [n.to_dict() for n in self.nodes],
                             "output": self.output}
        if self.loss:
            d["loss"] = {"name": self.loss, **self.loss_options} if self.loss_options else self.loss
        if self.recompute is not None:
            d["recompute"] = self.recompute if isinstance(self.recompute, int) else [list(r) for r in self.recompute]
        return d


Errors = list[tuple[str, str]]


def _recompute(v: Any, path: str, names: set[str], limits: Limits, errs: Errors) -> Any:
    """`k` (every k nodes in topological order form a segment) or `[[first, last], ...]`
    (the nodes from first to last in topological order): forward keeps only what leaves a
    segment, backward recomputes inside it (docs/backprop.md, 'Memory and runtime')."""
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        if not 1 <= v <= limits.max_nodes:
            errs.append((path, f"must be in [1, {limits.max_nodes}] nodes per segment, got {show(v)}"))
            return None
        return v
    if not isinstance(v, list) or not v:
        errs.append((path, f"must be a number of nodes per segment or a list of [first, last] node pairs, "
                           f"got {show(v)}"))
        return None
    ranges = []
    for i, r in enumerate(v):
        if not (isinstance(r, list) and len(r) == 2 and all(isinstance(s, str) for s in r)):
            errs.append((f"{path}[{i}]", f"must be a [first, last] pair of node names, got {show(r)}"))
            continue
        for s in r:
            if s not in names:
                errs.append((f"{path}[{i}]", f"unknown node {show(s)}"))
        ranges.append(tuple(r))
    return tuple(ranges)


def _no_unknown(d: Mapping[str, Any], allowed: set[str], path: str, errs: Errors) -> None:
    for key in sorted((k for k in d if k not in allowed), key=str):
        errs.append((key_path(path, key), unknown_field(key, allowed)))


def _positive_int(v: Any, path: str, limit: int, errs: Errors) -> int | None:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        errs.append((path, f"must be a positive integer, got {show(v)}"))
    elif v > limit:
        errs.append((path, f"{show(v)} exceeds the limit of {limit}"))
    else:
        return v
    return None


def _input(v: Any, path: str, limits: Limits, errs: Errors) -> InputSpec | None:
    """`784`, `[1, 28, 28]` or `{shape: [64], dtype: int, vocab: 96}`."""
    dtype, vocab = "float", None
    if isinstance(v, Mapping):
        before = len(errs)
        _no_unknown(v, {"shape", "dtype", "vocab"}, path, errs)
        dtype = v.get("dtype", "float")
        if dtype not in ("float", "int"):
            errs.append((f"{path}.dtype", f"must be 'float' or 'int' (token ids), got {show(dtype)}"))
        if dtype == "int":
            vocab = _positive_int(v.get("vocab"), f"{path}.vocab", limits.max_input, errs)
        elif "vocab" in v:
            errs.append((f"{path}.vocab", "only for dtype: int"))
        if "shape" not in v:
            errs.append((f"{path}.shape", "missing"))
        if len(errs) > before:
            return None
        v, path = v["shape"], f"{path}.shape"
    dims = [v] if isinstance(v, int) and not isinstance(v, bool) else v
    if not isinstance(dims, list) or not 1 <= len(dims) <= MAX_RANK:
        errs.append((path, f"must be a positive integer or a list of 1 to {MAX_RANK} of them, got {show(v)}"))
        return None
    before = len(errs)
    shape = tuple(_positive_int(s, f"{path}[{i}]" if len(dims) > 1 else path, limits.max_input, errs)
                  for i, s in enumerate(dims))
    if len(errs) > before:
        return None
    spec = InputSpec(shape, dtype, vocab)  # type: ignore[arg-type]
    if spec.size > limits.max_input:
        errs.append((path, f"{spec.size} values per example exceed the limit of {limits.max_input}"))
        return None
    return spec


def _loss(v: Any, path: str, errs: Errors) -> tuple[str | None, dict[str, Any]]:
    """`cross_entropy` or `{name: cross_entropy, label_smoothing: 0.1}`."""
    if v is None:
        return None, {}
    options: dict[str, Any] = {}
    if isinstance(v, Mapping):
        options = {k: o for k, o in v.items() if k != "name"}
        v = v.get("name")
    name = ALIASES.get(v, v) if isinstance(v, str) else v
    if name not in LOSSES:
        known = sorted({*LOSSES, *ALIASES})
        near = difflib.get_close_matches(v, known, n=1) if isinstance(v, str) else []
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        errs.append((path, f"unknown loss {show(v)}{hint}; choose one of {known}"))
        return None, {}
    for key, value in options.items():
        problem = LOSSES[name].option_problem(key, value)
        if problem:
            errs.append((key_path(path, key), problem))
    return name, options


def _sequential(layers: Any, path: str, limits: Limits, errs: Errors) -> tuple[list[NodeSpec], bool]:
    """The layers as a chain of nodes, and whether every layer was valid."""
    if not isinstance(layers, list) or not layers:
        errs.append((path, "must be a non-empty list of layers"))
        return [], False
    if len(layers) > limits.max_nodes:
        errs.append((path, f"{len(layers)} layers exceed the limit of {limits.max_nodes}"))
        return [], False
    nodes, prev, before = [], INPUT, len(errs)
    for i, layer in enumerate(layers):
        where = f"{path}[{i}]"
        try:
            op, attrs = parse_layer(layer, where)
        except SpecError as e:
            errs.extend(e.errors)
            continue
        for key in ("inputs", "name", "share"):
            if key in attrs:
                errs.append((f"{where}.{key}", "only for the DAG form ('nodes')"))
                attrs.pop(key)
        name = f"{op}{i}" if isinstance(op, str) else f"layer{i}"
        node = _node(name, op, (prev,), attrs, None, where, limits, errs)
        if node is not None:
            nodes.append(node)
        prev = name
    return nodes, len(errs) == before


def parse_layer(layer: Any, where: str) -> tuple[Any, dict[str, Any]]:
    """A sequential layer as ``(op, attributes)``: ``"linear 64"`` (the one parser of the
    shorthand) or ``{"op": "linear", "units": 64}``."""
    if isinstance(layer, str):
        return _shorthand(layer, where)
    if isinstance(layer, Mapping):
        if "op" not in layer:
            raise SpecError(where, "missing 'op'")
        return layer["op"], {k: v for k, v in layer.items() if k != "op"}
    raise SpecError(where, f"must be a string like 'linear 64' or a mapping, got {show(layer)}")


def _shorthand(text: str, where: str) -> tuple[str, dict[str, Any]]:
    """"op", or "op a b": the op's positional attributes (registry.POSITIONAL) in order;
    integers for the integer kinds (units, channels, kernel sizes), numbers otherwise."""
    op, *args = text.split() or [""]
    if not op:
        raise SpecError(where, f"expected 'op' or 'op argument', got {show(text)}")
    names = POSITIONAL.get(op, ())
    if len(args) > len(names):
        takes = f"takes {', '.join(names)}" if names else "takes no argument"
        raise SpecError(where, f"op {show(op)} {takes} in the shorthand, got {show(text)}")
    given: dict[str, Any] = {}
    for name, arg in zip(names, args):
        kind = OPS[op].attr_kinds.get(name) or attrs.LEGACY.get(name)
        try:
            given[name] = int(arg) if kind in _INT_KINDS else float(arg)
        except ValueError:
            raise SpecError(where, f"cannot read {name} from {show(arg)}") from None
    return op, given


_INT_KINDS = {"count", "index", "pair", "pair0", "single", "single0"}


def _dag(raw: Any, path: str, limits: Limits, errs: Errors) -> tuple[list[NodeSpec], bool]:
    """The nodes, and whether every node was valid."""
    if not isinstance(raw, list) or not raw:
        errs.append((path, "must be a non-empty list of nodes"))
        return [], False
    if len(raw) > limits.max_nodes:
        errs.append((path, f"{len(raw)} nodes exceed the limit of {limits.max_nodes}"))
        return [], False
    nodes, seen, before = [], {INPUT}, len(errs)
    for i, d in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(d, Mapping):
            errs.append((where, f"must be a mapping, got {show(d)}"))
            continue
        name = d.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            errs.append((f"{where}.name", f"must be an identifier-like string, got {show(name)}"))
        else:
            where = f"{where} ({name})"
            if name in seen:
                hint = " ('x' is the input)" if name == INPUT else ""
                errs.append((f"{where}.name", f"duplicate name {name!r}{hint}"))
            seen.add(name)
        if "op" not in d:
            errs.append((f"{where}.op", "missing"))
            continue
        inputs = d.get("inputs")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(s, str) for s in inputs):
            errs.append((f"{where}.inputs", f"must be a non-empty list of node names, got {show(inputs)}"))
            inputs = None
        attrs = {k: v for k, v in d.items() if k not in ("name", "op", "inputs", "share")}
        node = _node(name, d["op"], tuple(inputs or ()), attrs, d.get("share"), where, limits, errs,
                     check_inputs=inputs is not None)
        if node is not None and len(errs) == before:
            nodes.append(node)
    return nodes, len(errs) == before


def _node(name: Any, op: Any, inputs: tuple[str, ...], attrs: dict[str, Any], share: Any,
          where: str, limits: Limits, errs: Errors, check_inputs: bool = True) -> NodeSpec | None:
    """The node, or None after adding its errors to `errs`."""
    if not isinstance(op, str) or op not in OPS:
        near = difflib.get_close_matches(op, OPS, n=1) if isinstance(op, str) else []
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        errs.append((f"{where}.op", f"unknown op {show(op)}{hint}; the {len(OPS)} ops are listed in docs/spec.md "
                                    "(or: dptrain schema)"))
        return None
    before = len(errs)
    cls = OPS[op]
    _no_unknown(attrs, set(cls.attr_defaults) | set(cls.required_attrs), where, errs)
    for key in cls.required_attrs:
        if key not in attrs:
            errs.append((f"{where}.{key}", f"required by op {op!r}"))
    for key, value in attrs.items():
        if key in cls.attr_defaults or key in cls.required_attrs:
            _check_attr(op, key, value, f"{where}.{key}", limits, errs)
    if check_inputs and cls.arity is None and len(inputs) < 2:
        errs.append((f"{where}.inputs", f"op {op!r} needs at least 2 inputs, got {len(inputs)}"))
    if check_inputs and cls.arity is not None and len(inputs) != cls.arity:
        errs.append((f"{where}.inputs", f"op {op!r} takes {cls.arity} input(s), got {len(inputs)}"))
    if share is not None and not isinstance(share, str):
        errs.append((f"{where}.share", f"must name a node, got {show(share)}"))
    if len(errs) > before:
        return None
    return NodeSpec(name=name, op=op, inputs=inputs, attrs=dict(attrs), share=share)


def _check_attr(op: str, key: str, value: Any, where: str, limits: Limits, errs: Errors) -> None:
    """Types and ranges, so that nothing accepted here can only fail at run time.

    Numeric attributes must be finite and within the op's bound (`Op.attr_bounds`, else
    `ATTR_BOUND`): ``pow`` exponent 1e308 or ``leaky_relu`` alpha inf would overflow every
    step. Column indices stop at the widest value a node can have.
    """
    message = _attr_problem(op, key, value, limits)
    if message:
        errs.append((where, message))


def _attr_problem(op: str, key: str, value: Any, limits: Limits) -> str | None:
    kind = OPS[op].attr_kinds.get(key) or attrs.LEGACY.get(key)
    if kind == "count" and key == "units":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"must be a positive integer, got {show(value)}"
        return f"width {show(value)} exceeds the limit of {limits.max_width}" if value > limits.max_width else None
    if kind == "index":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"must be a non-negative integer, got {show(value)}"
        widest = max(limits.max_input, limits.max_width)
        return f"{show(value)} exceeds the widest possible input, {widest}" if value > widest else None
    if kind is not None:
        return attrs.problem(kind, value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, got {show(value)}"
    bound = OPS[op].attr_bounds.get(key, ATTR_BOUND)
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    return f"{show(value)} is out of range: |{key}| <= {bound:g} for op {op!r}" if abs(value) > bound else None


def json_schema(limits: Limits = Limits()) -> dict[str, Any]:
    """The model spec's JSON Schema, from the op and loss registries (for ``dptrain schema``)."""
    ops = sorted(OPS)
    attr = {"type": ["number", "integer", "boolean", "string", "array"], "items": {"type": "integer"},
            "description": "an attribute: a number, a flag, a choice (gelu approximate) or integers ([3, 5])"}
    op_attrs = {"type": "object", "properties": {"op": {"enum": ops}}, "required": ["op"],
                "additionalProperties": attr, "description": "an op and its attributes"}
    positional = ", ".join(f"{op} {' '.join(args)}" for op, args in POSITIONAL.items())
    layer = {"anyOf": [{"type": "string", "description": "'op' or 'op arguments', e.g. 'linear 64', 'leaky_relu "
                                                         f"0.1', 'conv2d 16 5' (arguments: {positional})"},
                       op_attrs]}
    node = {"type": "object", "required": ["name", "op", "inputs"], "additionalProperties": attr,
            "properties": {"name": {"type": "string", "pattern": _NAME.pattern, "description": "the node's name"},
                           "op": {"enum": ops},
                           "inputs": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                                      "description": f"its input nodes ('{INPUT}' is the model's input)"},
                           "share": {"type": "string", "description": "a node whose parameters this one reuses"}}}
    return {
        "type": "object", "title": "ModelSpec", "additionalProperties": False, "required": ["input"],
        "description": "the network: `layers` (sequential) or `nodes` (a DAG), exactly one of them",
        "properties": {
            "input": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": limits.max_input},
                                {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1,
                                 "maxItems": MAX_RANK},
                                {"type": "object", "additionalProperties": False, "required": ["shape"],
                                 "properties": {"shape": {"type": "array", "items": {"type": "integer"}},
                                                "dtype": {"enum": ["float", "int"]},
                                                "vocab": {"type": "integer", "minimum": 1}}}],
                      "description": "one example's shape: 784 (features), [1, 28, 28] (an image, channels "
                                     "first) or {shape: [64], dtype: int, vocab: 96} (token ids)"},
            "layers": {"type": "array", "items": layer, "minItems": 1, "maxItems": limits.max_nodes,
                       "description": "the sequential form: each layer feeds the next"},
            "nodes": {"type": "array", "items": node, "minItems": 1, "maxItems": limits.max_nodes,
                      "description": "the DAG form: named nodes, any order"},
            "output": {"type": "string", "description": "DAG form: the output node (default: the last listed)"},
            "loss": {"anyOf": [{"enum": sorted({*LOSSES, *ALIASES})},
                               {"type": "object", "required": ["name"],
                                "properties": {"name": {"enum": sorted({*LOSSES, *ALIASES})},
                                               "label_smoothing": {"type": "number", "minimum": 0,
                                                                   "exclusiveMaximum": 1}}}],
                      "description": "the training loss: a name, or {name, options} (cross_entropy: "
                                     "label_smoothing)"},
            "recompute": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": limits.max_nodes},
                                    {"type": "array", "items": {"type": "array", "items": {"type": "string"},
                                                                "minItems": 2, "maxItems": 2}}],
                          "description": "activation recomputation: k (segments of k nodes) or [[first, last], "
                                         "...] node ranges; forward keeps only what leaves a segment, backward "
                                         "recomputes inside it (same bits, less memory, more time)"},
        },
    }
