"""Op attribute kinds: what each kind of attribute may hold, checked once when a spec is read.

An op declares its attributes' kinds (`Op.attr_kinds`, e.g. ``{"kernel": "pair", "p":
"prob"}``); anything undeclared is a finite number within the op's bound. So nothing a
spec accepts can only fail at run time, and every op reads validated values.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from .errors import show

MAX_COUNT = 1 << 20
"""Largest integer attribute (units, channels, sizes, paddings) the spec accepts; the
graph's width and activation limits then bound what a model really builds."""


def _int(value: Any, lo: int, hi: int = MAX_COUNT) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer, got {show(value)}"
    if not lo <= value <= hi:
        return f"must be in [{lo}, {hi}], got {show(value)}"
    return None


def _pair(lo: int, most: int = 2) -> Callable[[Any], str | None]:
    """One integer for every spatial axis, or a list of one per axis (height, width), at most `most`."""
    def check(value: Any) -> str | None:
        items = value if isinstance(value, list) else [value]
        if not 1 <= len(items) <= most:
            many = "a list of one integer" if most == 1 else f"a list of 1 to {most} integers"
            return f"must be an integer or {many}, got {show(value)}"
        return next((p for p in (_int(v, lo) for v in items) if p), None)
    return check


def _ints(lo: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, list) or not 1 <= len(value) <= 4:
            return f"must be a list of 1 to 4 integers, got {show(value)}"
        return next((p for p in (_int(v, lo) for v in value) if p), None)
    return check


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, got {show(value)}"


def _prob(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        return f"must be a number in [0, 1), got {show(value)}"
    return None


def _positive(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return f"must be a positive number, got {show(value)}"
    return None


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(map(repr, choices))}, got {show(value)}"
    return check


KINDS: dict[str, Callable[[Any], str | None]] = {
    "count": lambda v: _int(v, 1),  # units, channels, heads, vocabulary size
    "index": lambda v: _int(v, 0),  # slice bounds
    "pair": _pair(1),  # 2-D kernel, stride, dilation: an integer or [height, width]
    "pair0": _pair(0),  # 2-D padding
    "single": _pair(1, most=1),  # 1-D kernel, stride, dilation: an integer (or a list of one)
    "single0": _pair(0, most=1),  # 1-D padding
    "shape": _ints(-1),  # reshape's target (one -1 allowed: the op checks)
    "axes": _ints(0),  # transpose's permutation of the example's axes
    "bool": _bool,
    "prob": _prob,  # dropout rate
    "positive": _positive,  # epsilon, momentum
    "approximate": _one_of("none", "tanh"),  # gelu's form, as PyTorch's `approximate`
}
LEGACY = {"units": "count", "start": "index", "stop": "index", "bias": "bool"}
"""Kinds of the attributes that predate `Op.attr_kinds`, by name."""


def problem(kind: str, value: Any) -> str | None:
    """What is wrong with `value` for an attribute of `kind`, or None."""
    return KINDS[kind](value)
