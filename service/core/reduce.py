"""The fixed reduction tree: how a batch is cut, shared out and summed, whatever the worker count.

The batch is cut into fixed-size micro-chunks (the last may be short). Chunk sums are
combined along one fixed binary tree over chunk indices: the implicit perfect tree over
[0, P), P the next power of two >= C, where a node's value is the sum of the chunks in
[lo, min(hi, C)) and an empty half is simply absent. Floating-point addition is
commutative but not associative, so fixing the tree (not the worker count) fixes every
bit of the result:

    value(node) = value(left) + value(right)     (left subtree first; absent half skipped)
    g = value(root) / |B|                         (divided once, globally)

A worker given a contiguous run of chunks [a, b) returns the values of the tree nodes
that exactly tile its run (`cover`, computed by `run_sums`). The coordinator hands each
worker's nodes to one per-step `Reduction` as they arrive (`add`, which finishes every
parent below the root whose children are both in, while other workers still compute),
then `finish`es: the remaining additions, and the root's own addition fused with the
division and the norm's squares (`dptrain.core.tail`, a C kernel or numpy, same bits).
1 worker or 8, the additions performed are the same ones; nobody else computes parents.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
from dptrain.core.tail import mean_grad, n_blocks

Node = tuple[int, int]  # [lo, hi) in chunk indices, aligned: hi - lo a power of two


@dataclass
class Partial:
    """Sums over the chunks of one tree node. `count` is the number of sub-losses (the
    divisor: examples, or tokens for a sequence loss); `examples` and `index_sum` let the
    coordinator verify that exactly the planned examples were used (the ledger's per-step
    proof). `stats` are sums of per-chunk statistics that are not gradients (batch norm's
    chunk means and variances, for its running averages), reduced along the same tree."""

    node: Node
    grad: np.ndarray | None
    loss: float
    count: int
    correct: int
    index_sum: int
    examples: int = 0
    stats: np.ndarray | None = None


# --- the tree's shape ------------------------------------------------------------------------
def chunk_bounds(n: int, chunk: int) -> list[tuple[int, int]]:
    """[start, stop) of each micro-chunk of a batch of n examples."""
    if n < 0 or chunk <= 0:
        raise ValueError(f"need n >= 0 and chunk > 0, got n={n}, chunk={chunk}")
    return [(a, min(a + chunk, n)) for a in range(0, n, chunk)]


def split_runs(n_chunks: int, n_workers: int) -> list[tuple[int, int]]:
    """Contiguous, balanced runs [a, b) of chunks, one per worker (some may be empty)."""
    base, extra = divmod(n_chunks, n_workers)
    runs, a = [], 0
    for w in range(n_workers):
        b = a + base + (1 if w < extra else 0)
        runs.append((a, b))
        a = b
    return runs


def worker_runs(size: int, chunk: int, n_workers: int) -> list[tuple[int, int]]:
    """The non-empty runs of chunks of a batch of `size` examples shared by `n_workers`."""
    return [r for r in split_runs(len(chunk_bounds(size, chunk)), n_workers) if r[1] > r[0]]


def root(n_chunks: int) -> Node:
    p = 1
    while p < n_chunks:
        p *= 2
    return (0, p)


def cover(a: int, b: int, n_chunks: int) -> list[Node]:
    """The fewest tree nodes whose chunk ranges [lo, min(hi, C)) tile [a, b), left to right."""
    out: list[Node] = []

    def visit(lo: int, hi: int) -> None:
        clip = min(hi, n_chunks)
        if clip <= a or lo >= b or lo >= clip:
            return
        if a <= lo and clip <= b:
            out.append((lo, hi))
            return
        mid = (lo + hi) // 2
        visit(lo, mid)
        visit(mid, hi)

    if a < b:
        visit(*root(n_chunks))
    return out


# --- the additions ---------------------------------------------------------------------------
def _add(left: Partial, right: Partial, out: np.ndarray | None = None) -> Partial:
    """left + right, the one addition of the tree (into `out`, else into left's gradient)."""
    grad = None
    if left.grad is not None:
        grad = np.add(left.grad, right.grad, out=left.grad if out is None else out)
    stats = None if left.stats is None else left.stats + right.stats
    return Partial((left.node[0], right.node[1]), grad, left.loss + right.loss, left.count + right.count,
                   left.correct + right.correct, left.index_sum + right.index_sum, left.examples + right.examples,
                   stats)


def _tree_sum(node: Node, n_chunks: int, known: dict[Node, Partial], add) -> Partial | None:
    """The value of `node`: from `known` if present, else left + right (an absent half skipped).

    `add(left, right)` is always called with the left subtree first, so the sequence of
    additions depends only on the tree.
    """
    if node in known:
        return known[node]
    lo, hi = node
    if lo >= n_chunks or hi - lo == 1:
        if hi - lo == 1 and lo < n_chunks:
            raise KeyError(f"chunk {lo} was not computed")
        return None
    mid = (lo + hi) // 2
    left = _tree_sum((lo, mid), n_chunks, known, add)
    right = _tree_sum((mid, hi), n_chunks, known, add)
    if left is None or right is None:
        return left if right is None else right
    return add(left, right)


def run_sums(leaves: list[Partial], run: tuple[int, int], n_chunks: int) -> list[Partial]:
    """A worker's answer: the values of `cover(run)` from its chunks' sums (`leaves`).

    Each addition writes into its left operand, and a node's left half (which holds its
    first chunk) is never dropped, so a node's sum ends in its leftmost chunk's gradient
    buffer: a worker that computed chunk lo into a given array gets node (lo, hi)'s sum
    there, with no copy.
    """
    known = {p.node: p for p in leaves}
    return [replace(_tree_sum(node, n_chunks, known, _add), node=node) for node in cover(*run, n_chunks)]


class Buffers:
    """Arrays a job's reductions reuse step after step: one per tree node and gradient size
    (each finished node gets its own, so no worker's buffer is written), the mean gradient
    and its norm's block sums."""

    def __init__(self) -> None:
        self._nodes: dict[tuple, np.ndarray] = {}
        self._mean: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def node(self, node: Node, like: np.ndarray) -> np.ndarray:
        key = (node, like.size, like.dtype.str)
        out = self._nodes.get(key)
        if out is None:
            out = self._nodes[key] = np.empty_like(like)
        return out

    def mean(self, like: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = (like.size, like.dtype.str)
        if key not in self._mean:
            self._mean[key] = (np.empty_like(like), np.empty(n_blocks(like.size)))
        return self._mean[key]


class Reduced(NamedTuple):
    """A step's result: g = root / count and its norm's block sums (None when the parts carry
    no gradient, as in validation), and the root's sums as metadata (grad None)."""

    grad: np.ndarray | None
    norm_sums: np.ndarray | None
    total: Partial


class Reduction:
    """One step's reduction: `add` each worker's nodes as they arrive, then `finish` once.

    `add` finishes each parent below the root as soon as both its children are in (into a
    buffer of its own), so after the last worker only the additions on its path to the root
    remain (log2 K of them, instead of K - 1, for K workers). Which additions run early
    changes no bit: every node's value is still left + right of the same two values.
    """

    def __init__(self, n_chunks: int, buffers: Buffers | None = None) -> None:
        self.n_chunks = n_chunks
        self.top = root(n_chunks)
        self.known: dict[Node, Partial] = {}
        self.buffers = buffers or Buffers()

    def add(self, parts: list[Partial]) -> None:
        """One worker's nodes (a `cover` of its run); finishes the parents they complete."""
        size_top = self.top[1] - self.top[0]
        for p in parts:
            node = p.node
            self.known[node] = p
            while 2 * (node[1] - node[0]) < size_top:  # the parent is below the root
                size = node[1] - node[0]
                lo = node[0] - node[0] % (2 * size)
                left, right, parent = (lo, lo + size), (lo + size, lo + 2 * size), (lo, lo + 2 * size)
                if left not in self.known or right not in self.known or parent in self.known:
                    break
                self.known[parent] = replace(self._add(self.known[left], self.known[right]), node=parent)
                node = parent

    def _add(self, left: Partial, right: Partial) -> Partial:
        out = None if left.grad is None else self.buffers.node((left.node[0], right.node[1]), left.grad)
        return _add(left, right, out)

    def finish(self) -> Reduced:
        """The remaining additions below the root, then g = (left + right) / count fused with
        the norm's squares (or root / count when one node holds the whole batch)."""
        lo, hi = self.top
        if hi - lo > 1 and self.top not in self.known:
            mid = (lo + hi) // 2  # the right half is never empty: the root spans the least power of 2
            left, right = (_tree_sum(node, self.n_chunks, self.known, self._add) for node in ((lo, mid), (mid, hi)))
            whole = _add(replace(left, grad=None), replace(right, grad=None))
        else:
            left, right = _tree_sum(self.top, self.n_chunks, self.known, self._add), None
            whole = replace(left, grad=None)
        if left.grad is None:
            return Reduced(None, None, whole)
        grad, sums = self.buffers.mean(left.grad)
        mean_grad(left.grad, None if right is None else right.grad, whole.count, grad, sums)
        return Reduced(grad, sums, whole)
