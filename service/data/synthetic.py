"""Built-in and synthetic sources: no files, fully determined by their params.

Each generator draws from independent child streams of ``SeedSequence(seed)``
(e.g. one for the "true" function, one for the samples), so changing ``n``
keeps the same underlying problem and the first rows stay the same.

Their size follows from their params alone: ``SIZES`` counts the values each one
builds, so ``load_dataset`` and the service check it before generating anything
(the loaders take ``limits`` only to share the file loaders' signature).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import CLASSIFICATION, REGRESSION, Dataset
from .limits import DataLimits

__all__ = ["digits", "teacher", "spirals", "blobs", "regression", "SIZES"]

TEACHER_CHUNK = 2048
"""Rows per teacher chunk (fixed: chunking is part of the seed -> data mapping)."""
SPIRAL_TURNS = 1.5


def _streams(seed: int, count: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(count)]


def _as(X: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(X, dtype=dtype)


def digits(params: Mapping[str, Any], dtype: np.dtype, data_dir: Path | None = None,
           limits: DataLimits | None = None) -> Dataset:
    """scikit-learn's bundled 8x8 digits (offline), pixels scaled from [0, 16] to [0, 1];
    rows of 64 features, or 1x8x8 images with ``image`` (the same values, row-major)."""
    from sklearn.datasets import load_digits  # deferred: importing sklearn costs ~1 s

    X, y = load_digits(return_X_y=True)
    if params.get("image"):
        X = X.reshape(-1, 1, 8, 8)
    return Dataset(_as(X / 16.0, dtype), y.astype(np.int64), CLASSIFICATION, 10, "digits")


def _standard_normal_f32(n: int, d: int, seed_seq: np.random.SeedSequence) -> np.ndarray:
    """N(0, 1) float32 (n, d) filled chunk by chunk on a few threads.

    Each chunk has its own child seed, so the values depend only on the seed
    and the row index, never on thread scheduling or on ``n``. numpy releases
    the GIL while filling, so the threads really run in parallel.
    """
    X = np.empty((n, d), dtype=np.float32)
    starts = range(0, n, TEACHER_CHUNK)
    seqs = seed_seq.spawn(len(starts))

    def fill(i: int) -> None:
        rows = X[starts[i] : starts[i] + TEACHER_CHUNK]
        np.random.default_rng(seqs[i]).standard_normal(dtype=np.float32, out=rows)

    workers = min(len(starts), os.cpu_count() or 1, 8)
    if workers <= 1:
        for i in range(len(starts)):
            fill(i)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(fill, range(len(starts))))
    return X


def teacher(params: Mapping[str, Any], dtype: np.dtype, data_dir: Path | None = None,
            limits: DataLimits | None = None) -> Dataset:
    """Gaussian inputs labelled by a random tanh MLP: a learnable problem of any size.

    X is drawn as float32 (fast, and identical values for both output dtypes);
    teacher logits are computed in float64 so a different BLAS cannot flip an
    argmax on a near-tie and give two workers different labels.
    """
    n, d, k, h = params["n"], params["d"], params["classes"], params["hidden"]
    w_seq, x_seq = np.random.SeedSequence(params["seed"]).spawn(2)
    wrng = np.random.default_rng(w_seq)
    w1 = wrng.standard_normal((d, h)) / np.sqrt(d)
    w2 = wrng.standard_normal((h, k)) / np.sqrt(h)
    X = _standard_normal_f32(n, d, x_seq)
    y = np.empty(n, dtype=np.int64)
    for start in range(0, n, TEACHER_CHUNK):
        rows = slice(start, start + TEACHER_CHUNK)
        # Explicit cast: a mixed float32 @ float64 product skips BLAS and is ~20x slower.
        y[rows] = np.argmax(np.tanh(X[rows].astype(np.float64) @ w1) @ w2, axis=1)
    return Dataset(_as(X, dtype), y, CLASSIFICATION, k, "teacher")


def spirals(params: Mapping[str, Any], dtype: np.dtype, data_dir: Path | None = None,
            limits: DataLimits | None = None) -> Dataset:
    """``classes`` interleaved 2-D spiral arms (radius 0..1) plus Gaussian noise: non-linear toy task."""
    n, k, noise = params["n"], params["classes"], params["noise"]
    trng, nrng = _streams(params["seed"], 2)
    y = np.arange(n, dtype=np.int64) % k
    t = trng.uniform(0.0, 1.0, n)
    theta = 2.0 * np.pi * (SPIRAL_TURNS * t + y / k)
    X = np.stack([t * np.cos(theta), t * np.sin(theta)], axis=1) + noise * nrng.standard_normal((n, 2))
    return Dataset(_as(X, dtype), y, CLASSIFICATION, k, "spirals")


def blobs(params: Mapping[str, Any], dtype: np.dtype, data_dir: Path | None = None,
          limits: DataLimits | None = None) -> Dataset:
    """Balanced isotropic Gaussian clusters with centres uniform in [-5, 5]^d; std ``spread``."""
    n, d, k, spread = params["n"], params["d"], params["classes"], params["spread"]
    crng, xrng = _streams(params["seed"], 2)
    centers = crng.uniform(-5.0, 5.0, (k, d))
    y = np.arange(n, dtype=np.int64) % k
    X = centers[y] + spread * xrng.standard_normal((n, d))
    return Dataset(_as(X, dtype), y, CLASSIFICATION, k, "blobs")


def regression(params: Mapping[str, Any], dtype: np.dtype, data_dir: Path | None = None,
               limits: DataLimits | None = None) -> Dataset:
    """Linear targets ``y = X @ w + noise * eps`` with w ~ N(0, 1/d), so Var(signal) ~ 1."""
    n, d, k, noise = params["n"], params["d"], params["outputs"], params["noise"]
    wrng, xrng, erng = _streams(params["seed"], 3)
    w = wrng.standard_normal((d, k)) / np.sqrt(d)
    X = xrng.standard_normal((n, d), dtype=np.float32)
    Y = X @ w + noise * erng.standard_normal((n, k))
    return Dataset(_as(X, dtype), _as(Y, dtype), REGRESSION, None, "regression")


Size = Callable[[Mapping[str, Any]], int]
SIZES: dict[str, tuple[Size, str]] = {
    "digits": (lambda p: 1797 * 65, "1797 x 65"),
    "teacher": (lambda p: p["n"] * p["d"] + p["d"] * p["hidden"] + p["hidden"] * p["classes"],
                "n*d + d*hidden + hidden*classes"),
    "spirals": (lambda p: p["n"] * 3, "3*n"),
    "blobs": (lambda p: p["n"] * p["d"] + p["classes"] * p["d"], "n*d + classes*d"),
    "regression": (lambda p: p["n"] * p["d"] + p["d"] * p["outputs"] + 2 * p["n"] * p["outputs"],
                   "n*d + d*outputs + 2*n*outputs"),
}
"""Values each generator builds (inputs, targets and its own weights), and the formula, for errors."""
