"""The source registry (each source's parameters, loader and shape) and ``load_dataset``:
spec -> (train, validation), with size guards."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import files, images, sequences, synthetic
from .dataset import CLASSIFICATION, REGRESSION, Dataset, Layout, Splits, as_float_dtype, split
from .limits import MAX_EXAMPLES, MAX_FEATURES, MAX_FILE_BYTES, MAX_VALUES, DataLimits
from .spec import PARAM_SCHEMAS, DatasetSpec, Params, SpecError

__all__ = ["MAX_EXAMPLES", "MAX_FEATURES", "MAX_VALUES", "MAX_FILE_BYTES", "LOADERS", "SOURCES", "Source",
           "check_limits", "load_dataset"]

Loader = Callable[[Mapping[str, Any], np.dtype, Path | None, DataLimits], Dataset]


@dataclass(frozen=True)
class Source:
    """One data source: its parameters, how to build it, and its layout from the parameters
    alone (None for files: their layout is known once read, e.g. at upload)."""

    params: type[Params]
    load: Loader
    layout: Callable[[Mapping[str, Any]], Layout] | None = None


SOURCES: dict[str, Source] = {
    "digits": Source(PARAM_SCHEMAS["digits"], synthetic.digits,
                     lambda p: Layout(1797, (1, 8, 8) if p["image"] else (64,), CLASSIFICATION, 10)),
    "teacher": Source(PARAM_SCHEMAS["teacher"], synthetic.teacher,
                      lambda p: Layout(p["n"], (p["d"],), CLASSIFICATION, p["classes"])),
    "spirals": Source(PARAM_SCHEMAS["spirals"], synthetic.spirals,
                      lambda p: Layout(p["n"], (2,), CLASSIFICATION, p["classes"])),
    "blobs": Source(PARAM_SCHEMAS["blobs"], synthetic.blobs,
                    lambda p: Layout(p["n"], (p["d"],), CLASSIFICATION, p["classes"])),
    "regression": Source(PARAM_SCHEMAS["regression"], synthetic.regression,
                         lambda p: Layout(p["n"], (p["d"],), REGRESSION, p["outputs"])),
    "npz": Source(PARAM_SCHEMAS["npz"], files.npz),
    "csv": Source(PARAM_SCHEMAS["csv"], files.csv_file),
    "mnist": Source(PARAM_SCHEMAS["mnist"], images.mnist, images.mnist_layout),
    "shapes": Source(PARAM_SCHEMAS["shapes"], images.shapes, images.shapes_layout),
    "sequence": Source(PARAM_SCHEMAS["sequence"], sequences.sequence, sequences.sequence_layout),
    "text": Source(PARAM_SCHEMAS["text"], sequences.text),  # layout: from the text's record (text_layout)
}
assert SOURCES.keys() == PARAM_SCHEMAS.keys(), "every spec name needs a source"
LOADERS: dict[str, Loader] = {name: source.load for name, source in SOURCES.items()}
SIZES = {**synthetic.SIZES, **images.SIZES, **sequences.SIZES}
"""Values each generated source builds, from its params, and the formula (for errors)."""


def _limits(max_examples: int | None, max_features: int | None, max_values: int | None,
            max_file_bytes: int | None) -> DataLimits:
    """The given limits, the rest from this module's constants (read at call time)."""
    def pick(value: int | None, default: int) -> int:
        return default if value is None else value

    return DataLimits(pick(max_examples, MAX_EXAMPLES), pick(max_features, MAX_FEATURES),
                      pick(max_values, MAX_VALUES), pick(max_file_bytes, MAX_FILE_BYTES))


def check_limits(
    spec: DatasetSpec | Mapping[str, Any],
    *,
    max_examples: int | None = None,
    max_features: int | None = None,
    max_values: int | None = None,
) -> None:
    """Reject a synthetic source too big to build, from its params alone (nothing is generated).

    Files are checked as they are read (see ``files``); the service also checks an uploaded
    file's recorded size. Limits default to this module's constants.
    """
    if not isinstance(spec, DatasetSpec):
        spec = DatasetSpec.from_dict(spec)
    _check_requested(spec, _limits(max_examples, max_features, max_values, None))


def _check_requested(spec: DatasetSpec, limits: DataLimits) -> None:
    params = spec.params
    for key, limit, what in (("n", limits.max_examples, "max_examples"), ("d", limits.max_features, "max_features")):
        if key in params and params[key] > limit:
            raise SpecError(f"params.{key}", f"must be <= {limit} ({what}), got {params[key]}")
    layout = SOURCES[spec.name].layout
    shape = layout(params).x_shape if layout is not None else ()
    if math.prod(shape) > limits.max_features:  # an image's or a sequence's values per example
        raise SpecError("params", f"{spec.name} examples of shape {list(shape)} have {math.prod(shape)} values, "
                                  f"over the limit of {limits.max_features} (max_features)")
    if spec.name in SIZES:
        size, formula = SIZES[spec.name]
        values = size(params)
        if values > limits.max_values:
            shown = ", ".join(f"{k}={v}" for k, v in params.items() if k != "seed")
            raise SpecError("params", f"{spec.name} with {shown} builds {values} values ({formula}), over "
                                      f"the limit of {limits.max_values} (max_values)")


def _check_loaded(spec: DatasetSpec, ds: Dataset, limits: DataLimits) -> None:
    field = "params.path" if "path" in spec.params else "name"
    source = spec.params.get("path", spec.name)
    if ds.n > limits.max_examples:
        raise SpecError(field, f"{source}: {ds.n} examples exceeds max_examples={limits.max_examples}")
    if ds.n_features > limits.max_features:
        raise SpecError(field, f"{source}: {ds.n_features} features exceeds max_features={limits.max_features}")


def load_dataset(
    spec: DatasetSpec | Mapping[str, Any],
    dtype: Any = np.float32,
    data_dir: str | os.PathLike[str] | None = None,
    **limits: int | None,
) -> tuple[Dataset, Dataset | None]:
    """The training and validation parts of :func:`load_splits` (validation None when
    val_fraction is 0); keyword limits as there."""
    train, val, _ = load_splits(spec, dtype, data_dir, **limits)
    return train, val


def load_splits(
    spec: DatasetSpec | Mapping[str, Any],
    dtype: Any = np.float32,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    max_examples: int | None = None,
    max_features: int | None = None,
    max_values: int | None = None,
    max_file_bytes: int | None = None,
) -> Splits:
    """Build the dataset and its seeded train/validation/test split (a part is None when its
    fraction is 0).

    Deterministic: the same spec yields bitwise-identical arrays on every call
    and every worker. Limits default to the module-level ``MAX_EXAMPLES``,
    ``MAX_FEATURES``, ``MAX_VALUES`` and ``MAX_FILE_BYTES`` (read at call time); a
    synthetic source is checked before it is built, a file while it is read. Raises
    ``SpecError`` for bad specs, unreadable files and oversized data; ``ValueError``
    for an unsupported dtype.
    """
    if not isinstance(spec, DatasetSpec):
        spec = DatasetSpec.from_dict(spec)
    dt = as_float_dtype(dtype)
    limits = _limits(max_examples, max_features, max_values, max_file_bytes)
    _check_requested(spec, limits)
    ds = SOURCES[spec.name].load(spec.params, dt, Path(data_dir) if data_dir is not None else None, limits)
    _check_loaded(spec, ds, limits)
    try:
        return split(ds, spec.val_fraction, spec.seed, spec.test_fraction)
    except ValueError as exc:
        raise SpecError("val_fraction", str(exc)) from None
