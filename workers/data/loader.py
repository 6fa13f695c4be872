"""``load_dataset``: spec -> (train, validation), with size guards."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import files, synthetic
from .dataset import Dataset, as_float_dtype, train_val_split
from .spec import PARAM_SCHEMAS, DatasetSpec, SpecError

__all__ = ["MAX_EXAMPLES", "MAX_FEATURES", "LOADERS", "load_dataset"]

MAX_EXAMPLES = 1_000_000
"""Default cap on examples; guards coordinator and workers against typos like n=10**9."""
MAX_FEATURES = 100_000
"""Default cap on features per example."""

Loader = Callable[[Mapping[str, Any], np.dtype, Path | None], Dataset]
LOADERS: dict[str, Loader] = {
    "digits": synthetic.digits,
    "teacher": synthetic.teacher,
    "spirals": synthetic.spirals,
    "blobs": synthetic.blobs,
    "regression": synthetic.regression,
    "npz": files.npz,
    "csv": files.csv_file,
}
assert LOADERS.keys() == PARAM_SCHEMAS.keys(), "every spec name needs a loader"


def _check_requested(params: Mapping[str, Any], max_examples: int, max_features: int) -> None:
    """Reject oversized synthetic requests before allocating anything."""
    for key, limit, what in (("n", max_examples, "max_examples"), ("d", max_features, "max_features")):
        if key in params and params[key] > limit:
            raise SpecError(f"params.{key}", f"must be <= {limit} ({what}), got {params[key]}")


def _check_loaded(spec: DatasetSpec, ds: Dataset, max_examples: int, max_features: int) -> None:
    field = "params.path" if "path" in spec.params else "name"
    source = spec.params.get("path", spec.name)
    if ds.n > max_examples:
        raise SpecError(field, f"{source}: {ds.n} examples exceeds max_examples={max_examples}")
    if ds.n_features > max_features:
        raise SpecError(field, f"{source}: {ds.n_features} features exceeds max_features={max_features}")


def load_dataset(
    spec: DatasetSpec | Mapping[str, Any],
    dtype: Any = np.float32,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    max_examples: int | None = None,
    max_features: int | None = None,
) -> tuple[Dataset, Dataset | None]:
    """Build the dataset and its seeded split; ``validation`` is None when val_fraction is 0.

    Deterministic: the same spec yields bitwise-identical arrays on every call
    and every worker. Limits default to the module-level ``MAX_EXAMPLES`` /
    ``MAX_FEATURES`` (read at call time). Raises ``SpecError`` for bad specs,
    unreadable files and oversized data; ``ValueError`` for an unsupported dtype.
    """
    if not isinstance(spec, DatasetSpec):
        spec = DatasetSpec.from_dict(spec)
    dt = as_float_dtype(dtype)
    max_ex = MAX_EXAMPLES if max_examples is None else max_examples
    max_feat = MAX_FEATURES if max_features is None else max_features
    _check_requested(spec.params, max_ex, max_feat)
    ds = LOADERS[spec.name](spec.params, dt, Path(data_dir) if data_dir is not None else None)
    _check_loaded(spec, ds, max_ex, max_feat)
    try:
        return train_val_split(ds, spec.val_fraction, spec.seed)
    except ValueError as exc:
        raise SpecError("val_fraction", str(exc)) from None
