"""A step's `Reduction` finishes tree nodes while workers still compute: the same additions, the same bits."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from dptrain.core.reduce import Partial, Reduction, cover, root, split_runs
from dptrain.core.tail import mean_grad, n_blocks


def partials(n_chunks: int, workers: int, rng) -> list[list[Partial]]:
    """Per worker: the cover nodes of its run, with random float32 'gradient sums'."""
    out = []
    for a, b in split_runs(n_chunks, workers):
        out.append([Partial(node, rng.standard_normal(1000).astype(np.float32) * 10 ** rng.uniform(-3, 3),
                            float(rng.random()), 1, 0, int(node[0])) for node in cover(a, b, n_chunks)])
    return out


def tree_value(node, n_chunks: int, known: dict) -> Partial | None:
    """The fixed tree written out plainly: left + right into a new array, an absent half skipped."""
    if node in known:
        return known[node]
    lo, hi = node
    if lo >= n_chunks or hi - lo == 1:
        return None
    mid = (lo + hi) // 2
    left, right = tree_value((lo, mid), n_chunks, known), tree_value((mid, hi), n_chunks, known)
    if left is None or right is None:
        return left if right is None else right
    return Partial(node, left.grad + right.grad, left.loss + right.loss, left.count + right.count,
                   left.correct + right.correct, left.index_sum + right.index_sum)


def reference(n_chunks: int, per_worker: list[list[Partial]]) -> tuple[np.ndarray, np.ndarray, Partial]:
    """The mean gradient as separate numpy passes: root's children added, divided once, squared."""
    known = {p.node: p for ps in per_worker for p in ps}
    lo, hi = root(n_chunks)
    if (lo, hi) in known or hi - lo == 1:
        whole = known[(lo, hi)]
        g = whole.grad / np.float32(whole.count)
    else:
        left, right = tree_value((lo, (lo + hi) // 2), n_chunks, known), tree_value(((lo + hi) // 2, hi), n_chunks,
                                                                                    known)
        whole = Partial((lo, hi), None, left.loss + right.loss, left.count + right.count,
                        left.correct + right.correct, left.index_sum + right.index_sum)
        g = left.grad + right.grad
        g = g / np.float32(whole.count)
    sums = np.empty(n_blocks(g.size))
    mean_grad(g, None, 1, np.empty_like(g), sums, use_kernel=False)
    return g, sums, whole


@pytest.mark.parametrize("n_chunks, workers", [(1, 1), (4, 1), (4, 2), (4, 4), (7, 3), (7, 7), (13, 5), (16, 8),
                                               (9, 8)])
def test_any_arrival_order_gives_the_tree_sum_bitwise(n_chunks, workers):
    rng = np.random.default_rng(n_chunks * 10 + workers)
    per_worker = partials(n_chunks, workers, rng)
    snapshot = [[p.grad.copy() for p in ps] for ps in per_worker]
    want_g, want_sums, want = reference(n_chunks, per_worker)
    orders = list(itertools.permutations(range(workers)))
    for order in [orders[i] for i in rng.choice(len(orders), min(len(orders), 12), replace=False)]:
        red = Reduction(n_chunks)
        for w in order:
            red.add(per_worker[w])
        lo, hi = root(n_chunks)
        if workers > 1:
            assert (lo, hi) not in red.known  # the root's addition is finish's (fused with the divide)
        if n_chunks & (n_chunks - 1) == 0 and workers > 1:  # a perfect tree: all below the root done early
            assert (lo, (lo + hi) // 2) in red.known and ((lo + hi) // 2, hi) in red.known
        grad, sums, total = red.finish()
        assert grad.tobytes() == want_g.tobytes() and sums.tobytes() == want_sums.tobytes()
        assert (total.loss, total.count, total.index_sum, total.grad) == (want.loss, want.count, want.index_sum,
                                                                          None)
    for ps, before in zip(per_worker, snapshot):  # the workers' arrays are never written
        assert all(p.grad.tobytes() == b.tobytes() for p, b in zip(ps, before))


def test_metadata_only_parts_reduce_to_totals():
    """Validation: no gradients, the same tree for loss and counts."""
    parts = [[Partial(node, None, 0.1 * node[0], 2, 1, node[0]) for node in cover(a, b, 7)]
             for a, b in split_runs(7, 3)]
    red = Reduction(7)
    for ps in reversed(parts):
        red.add(ps)
    grad, sums, total = red.finish()
    assert grad is None and sums is None and (total.count, total.correct, total.index_sum) == (12, 6, 20)  # 6 nodes
