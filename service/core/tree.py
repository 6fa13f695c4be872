"""How a global minibatch is cut, shared out and summed, independently of the worker count.

The batch is cut into fixed-size micro-chunks (the last may be short). Chunk gradient sums
are combined along one fixed binary tree over chunk indices: the implicit perfect tree
over [0, P), P the next power of two >= C, where a node's value is the sum of the chunks
in [lo, min(hi, C)) and an empty half is simply absent. Floating-point addition is
commutative but not associative, so fixing the tree (not the worker count) fixes every
bit of the result.

A worker given a contiguous run of chunks [a, b) returns the values of the tree nodes that
exactly tile its run (`cover`); whoever holds a set of such nodes tiling [0, C) finishes
the same tree (`tree_sum`). 1 worker or 8, the additions performed are the same ones.
"""
from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")
Node = tuple[int, int]  # [lo, hi) in chunk indices, aligned: hi - lo a power of two


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


def tree_sum(node: Node, n_chunks: int, known: dict[Node, T], add: Callable[[T, T], T]) -> T | None:
    """The value of `node`: from `known` if present, else left + right (an absent half skipped).

    `add(left, right)` may reuse `left`'s storage; it is always called with the left
    subtree first, so the sequence of additions depends only on the tree.
    """
    if node in known:
        return known[node]
    lo, hi = node
    if lo >= n_chunks or hi - lo == 1:
        if hi - lo == 1 and lo < n_chunks:
            raise KeyError(f"chunk {lo} was not computed")
        return None
    mid = (lo + hi) // 2
    left = tree_sum((lo, mid), n_chunks, known, add)
    right = tree_sum((mid, hi), n_chunks, known, add)
    if left is None or right is None:
        return left if right is None else right
    return add(left, right)
