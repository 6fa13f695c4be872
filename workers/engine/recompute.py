"""Activation recomputation: trade compute for memory, with the same bits.

Backpropagation keeps every node's forward values so that backward never evaluates a
forward function again (docs/backprop.md, 'Memory and runtime'). With `recompute` in the
model spec the nodes form segments (every k nodes in topological order, or named
[first, last] ranges): forward keeps only the values that leave a segment and frees the
rest; backward, on reaching a segment, runs its forward again from the kept values and
then its backward. Each op is a deterministic function of its inputs (dropout's mask of
(seed, step, row, node); batch norm's statistics of the same chunk), so the recomputed
values, hence the gradients, are bitwise those of a run without recomputation.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .errors import SpecError
from .spec import NodeSpec

Run = Callable[[NodeSpec, dict[str, np.ndarray]], np.ndarray]


def segments_of(order: list[NodeSpec], recompute: Any, output: str) -> list[list[NodeSpec]]:
    """The segments, in topological order; the output node never sits inside one."""
    names = [n.name for n in order]
    if isinstance(recompute, int):
        segs = [order[i:i + recompute] for i in range(0, len(order), recompute)]
    else:
        segs = []
        for i, (first, last) in enumerate(recompute):
            a, b = names.index(first), names.index(last)
            if a > b:
                raise SpecError(f"model.recompute[{i}]", f"{first!r} comes after {last!r} in the graph's order")
            segs.append(order[a:b + 1])
        taken = [n.name for s in segs for n in s]
        if len(taken) != len(set(taken)):
            raise SpecError("model.recompute", "segments overlap")
    return [s for s in segs if len(s) > 1 or s[0].name != output]


class Recompute:
    """Frees each segment's inner values after its forward; recomputes them before its backward."""

    def __init__(self, order: list[NodeSpec], recompute: Any, output: str, ops: dict[str, Any]) -> None:
        self.ops = ops
        self.segments = segments_of(order, recompute, output)
        self.seg_of = {n.name: i for i, s in enumerate(self.segments) for n in s}
        used_by: dict[str, set[str]] = {}
        for n in order:
            for i in n.inputs:
                used_by.setdefault(i, set()).add(n.name)
        self.leaving = []  # per segment: the nodes whose values are read outside it
        for s in self.segments:
            inside = {n.name for n in s}
            self.leaving.append({n.name for n in s if n.name == output or used_by.get(n.name, set()) - inside})
        self.live: set[int] = set()

    def after_forward(self, node: NodeSpec, values: dict[str, np.ndarray]) -> None:
        i = self.seg_of.get(node.name)
        if i is None or node is not self.segments[i][-1]:
            return
        self._free(i, values, keep=self.leaving[i])

    def before_backward(self, node: NodeSpec, values: dict[str, np.ndarray], run: Run) -> None:
        i = self.seg_of.get(node.name)
        if i is None or i in self.live:
            return
        for n in self.segments[i]:  # inputs from outside the segment were kept
            values[n.name] = run(n, values)
        self.live.add(i)

    def after_backward(self, node: NodeSpec, values: dict[str, np.ndarray]) -> None:
        i = self.seg_of.get(node.name)
        if i is not None and node is self.segments[i][0]:
            self.live.discard(i)
            self._free(i, values, keep=self.leaving[i])  # as after forward: backward may run again

    def _free(self, i: int, values: dict[str, np.ndarray], keep: set[str]) -> None:
        for n in self.segments[i]:
            if n.name in keep:
                values[n.name] = values[n.name].copy()  # its op's buffer is about to go
            else:
                values.pop(n.name, None)
        for n in self.segments[i]:
            self.ops[n.name].release()
