"""Dataset specification: the validated, JSON-friendly description of a dataset.

Specs arrive from user configs and RPCs, so every field is checked up front and
errors name the offending field (``dataset.params.n: ...``) instead of failing
deep inside a Ray worker.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from dptrain.engine.errors import SpecError as EngineSpecError

__all__ = ["SpecError", "DatasetSpec", "PARAM_SCHEMAS", "MAX_CLASSES", "MAX_HIDDEN", "MAX_NAME_CHARS"]

MAX_CLASSES = 100_000
"""Upper bound on class counts, so a stray huge label cannot size a giant output layer."""
MAX_HIDDEN = 4096
"""Upper bound on the teacher's hidden width (its weights are d x hidden)."""
MAX_NAME_CHARS = 256
"""Upper bound on a CSV column name (and so on a label given by name)."""
MAX_SCALE = 1e6
"""Upper bound on noise and spread: larger ones would only swamp the data (or overflow float32)."""


class SpecError(EngineSpecError):
    """Invalid dataset configuration: the project's SpecError with the field under ``dataset.``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"dataset.{field}" if field else "dataset", message)
        self.local_field = field

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Pickle by (field, message) so the error survives Ray's process hops."""
        return (type(self), (self.local_field, self.message))


class _Invalid(ValueError):
    """Internal: a validator's complaint, re-raised as SpecError with the field attached."""


Validator = Callable[[Any], Any]
_REQUIRED = object()


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _show(v: Any) -> str:
    """Short rendering of a bad value for error messages (numpy scalars shown plainly)."""
    if _is_int(v) or isinstance(v, (float, np.floating)):
        return str(v)
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _int_range(lo: int, hi: int | None = None, what: str = "") -> Validator:
    desc = what or (f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]")

    def check(v: Any) -> int:
        if not _is_int(v) or v < lo or (hi is not None and v > hi):
            raise _Invalid(f"must be {desc}, got {_show(v)}")
        return int(v)

    return check


_positive_int = _int_range(1, what="a positive integer")
_seed = _int_range(0, what="a non-negative integer")
_classes = _int_range(2, MAX_CLASSES)


def _scale(v: Any) -> float:
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
    if not ok or not math.isfinite(v) or v < 0:
        raise _Invalid(f"must be a finite number >= 0, got {_show(v)}")
    if v > MAX_SCALE:
        raise _Invalid(f"must be at most {MAX_SCALE:g}, got {_show(v)}")
    return float(v)


def _path(v: Any) -> str:
    if isinstance(v, os.PathLike):
        v = os.fspath(v)
    if not isinstance(v, str) or not v:
        raise _Invalid(f"must be a non-empty path string, got {_show(v)}")
    return v


def _label(v: Any) -> int | str | None:
    if v is None:
        return None
    if _is_int(v):
        return int(v)
    if isinstance(v, str) and 0 < len(v) <= MAX_NAME_CHARS:
        return v
    raise _Invalid(f"must be a column name or integer index (names: 1 to {MAX_NAME_CHARS} characters), "
                   f"got {_show(v)}")


def _header(v: Any) -> bool | None:
    if v is None or v == "auto":
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    raise _Invalid(f"must be true, false or 'auto', got {_show(v)}")


def _task(v: Any) -> str | None:
    if v is None or v == "auto":
        return None
    if v in ("classification", "regression"):
        return v
    raise _Invalid(f"must be one of auto, classification, regression; got {_show(v)}")


def _delimiter(v: Any) -> str:
    if isinstance(v, str) and len(v) == 1 and v not in "\r\n\"":
        return v
    raise _Invalid(f"must be a single character, got {_show(v)}")


