"""What one worker computes in one step: gradient sums over its run of micro-chunks.

The Ray actor and the in-process reference loop both call `ShardComputer`, so "N
workers" and "one process" run literally the same arithmetic. Each chunk is computed
with single-threaded BLAS (OpenBLAS gives different bits at different thread counts, so
a worker with c CPUs runs c chunks side by side instead of one chunk on c threads).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np
from threadpoolctl import threadpool_limits

from workers.engine import Model
from workers.tree import Node, chunk_bounds, cover, tree_sum


@dataclass(frozen=True)
class Plan:
    """A worker's share of one step: chunks [run[0], run[1]) of the batch at `start`.

    `epoch` >= 0 reads the training set in that epoch's permutation; -1 reads the
    validation set in order (forward only).
    """

    epoch: int
    start: int
    size: int
    chunk: int
    run: tuple[int, int]


@dataclass
class Partial:
    """Sums over the chunks of one tree node. `index_sum` lets the coordinator verify
    that exactly the planned examples were used (the ledger's per-step proof)."""

    node: Node
    grad: np.ndarray | None
    loss: float
    count: int
    correct: int
    index_sum: int


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of epoch `epoch`: a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def add_into(left: Partial, right: Partial, out: np.ndarray | None = None) -> Partial:
    """left + right, the one addition of the reduction tree (left subtree first)."""
    grad = None
    if left.grad is not None:
        grad = np.add(left.grad, right.grad, out=left.grad if out is None else out)
    return Partial((left.node[0], right.node[1]), grad, left.loss + right.loss, left.count + right.count,
                   left.correct + right.correct, left.index_sum + right.index_sum)


class ShardComputer:
    """Holds a model and zero-copy views of the data; computes tree-node partial sums."""

    def __init__(self, model_spec: Mapping[str, Any], dtype: str, X: np.ndarray, y: np.ndarray,
                 X_val: np.ndarray | None, y_val: np.ndarray | None, seed: int, threads: int = 1) -> None:
        self.models = [Model(model_spec, dtype=dtype) for _ in range(max(1, threads))]
        self.X, self.y, self.X_val, self.y_val = X, y, X_val, y_val
        self.seed = seed
        self.pool = ThreadPoolExecutor(len(self.models)) if len(self.models) > 1 else None
        self._perm: tuple[int, np.ndarray] | None = None
        self._bufs: dict[tuple[int, int], np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, epoch_permutation(self.seed, epoch, len(self.X)))
        return self._perm[1]

    def compute(self, theta: np.ndarray, plan: Plan) -> list[Partial]:
        """Partial sums for the tree nodes that tile this worker's run of chunks."""
        bounds = chunk_bounds(plan.size, plan.chunk)
        a, b = plan.run
        train = plan.epoch >= 0
        if train:
            X, y = self.X, self.y
            order = self.permutation(plan.epoch)[plan.start:plan.start + plan.size]
        else:
            X, y = self.X_val, self.y_val
            order = np.arange(plan.start, plan.start + plan.size)
        jobs = [(i, order[bounds[i][0]:bounds[i][1]]) for i in range(a, b)]
        lanes = len(self.models)

        def lane(t: int) -> list[Partial]:  # lane t owns model t: chunks t, t + lanes, ...
            return [self._chunk(t, theta, X, y, *jobs[k], k, train) for k in range(t, len(jobs), lanes)]

        with threadpool_limits(limits=1, user_api="blas"):
            if self.pool is None:
                leaves = lane(0)
            else:
                leaves = [p for ps in self.pool.map(lane, range(lanes)) for p in ps]
        known = {p.node: p for p in leaves}
        n_chunks = len(bounds)
        return [replace(tree_sum(node, n_chunks, known, add_into), node=node) for node in cover(a, b, n_chunks)]

    def _chunk(self, lane: int, theta: np.ndarray, X: np.ndarray, y: np.ndarray, i: int,
               idx: np.ndarray, k: int, train: bool) -> Partial:
        """Gather chunk i's rows into a contiguous buffer, then one grad_sum (or evaluate)."""
        model = self.models[lane]
        Xc = np.take(X, idx, axis=0, out=model._ws.get("X", (len(idx), X.shape[1]), X.dtype))
        yc = np.take(y, idx, axis=0)
        node = (i, i + 1)
        if not train:
            e = model.evaluate(theta, Xc, yc)
            return Partial(node, None, e.loss, e.count, e.correct, int(idx.sum()))
        out = self._grad_buf(k, theta.size, model.dtype)
        s = model.grad_sum(theta, Xc, yc, out=out)
        return Partial(node, s.grad, s.loss, s.count, s.correct, int(idx.sum()))

    def _grad_buf(self, k: int, size: int, dtype: np.dtype) -> np.ndarray:
        """One reusable gradient buffer per chunk slot; valid until the next `compute`."""
        buf = self._bufs.get((k, size))
        if buf is None:
            buf = self._bufs[(k, size)] = np.empty(size, dtype=dtype)
        return buf
