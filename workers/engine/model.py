"""The executable model: a flat parameter buffer, forward, backward and the sums workers return.

The decomposition everything rests on: the loss is a sum of per-example sub-losses,
L(theta) = sum_i l_i(theta), so its gradient over a batch is the sum of the gradients
over any partition of the batch. `grad_sum` therefore returns *sums* (gradient, loss,
example count, correct predictions); the caller divides once by the global count.
See docs/backprop.md, 'Sums of sub-losses', and for `backward` 'The chain rule and the
g_out -> g_in recurrence'.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .errors import SpecError, show
from .graph import ParamInfo, build_graph
from .losses import LOSSES, Loss
from .op import Context
from .recompute import Recompute
from .spec import INPUT, Limits, ModelSpec, NodeSpec
from .workspace import Workspace


@dataclass
class GradSum:
    """Sums over a batch: sum_i grad l_i, sum_i l_i, the sub-loss count, correct predictions,
    and (batch norm in training) the call's statistics for the running averages."""

    grad: np.ndarray
    loss: float
    count: int
    correct: int
    stats: np.ndarray | None = None


@dataclass
class EvalSum:
    loss: float
    count: int
    correct: int


class Model:
    """A validated graph plus the layout of its parameters in one contiguous flat vector.

    Parameters are never stored here: every call takes the flat vector `theta`, so the
    same Model serves any version of the weights (the coordinator owns them).
    """

    def __init__(self, spec: ModelSpec | Mapping[str, Any], dtype: Any = np.float32,
                 limits: Limits = Limits()) -> None:
        self.spec = ModelSpec.from_dict(spec, limits)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.graph = build_graph(self.spec, limits)
        for op in self.graph.ops.values():
            op.dtype = self.dtype
        self.loss_fn: Loss | None = LOSSES[self.spec.loss](**self.spec.loss_options) if self.spec.loss else None
        self.params: list[ParamInfo] = self.graph.params
        self.num_params = self.graph.num_params
        self.input_shape = self.spec.input.shape
        self.output_shape = self.graph.shapes[self.graph.output]
        self.output_dim = self.output_shape[-1]
        self._contextual = [op for op in self.graph.ops.values() if op.uses_context]
        self.contextual = bool(self._contextual)  # a forward pass depends on where it sits in training
        self._stateful = [(name, op) for name, op in self.graph.ops.items() if op.buffer_names]
        self._recompute = (Recompute(self.graph.order, self.spec.recompute, self.graph.output, self.graph.ops)
                           if self.spec.recompute is not None else None)
        self._ws = Workspace()
        self._requires = self._requires_grad(input_grad=False)

    # --- parameters -----------------------------------------------------------------
    def init_params(self, seed: int) -> np.ndarray:
        """Deterministic initial weights from (spec, seed).

        Each node draws from its own stream seeded by (seed, crc32(node name)), so adding
        or reordering nodes does not change the others' initial weights.
        """
        theta = np.empty(self.num_params, dtype=self.dtype)
        for owner in dict.fromkeys(p.owner for p in self.params):
            infos = [p for p in self.params if p.owner == owner]
            rng = np.random.default_rng([seed, zlib.crc32(owner.encode())])
            shapes = {p.name.split(".", 1)[1]: p.shape for p in infos}
            values = self.graph.ops[owner].init_params(shapes, rng, infos[0].scheme)
            for p in infos:
                theta[p.offset:p.offset + p.size] = values[p.name.split(".", 1)[1]].ravel()
        return theta

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Named views (no copies) of a flat parameter or gradient vector."""
        return {p.name: flat[p.offset:p.offset + p.size].reshape(p.shape) for p in self.params}

    # --- forward / backward ---------------------------------------------------------------
    def check_input(self, X: np.ndarray, field: str = "X") -> np.ndarray:
        """X as the graph reads it: (batch, *input shape), floats of the model's dtype or
        int64 token ids below the vocabulary size."""
        X = np.asarray(X)
        if X.shape[1:] != self.input_shape:
            raise SpecError(field, f"must have shape (n, {', '.join(map(str, self.input_shape))}), got {X.shape}")
        if self.spec.input.dtype == "int":
            if X.dtype.kind not in "iu":
                raise SpecError(field, f"holds token ids and must be integers, got dtype {X.dtype}")
            vocab = self.spec.input.vocab
            if X.size and (X.min() < 0 or X.max() >= vocab):
                raise SpecError(field, f"token ids must be in [0, {vocab}), got {int(X.min())}..{int(X.max())}")
            return np.ascontiguousarray(X, dtype=np.int64)
        return np.ascontiguousarray(X, dtype=self.dtype)

    def forward(self, theta: np.ndarray, X: np.ndarray, ctx: Context | None = None) -> np.ndarray:
        """The output node's value; valid until the next call (copy it to keep it).

        `ctx` places the pass in training (step, the examples' dataset rows) for the ops
        whose value depends on it, e.g. dropout; without one (or with `ctx.train` False)
        they are off, as in evaluation and prediction.
        """
        X = self.check_input(X) if self.spec.input.dtype == "int" else np.ascontiguousarray(X, dtype=self.dtype)
        for op in self._contextual:
            op.ctx = ctx
        self._views = self.views(theta)
        values = self._values = {INPUT: X}
        self._stats: dict[str, np.ndarray] = {}
        for node in self.graph.order:
            values[node.name] = self._run(node, values)
            if self._recompute:
                self._recompute.after_forward(node, values)
        return values[self.graph.output]

    def _run(self, node: NodeSpec, values: dict[str, np.ndarray]) -> np.ndarray:
        """One node's forward; a batch norm's chunk statistics are noted as it runs."""
        op = self.graph.ops[node.name]
        p = {k: self._views[v] for k, v in self.graph.uses.get(node.name, {}).items()}
        out = op.forward([values[i] for i in node.inputs], p)
        if op.buffer_names and getattr(op, "batch_stats", None) is not None:
            self._stats[node.name] = op.batch_stats
        return out

    def backward(self, g_out: np.ndarray, grad: np.ndarray | None = None,
                 input_grad: bool = False, start: str | None = None) -> tuple[np.ndarray | None, np.ndarray]:
        """Run g_out -> g_in from the output (or node `start`) back to the input, after `forward`.

        Returns (g_X or None, flat parameter gradient). A node feeding several others
        receives the sum of their g_in's; a shared parameter the sum over its users.
        """
        if grad is None:
            grad = np.empty(self.num_params, dtype=self.dtype)
        requires = self._requires if not input_grad else self._requires_grad(True)
        gviews = self.views(grad)
        written: set[str] = set()
        pending: dict[str, list[np.ndarray]] = {start or self.graph.output: [g_out]}
        for node in reversed(self.graph.order):
            if self._recompute:
                self._recompute.before_backward(node, self._values, self._run)
            contribs = pending.pop(node.name, [])
            if contribs:
                self._backward_node(node, contribs, requires, gviews, written, pending)
            if self._recompute:
                self._recompute.after_backward(node, self._values)
        g_x = self._accumulate(INPUT, pending[INPUT]) if input_grad and INPUT in pending else None
        return (None if g_x is None else g_x.copy()), grad

    def _backward_node(self, node: NodeSpec, contribs: list[np.ndarray], requires: dict[str, bool],
                       gviews: dict[str, np.ndarray], written: set[str], pending: dict[str, list[np.ndarray]]) -> None:
        """One node's g_out -> (g_in, grads): the sum of its consumers' contributions in, the
        parameter gradients into the flat buffer (added for a shared parameter's later users)."""
        g = self._accumulate(node.name, contribs)
        uses = self.graph.uses.get(node.name, {})
        into = {k: gviews[v] for k, v in uses.items() if v not in written}
        g_ins, grads = self.graph.ops[node.name].backward(g, [requires[i] for i in node.inputs], into)
        for k, v in uses.items():
            if k not in into:  # a shared parameter already written by another user
                gviews[v] += grads[k]
        written.update(uses.values())
        for inp, g_in in zip(node.inputs, g_ins):
            if g_in is not None:
                pending.setdefault(inp, []).append(g_in)

    def _accumulate(self, name: str, contribs: list[np.ndarray]) -> np.ndarray:
        if len(contribs) == 1:
            return contribs[0]
        acc = self._ws.get("acc_" + name, contribs[0].shape, self.dtype)
        np.add(contribs[0], contribs[1], out=acc)
        for c in contribs[2:]:
            acc += c
        return acc

    def _requires_grad(self, input_grad: bool) -> dict[str, bool]:
        """A value needs a gradient iff a parameter (or the input, if asked) lies upstream."""
        req = {INPUT: input_grad}
        for node in self.graph.order:
            req[node.name] = bool(self.graph.uses.get(node.name)) or any(req[i] for i in node.inputs)
        return req

    # --- what workers call -----------------------------------------------------------------
    def grad_sum(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray,
                 out: np.ndarray | None = None, ctx: Context | None = None) -> GradSum:
        """Sums over the batch of the sub-losses' gradients, the sub-losses and the correct
        predictions; `count` sub-losses (examples, or tokens for a sequence loss)."""
        loss_fn = self._need_loss()
        z = self.forward(theta, X, ctx)
        loss, g_out, correct = loss_fn.loss_and_grad(z, y)
        _, grad = self.backward(g_out, grad=out)
        stats = None
        if self._stateful and ctx is not None and ctx.train:
            stats = np.concatenate([self._stats[name] for name, _ in self._stateful])
        return GradSum(grad=grad, loss=loss, count=loss_fn.count(z), correct=correct, stats=stats)

    # --- untrained parameters (batch norm's running statistics) -------------------------------
    def buffers_of(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Copies of the untrained parameters, taken before the optimizer step touches theta."""
        return {p.name: theta[p.offset:p.offset + p.size].copy() for p in self.params if not p.trainable}

    def update_buffers(self, theta: np.ndarray, before: dict[str, np.ndarray], stats: np.ndarray) -> None:
        """Set each stateful op's untrained parameters in `theta` from their values `before`
        the step and the step's summed statistics (laid out as `grad_sum` concatenates them)."""
        views, at = self.views(theta), 0
        for name, op in self._stateful:
            flat = {b: self.graph.uses[name][b] for b in op.buffer_names}
            mine = {b: views[f] for b, f in flat.items()}
            n = op.stats_size(mine)
            op.update(mine, {b: before[f].reshape(mine[b].shape) for b, f in flat.items()}, stats[at:at + n])
            at += n

    def evaluate(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray) -> EvalSum:
        z = self.forward(theta, X)
        loss, correct = self._need_loss().loss(z, y)
        return EvalSum(loss=loss, count=self._need_loss().count(z), correct=correct)

    def predict(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        return self.forward(theta, X).copy()

    def input_gradient(self, theta: np.ndarray, X: np.ndarray, node: str | None = None,
                       unit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Backpropagation to the data (docs/backprop.md): d node[unit] / dX for each example,
        and the node's outputs flattened per example. `unit` indexes that flattened output;
        None: each example's largest unit (a classifier's predicted class). Evaluation mode."""
        if self.spec.input.dtype == "int":
            raise ValueError("the inputs are token ids: they have no gradient")
        node = node or self.graph.output
        if node not in self.graph.ops:
            raise SpecError("node", f"unknown node {show(node)}; the nodes: {list(self.graph.ops)}")
        width = math.prod(self.graph.shapes[node])
        if unit is not None and not 0 <= unit < width:
            raise SpecError("unit", f"must be in [0, {width}) for node {node!r}, got {unit}")
        X = self.check_input(X, "inputs")
        recompute, self._recompute = self._recompute, None  # keep every value: `node` may be inside a segment
        try:
            self.forward(theta, X)
            out = self._values[node].reshape(len(X), width).copy()
            units = out.argmax(axis=1) if unit is None else np.full(len(X), unit)
            g = np.zeros_like(out)
            g[np.arange(len(X)), units] = 1
            g_x, _ = self.backward(g.reshape(self._values[node].shape), input_grad=True, start=node)
        finally:
            self._recompute = recompute
        return (np.zeros_like(X) if g_x is None else g_x), out

    def _need_loss(self) -> Loss:
        if self.loss_fn is None:
            raise ValueError("model.loss: this model has no loss; set one to train or evaluate")
        return self.loss_fn
