"""The in-memory ``Dataset`` container and the seeded train/validation/test split."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = ["Dataset", "Layout", "Splits", "CLASSIFICATION", "REGRESSION", "split", "train_val_split", "as_float_dtype"]

CLASSIFICATION = "classification"
REGRESSION = "regression"


def as_float_dtype(dtype: object) -> np.dtype:
    """Normalise a requested feature dtype; the engine only supports float32/float64."""
    error = ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    if dtype is None:  # np.dtype(None) would silently mean float64
        raise error
    try:
        dt = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError:
        raise error from None
    if dt.type not in (np.float32, np.float64):
        raise error
    return dt


@dataclass(frozen=True)
class Layout:
    """What a model must agree with in a dataset, known without its arrays (a synthetic
    source's from its parameters, an upload's from its record)."""

    n: int
    x_shape: tuple[int, ...]  # one example: (features,), (channels, height, width), (tokens,)
    task: str
    n_outputs: int  # classes, or the regression target's width
    x_int: bool = False  # X holds integer token ids
    y_shape: tuple[int, ...] = ()  # one example's labels: () one label, (tokens,) one per position
    x_vocab: int = 0  # token ids: their bound (the largest id + 1); 0 for floats, or unknown

    @property
    def n_features(self) -> int:
        return math.prod(self.x_shape)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Features and targets in the layout the numpy engine expects.

    ``X`` is ``(n, *example shape)`` and C-contiguous (row slices are cheap, matmuls hit
    BLAS fast paths): floats, or int64 token ids. Classification targets are int64 labels
    in ``[0, n_classes)``, one per example or one per position (``(n, tokens)``);
    regression targets are a float ``(n, k)`` matrix with ``X``'s dtype. The invariants
    are checked here so shards built elsewhere cannot drift.
    """

    X: np.ndarray
    y: np.ndarray
    task: str
    n_classes: int | None
    name: str

    def __post_init__(self) -> None:
        X, y = self.X, self.y
        if X.ndim < 2 or not X.flags.c_contiguous or X.dtype not in (np.float32, np.float64, np.int64):
            raise ValueError(f"X must be a C-contiguous float32/float64 (or int64 token id) array of 2 or more "
                             f"axes, got {X.dtype} {X.shape}")
        if len(y) != len(X):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
        if self.task == CLASSIFICATION:
            if y.ndim < 1 or y.dtype != np.int64 or not isinstance(self.n_classes, int) or self.n_classes < 1:
                raise ValueError("classification needs int64 labels and a positive n_classes")
        elif self.task == REGRESSION:
            if y.ndim != 2 or y.dtype.kind != "f" or self.n_classes is not None:
                raise ValueError("regression needs 2-D float targets and n_classes=None")
        else:
            raise ValueError(f"task must be {CLASSIFICATION!r} or {REGRESSION!r}, got {self.task!r}")

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        """Values per example (its features, or its shape's product)."""
        return int(self.X[0].size) if self.n else int(np.prod(self.X.shape[1:]))

    @property
    def layout(self) -> Layout:
        ints = self.X.dtype == np.int64
        return Layout(self.n, tuple(self.X.shape[1:]), self.task, self.n_outputs, ints,
                      tuple(self.y.shape[1:]) if self.task == CLASSIFICATION else (),
                      int(self.X.max()) + 1 if ints and self.X.size else 0)

    @property
    def n_outputs(self) -> int:
        """Width of the model's output layer: classes, or regression target columns."""
        return self.n_classes if self.n_classes is not None else int(self.y.shape[1])

    def take(self, indices: np.ndarray) -> Dataset:
        """Row subset as fresh contiguous arrays (used for splits and worker shards)."""
        idx = np.asarray(indices, dtype=np.intp)
        return Dataset(np.ascontiguousarray(self.X[idx]), np.ascontiguousarray(self.y[idx]),
                       self.task, self.n_classes, self.name)


def split_sizes(n: int, val_fraction: float) -> tuple[int, int]:
    """(n_train, n_val): round to nearest, but a non-zero fraction always yields >= 1 val example."""
    if val_fraction <= 0.0:
        return n, 0
    n_val = max(1, int(round(n * val_fraction)))
    return n - n_val, n_val


class Splits(NamedTuple):
    train: Dataset
    val: Dataset | None
    test: Dataset | None


def split(ds: Dataset, val_fraction: float, seed: int, test_fraction: float = 0.0) -> Splits:
    """Deterministic split chosen by ``default_rng(seed).permutation``: the first n_val
    indices validate, the next n_test test, the rest train (with no test split, exactly the
    train/validation split of earlier versions).

    Each part keeps the source's row order (indices are sorted), so the train
    set for a given seed does not depend on how the data loader later shuffles.
    Raises ValueError if the split would leave no training examples.
    """
    _, n_val = split_sizes(ds.n, val_fraction)
    _, n_test = split_sizes(ds.n, test_fraction)
    if n_val == 0 and n_test == 0:
        return Splits(ds, None, None)
    if n_val + n_test >= ds.n:
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} leave no training "
                         f"examples out of {ds.n}")
    perm = np.random.default_rng(seed).permutation(ds.n)
    val, test, train = np.split(perm, [n_val, n_val + n_test])
    return Splits(ds.take(np.sort(train)), ds.take(np.sort(val)) if n_val else None,
                  ds.take(np.sort(test)) if n_test else None)


def train_val_split(ds: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """The train and validation parts of :func:`split` without a test set."""
    train, val, _ = split(ds, val_fraction, seed)
    return train, val
