"""The coordinator's tail of a step on one core, and the alternatives measured against it.

    python bench/tail.py

The tail is what the coordinator does between the last worker's reply and the next
dispatch: the root addition of the reduction tree, the division by the batch size, the
gradient norm and the SGD update over the flat weights (MLP 784-512-512-10: 669,706
float32, 2.7 MB). Printed: each numpy pass alone; the tail as numpy passes (the trainer
before `service/core/tail.py`); the same passes fused into cache-sized blocks; `einsum` for
the norm; the trainer's tail today (the compiled kernels: add + divide + norm's squares
in one pass, then the update in one pass); and, if numba is importable (it is not a dependency:
`pip install numba`), one fused numba loop. Every variant is checked to produce the
same bits as the numpy passes.
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dptrain.core import tail  # noqa: E402
from dptrain.core.optim import BLOCK, OptimizerSpec, make_optimizer  # noqa: E402
from timing import median_ms as ms  # noqa: E402

P, COUNT, LR = 669_706, 1024, 0.01


def main() -> None:
    rng = np.random.default_rng(0)
    left, right, theta0 = (rng.standard_normal(P).astype(np.float32) for _ in range(3))
    g, g64, s = np.empty(P, np.float32), np.empty(P), np.empty(P, np.float32)
    opt = make_optimizer(OptimizerSpec("sgd", lr=LR), P)
    norm_sums, norm_scratch = np.empty(tail.n_blocks(P)), np.empty(BLOCK)

    def grad_norm(v: np.ndarray) -> float:  # the norm `opt.step` computes when given no block sums
        return tail.norm(tail.block_sums(v, norm_sums, norm_scratch))

    print(f"{P:,} float32 parameters, one core, medians of 300")
    for name, f in [("add (root of the tree)", lambda: np.add(left, right, out=g)),
                    ("divide by the count", lambda: np.divide(g, COUNT, out=g)),
                    ("float64 squares", lambda: np.square(g, out=g64, dtype=np.float64)),
                    ("their sum", lambda: np.add.reduce(g64)),
                    ("norm as the optimizer computes it (blocked)", lambda: grad_norm(g)),
                    ("norm by einsum, float64 accumulation", lambda: np.einsum("i,i->", g, g, dtype=np.float64))]:
        print(f"  {name}: {ms(f):.3f} ms")

    theta = theta0.copy()

    def passes() -> None:  # what Trainer.step did before the kernel: numpy passes throughout
        np.add(left, right, out=s)
        np.divide(s, COUNT, out=g)
        grad_norm(g)
        np.multiply(g, LR, out=s)
        np.subtract(theta, s, out=theta)

    sums = np.empty(tail.n_blocks(P))

    def trainer() -> None:  # what Trainer.step does today
        tail.mean_grad(left, right, COUNT, g, sums)
        opt.step(theta, g, LR, sums)

    blocks = [slice(a, min(a + BLOCK, P)) for a in range(0, P, BLOCK)]

    def fused() -> None:  # the same passes, block by block: (add, divide, square-sum), then update
        for i, b in enumerate(blocks):
            gb = g[b]
            np.add(left[b], right[b], out=gb)
            np.divide(gb, COUNT, out=gb)
            v = g64[:b.stop - b.start]
            np.square(gb, out=v, dtype=np.float64)
            sums[i] = np.add.reduce(v)
        for b in blocks:
            np.multiply(g[b], LR, out=s[b])
            np.subtract(theta[b], s[b], out=theta[b])

    reference = _after_one(passes, theta, theta0)
    print(f"  the tail as numpy passes (add, divide, norm, SGD update): {ms(passes):.3f} ms")
    assert _after_one(fused, theta, theta0) == reference
    print(f"  fused into blocks, numpy: {ms(fused):.3f} ms (same bits)")
    assert _after_one(trainer, theta, theta0) == reference
    impl = "compiled kernel" if tail.compiled() else "numpy passes: the kernel is not built"
    print(f"  the trainer's tail ({impl}): {ms(trainer):.3f} ms (same bits)")
    def mean() -> None:
        tail.mean_grad(left, right, COUNT, g, sums)

    print(f"    of which add + divide + norm's squares: {ms(mean):.3f} ms")
    try:
        import numba  # noqa: F401
    except ImportError:
        print("  numba: not installed (pip install numba to compare compiled loops)")
        return
    compiled = _numba_tail(left, right, g, theta, sums)
    assert _after_one(compiled, theta, theta0) == reference
    print(f"  fused, numba {numba.__version__} (16 accumulators for the norm): {ms(compiled):.3f} ms (same bits)")


def _after_one(f, theta: np.ndarray, theta0: np.ndarray) -> bytes:
    np.copyto(theta, theta0)
    f()
    return theta.tobytes()


def _numba_tail(left, right, g, theta, sums):
    import numba as nb

    @nb.njit(nogil=True, boundscheck=False)
    def tail(left, right, count, lr, g, theta, block, sums):  # pragma: no cover - compiled
        c, lr32, n = np.float32(count), np.float32(lr), g.size
        acc = np.zeros(16)
        for k in range((n + block - 1) // block):
            lo, hi = k * block, min(k * block + block, n)
            acc[:] = 0.0
            for i in range(lo, hi):
                v = (left[i] + right[i]) / c
                g[i] = v
                acc[(i - lo) % 16] += np.float64(v) * np.float64(v)
                theta[i] = theta[i] - v * lr32
            sums[k] = acc.sum()

    return lambda: tail(left, right, COUNT, LR, g, theta, BLOCK, sums)


if __name__ == "__main__":
    main()
