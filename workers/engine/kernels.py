"""The engine's optional compiled kernels (workers/engine/_kernels.c) and when to use them.

Some passes of the engine are data movement (convolution's im2col and col2im, pooling's
gradient) or chains of cheap elementwise operations (GELU's polynomial, dropout's hash),
where numpy's per-pass cost, not arithmetic, sets the speed. The C kernels do each such
chain in one loop, with exactly the float32 operations of the numpy passes in the same
order: the bits are the same, so which path ran never shows in the weights
(tests/test_kernels.py checks each kernel against its numpy passes, bit for bit).
Transcendentals (tanh, exp) and reductions stay numpy's and BLAS's.

`pip install` builds the kernels when a C compiler is present (setup.py, as
service/core/_tail.c); without one, or for float64, the ops run their numpy passes.
DPTRAIN_NO_KERNELS=1 turns them off (to measure the numpy path).
"""
from __future__ import annotations

import os

import numpy as np

try:
    from dptrain.engine import _kernels as kernel
except ImportError:  # built without a C compiler: every op keeps its numpy passes
    kernel = None

if os.environ.get("DPTRAIN_NO_KERNELS") == "1":
    kernel = None

_F32 = np.dtype(np.float32)


def for_arrays(*arrays: np.ndarray | None):
    """The compiled module if it is built and every array given is C-contiguous float32, else None."""
    if kernel is None:
        return None
    for a in arrays:
        if a is not None and (a.dtype != _F32 or not a.flags.c_contiguous):
            return None
    return kernel
