"""From a parsed spec to an executable graph: order, shapes, parameter ownership.

Checks that need the whole graph live here: missing inputs, cycles, shape mismatches,
parameter sharing between compatible nodes, nodes that never reach the output, and the
parameter budget. Every error names the node and field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import SpecError, show
from .losses import LOSSES
from .op import Op, Shape
from .registry import OPS, RELU_LIKE
from .spec import INPUT, Limits, ModelSpec, NodeSpec


@dataclass(frozen=True)
class ParamInfo:
    """One named parameter tensor inside the flat buffer: theta[offset:offset+size]."""

    name: str
    shape: tuple[int, ...]
    offset: int
    owner: str  # the node whose parameters these are
    scheme: str  # initialisation scheme: "he" or "glorot"
    trainable: bool = True  # False: a statistic its op updates itself (batch norm's running averages)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass
class Graph:
    order: list[NodeSpec]  # topological order
    ops: dict[str, Op]
    shapes: dict[str, Shape]  # per-example output shape of each node (and of the input "x")
    params: list[ParamInfo]
    uses: dict[str, dict[str, str]]  # node -> {op param name -> flat param name}
    output: str
    num_params: int


def _where(spec: ModelSpec, node: NodeSpec) -> str:
    i = next(i for i, n in enumerate(spec.nodes) if n.name == node.name)
    return f"model.{spec.form}[{i}] ({node.name})"


def topological_order(spec: ModelSpec) -> list[NodeSpec]:
    """Kahn's algorithm; a leftover node lies on a cycle and is named in the error."""
    by_name = {n.name: n for n in spec.nodes}
    for n in spec.nodes:
        for inp in n.inputs:
            if inp != INPUT and inp not in by_name:
                raise SpecError(f"{_where(spec, n)}.inputs", f"unknown input {show(inp)}")
    indeg = {n.name: len({i for i in n.inputs if i != INPUT}) for n in spec.nodes}
    consumers: dict[str, list[str]] = {n.name: [] for n in spec.nodes}
    for n in spec.nodes:
        for inp in set(n.inputs) - {INPUT}:
            consumers[inp].append(n.name)
    ready = [n.name for n in spec.nodes if indeg[n.name] == 0]
    order = []
    while ready:
        name = ready.pop(0)
        order.append(by_name[name])
        for c in consumers[name]:
            indeg[c] -= 1
            if indeg[c] == 0:
                ready.append(c)
    if len(order) < len(spec.nodes):
        stuck = [n for n in spec.nodes if indeg[n.name] > 0]
        raise SpecError(f"{_where(spec, stuck[0])}.inputs",
                        f"cycle through nodes {[n.name for n in stuck]}")
    return order


def build_graph(spec: ModelSpec, limits: Limits = Limits()) -> Graph:
    """Infer every node's per-example shape in topological order, then lay out parameters."""
    order = topological_order(spec)
    _check_reaches_output(spec)
    shapes: dict[str, Shape] = {INPUT: spec.input.shape}
    ops: dict[str, Op] = {}
    for node in order:
        op = OPS[node.op](**node.attrs)
        op.name, op.vocab = node.name, spec.input.vocab
        where = _where(spec, node)
        ints = [i == INPUT and spec.input.dtype == "int" for i in node.inputs]
        if any(ints) != op.int_input:
            raise SpecError(f"{where}.inputs", f"op {node.op!r} reads integer token ids (the input 'x' of an int "
                                               "model)" if op.int_input else
                                               f"op {node.op!r} reads floats, but 'x' holds integer token ids: "
                                               "embed them first")
        try:
            shapes[node.name] = op.out_shape([shapes[i] for i in node.inputs])
        except ValueError as e:
            raise SpecError(f"{where}.inputs", str(e)) from None
        if shapes[node.name][-1] > limits.max_width:
            raise SpecError(where, f"width {shapes[node.name][-1]} exceeds the limit of {limits.max_width}")
        ops[node.name] = op
    if spec.loss:
        try:
            LOSSES[spec.loss]().check_output(shapes[spec.output])
        except ValueError as e:
            raise SpecError("model.loss", f"{e} (output node {spec.output!r})") from None
    activations = sum(math.prod(shapes[n.name]) for n in order)
    if activations > limits.max_activations:
        raise SpecError("model", f"the nodes' outputs total {activations} values per example, over the limit "
                                 f"of {limits.max_activations}")
    params, uses = _layout(spec, order, ops, shapes)
    total = sum(p.size for p in params)
    if total > limits.max_params:
        raise SpecError("model", f"{total} parameters exceed the limit of {limits.max_params}")
    return Graph(order=order, ops=ops, shapes=shapes, params=params, uses=uses,
                 output=spec.output, num_params=total)


def _check_reaches_output(spec: ModelSpec) -> None:
    """A node whose value never reaches the output would get no gradient: reject it."""
    by_name = {n.name: n for n in spec.nodes}
    live, stack = set(), [spec.output]
    while stack:
        name = stack.pop()
        if name in live or name == INPUT:
            continue
        live.add(name)
        stack.extend(by_name[name].inputs)
    for n in spec.nodes:
        if n.name not in live:
            raise SpecError(_where(spec, n), f"does not contribute to the output {spec.output!r}")


def _layout(spec, order, ops, shapes) -> tuple[list[ParamInfo], dict[str, dict[str, str]]]:
    """Assign each parameter tensor a slice of the flat buffer, in spec order.

    A node with ``share: other`` owns no tensors: it maps its parameter names onto the
    other node's, after checking that the ops agree (the same op, or one its `shares_with`
    names: unembed ties to an embedding) and so do the shapes.
    """
    by_name = {n.name: n for n in spec.nodes}
    consumers: dict[str, list[str]] = {n.name: [] for n in spec.nodes}
    for n in spec.nodes:
        for inp in n.inputs:
            if inp != INPUT:
                consumers[inp].append(n.name)
    shapes = {n.name: ops[n.name].param_shapes([shapes[i] for i in n.inputs]) for n in spec.nodes}
    params, uses, offset = [], {}, 0
    for node in spec.nodes:
        if node.share is not None:
            continue
        relu_next = any(by_name[c].op in RELU_LIKE for c in consumers[node.name])
        for pname, shape in shapes[node.name].items():
            info = ParamInfo(f"{node.name}.{pname}", tuple(shape), offset, node.name,
                             "he" if relu_next else "glorot", pname not in ops[node.name].buffer_names)
            params.append(info)
            offset += info.size
        uses[node.name] = {p: f"{node.name}.{p}" for p in shapes[node.name]}
    for node in spec.nodes:
        if node.share is None:
            continue
        where = f"{_where(spec, node)}.share"
        root = by_name.get(node.share)
        if root is None:
            raise SpecError(where, f"unknown node {show(node.share)}")
        if root.share is not None:
            raise SpecError(where, f"{root.name!r} shares parameters itself; name the owner {root.share!r}")
        if root.op not in (node.op, *OPS[node.op].shares_with) or shapes[root.name] != shapes[node.name]:
            raise SpecError(where, f"parameters differ: {node.op} {shapes[node.name]} vs "
                                   f"{root.op} {shapes[root.name]} of {root.name!r}")
        if not shapes[node.name]:
            raise SpecError(where, f"op {node.op!r} has no parameters to share")
        uses[node.name] = uses[root.name]
    return params, uses
