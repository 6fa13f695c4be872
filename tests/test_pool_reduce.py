"""The pool finishes tree nodes while workers still compute: the same additions, the same bits."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from dptrain.core.shard import Partial, add_into
from dptrain.core.tree import cover, root, split_runs, tree_sum
from dptrain.execution.pool import _Reducer


def partials(n_chunks: int, workers: int, rng) -> list[list[Partial]]:
    """Per worker: the cover nodes of its run, with random float32 'gradient sums'."""
    out = []
    for a, b in split_runs(n_chunks, workers):
        out.append([Partial(node, rng.standard_normal(1000).astype(np.float32) * 10 ** rng.uniform(-3, 3),
                            float(rng.random()), 1, 0, int(node[0])) for node in cover(a, b, n_chunks)])
    return out


def reference(n_chunks: int, per_worker: list[list[Partial]]) -> Partial:
    known = {p.node: Partial(p.node, p.grad.copy(), p.loss, p.count, p.correct, p.index_sum)
             for ps in per_worker for p in ps}
    return tree_sum(root(n_chunks), n_chunks, known, lambda a, b: add_into(a, b, np.empty_like(a.grad)))


@pytest.mark.parametrize("n_chunks, workers", [(4, 2), (4, 4), (7, 3), (7, 7), (13, 5), (16, 8), (9, 8)])
def test_any_arrival_order_gives_the_tree_sum_bitwise(n_chunks, workers):
    rng = np.random.default_rng(n_chunks * 10 + workers)
    per_worker = partials(n_chunks, workers, rng)
    want = reference(n_chunks, per_worker)
    orders = list(itertools.permutations(range(workers)))
    for order in [orders[i] for i in rng.choice(len(orders), min(len(orders), 12), replace=False)]:
        red = _Reducer(n_chunks, {})
        parts = []
        for w in order:
            parts += per_worker[w] + red.add(per_worker[w])
        known = {p.node: p for p in parts}
        got = tree_sum(root(n_chunks), n_chunks, known, lambda a, b: add_into(a, b, np.empty_like(a.grad)))
        assert got.grad.tobytes() == want.grad.tobytes()
        assert (got.loss, got.count, got.index_sum) == (want.loss, want.count, want.index_sum)
        lo, hi = root(n_chunks)
        assert (lo, hi) not in known  # the root's addition is the trainer's (fused with the divide)
        if n_chunks & (n_chunks - 1) == 0:  # a perfect tree: the pool finished all below the root
            assert (lo, (lo + hi) // 2) in known and ((lo + hi) // 2, hi) in known
