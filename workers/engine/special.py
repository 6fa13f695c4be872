"""scipy.special's `erf` and `expit`, imported on first use.

Importing scipy.special takes ~0.2 s, which every worker process would otherwise pay at
start, even for models that use neither function (most use neither).
"""
from __future__ import annotations

from functools import cache
from types import ModuleType

import numpy as np


@cache
def _special() -> ModuleType:
    import scipy.special

    return scipy.special


def erf(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return _special().erf(x, out=out)


def expit(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The logistic sigmoid 1 / (1 + e^-x), stable for any x."""
    return _special().expit(x, out=out)