# name -> {param -> (validator, default)}. A default of None for ``seed`` means
# "use DatasetSpec.seed", so a single seed in a config controls everything.
PARAM_SCHEMAS: dict[str, dict[str, tuple[Validator, Any]]] = {
    "digits": {},
    "teacher": {
        "n": (_positive_int, 8192),
        "d": (_positive_int, 784),
        "classes": (_classes, 10),
        "hidden": (_int_range(1, MAX_HIDDEN), 64),
        "seed": (_seed, None),
    },
    "spirals": {
        "n": (_positive_int, 3000),
        "classes": (_classes, 3),
        "noise": (_scale, 0.05),
        "seed": (_seed, None),
    },
    "blobs": {
        "n": (_positive_int, 3000),
        "d": (_positive_int, 2),
        "classes": (_classes, 3),
        "spread": (_scale, 1.0),
        "seed": (_seed, None),
    },
    "regression": {
        "n": (_positive_int, 4096),
        "d": (_positive_int, 16),
        "outputs": (_int_range(1, MAX_CLASSES), 1),
        "noise": (_scale, 0.1),
        "seed": (_seed, None),
    },
    "npz": {"path": (_path, _REQUIRED)},
    "csv": {
        "path": (_path, _REQUIRED),
        "label": (_label, None),
        "header": (_header, None),
        "task": (_task, None),
        "delimiter": (_delimiter, ","),
    },
}

_FIELDS = ("name", "params", "val_fraction", "seed")


def _resolve_params(name: str, params: Any, seed: int) -> dict[str, Any]:
    """Validate params against the source's schema and fill in defaults."""
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise SpecError("params", f"must be a mapping, got {_show(params)}")
    schema = PARAM_SCHEMAS[name]
    valid = ", ".join(sorted(schema)) or "(none)"
    for key in params:
        if key not in schema:
            raise SpecError(f"params.{key}", f"unknown parameter for '{name}'; valid: {valid}")
    resolved: dict[str, Any] = {}
    for key, (check, default) in schema.items():
        if key not in params or (params[key] is None and default is not _REQUIRED):
            if default is _REQUIRED:
                raise SpecError(f"params.{key}", f"is required for '{name}'")
            resolved[key] = seed if key == "seed" and default is None else default
            continue
        try:
            resolved[key] = check(params[key])
        except _Invalid as exc:
            raise SpecError(f"params.{key}", str(exc)) from None
    return resolved


@dataclass(frozen=True)
class DatasetSpec:
    """Which dataset to build and how to split it.

    ``seed`` drives the train/validation permutation and, unless ``params.seed``
    is given, the synthetic generators too. Construction validates and fills in
    defaults, so a spec that exists is a spec that can be loaded.
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    val_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or self.name not in PARAM_SCHEMAS:
            valid = ", ".join(sorted(PARAM_SCHEMAS))
            raise SpecError("name", f"unknown dataset {_show(self.name)}; valid: {valid}")
        try:
            seed = _seed(self.seed)
        except _Invalid as exc:
            raise SpecError("seed", str(exc)) from None
        frac = self.val_fraction
        is_num = isinstance(frac, (int, float, np.integer, np.floating)) and not isinstance(frac, (bool, np.bool_))
        if not is_num or not 0.0 <= frac < 1.0:
            raise SpecError("val_fraction", f"must be a number in [0, 1), got {_show(frac)}")
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "val_fraction", float(frac))
        object.__setattr__(self, "params", _resolve_params(self.name, self.params, seed))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DatasetSpec:
        """Build from a config mapping, rejecting unknown or missing keys by name."""
        if not isinstance(d, Mapping):
            raise SpecError("", f"must be a mapping, got {_show(d)}")
        for key in d:
            if key not in _FIELDS:
                raise SpecError(str(key), f"unknown key; valid: {', '.join(_FIELDS)}")
        if "name" not in d:
            raise SpecError("name", f"is required; valid: {', '.join(sorted(PARAM_SCHEMAS))}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (with defaults filled in) for logs, checkpoints and RPCs."""
        return {"name": self.name, "params": dict(self.params), "val_fraction": self.val_fraction, "seed": self.seed}
