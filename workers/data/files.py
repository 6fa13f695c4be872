"""File sources (.npz and .csv) and the array checks they share.

Files come from users, so every problem is reported as a ``SpecError`` on
``params.path`` (or ``params.label``) naming the file plus the array key or the
line and column at fault. Nothing here ever unpickles.
"""

from __future__ import annotations

import csv
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import CLASSIFICATION, REGRESSION, Dataset
from .spec import MAX_CLASSES, SpecError

__all__ = ["npz", "csv_file", "resolve_path", "from_arrays"]

_INT_TEXT = re.compile(r"\s*[+-]?\d+\s*")


class _Bad(ValueError):
    """Internal: a content problem; the caller prefixes the file name."""


def resolve_path(raw: str, data_dir: Path | None) -> Path:
    """Relative paths are taken from ``data_dir`` when given, else the working directory."""
    path = Path(raw).expanduser()
    if not path.is_absolute() and data_dir is not None:
        path = Path(data_dir) / path
    if not path.is_file():
        raise SpecError("params.path", f"file not found: {path}")
    return path


def _first_bad_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))[0])


def _check_finite(a: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        raise _Bad(f"{what} has a non-finite value (NaN/inf, or too large for the dtype) in row {_first_bad_row(bad)}")


def _labels(y: np.ndarray, what: str) -> tuple[np.ndarray, int]:
    """Validate class labels (integral, in [0, MAX_CLASSES)) and return them as int64 with n_classes."""
    if y.ndim != 1:
        raise _Bad(f"{what} holds class labels and must be 1-D, got shape {y.shape}")
    if y.dtype.kind == "f":
        _check_finite(y, what)
        if (y != np.floor(y)).any():
            raise _Bad(f"{what} has a non-integer class label in row {_first_bad_row(y != np.floor(y))}")
    if (y < 0).any():
        raise _Bad(f"{what} has a negative class label in row {_first_bad_row(y < 0)}; labels must be >= 0")
    top = int(y.max())
    if top >= MAX_CLASSES:
        raise _Bad(f"{what} has class label {top}; labels must be < {MAX_CLASSES}")
    return y.astype(np.int64), top + 1


def from_arrays(X: np.ndarray, y: np.ndarray, dtype: np.dtype, name: str, task: str | None = None) -> Dataset:
    """Check user arrays and convert them to the engine layout.

    The task follows ``y``'s dtype unless forced: integer (or bool) labels mean
    classification with ``n_classes = max + 1``; floats mean regression, with
    1-D targets promoted to ``(n, 1)``. Raises ValueError naming ``X`` or ``y``.
    """
    if X.dtype.kind not in "fiub":
        raise _Bad(f"array 'X' must be numeric, got dtype {X.dtype}")
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise _Bad(f"array 'X' must be 2-D (examples, features) and non-empty, got shape {X.shape}")
    if y.dtype.kind not in "fiub":
        raise _Bad(f"array 'y' must be numeric, got dtype {y.dtype}")
    if y.ndim == 0 or len(y) != len(X):
        raise _Bad(f"arrays 'X' and 'y' disagree on the number of examples: {X.shape} vs {y.shape}")
    with np.errstate(over="ignore"):  # float32 overflow becomes inf, reported just below
        Xc = np.ascontiguousarray(X, dtype=dtype)
    _check_finite(Xc, "array 'X'")
    task = task or (REGRESSION if y.dtype.kind == "f" else CLASSIFICATION)
    if task == CLASSIFICATION:
        labels, n_classes = _labels(y, "array 'y'")
        return Dataset(Xc, labels, CLASSIFICATION, n_classes, name)
    if y.ndim > 2:
        raise _Bad(f"array 'y' holds regression targets and must be 1-D or 2-D, got shape {y.shape}")
    with np.errstate(over="ignore"):
        Y = np.ascontiguousarray(y.reshape(len(y), -1), dtype=dtype)
    _check_finite(Y, "array 'y'")
    return Dataset(Xc, Y, REGRESSION, None, name)


# --------------------------------------------------------------------------- npz


def _npz_array(archive: Any, key: str) -> np.ndarray:
    if key not in archive.files:
        raise _Bad(f"missing array '{key}'; found: {', '.join(archive.files) or '(none)'}")
    try:
        return archive[key]
    except ValueError as exc:  # allow_pickle=False refuses object arrays
        raise _Bad(f"array '{key}' is an object array, which is rejected (loading it would unpickle): {exc}") from None


def npz(params: Mapping[str, Any], dtype: np.dtype, data_dir: Path | None = None) -> Dataset:
    """``np.savez`` archive with arrays ``X`` and ``y``; pickles are never loaded."""
    path = resolve_path(params["path"], data_dir)
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise _Bad("expected an .npz archive with arrays 'X' and 'y', got a single .npy array")
        with archive:
            return from_arrays(_npz_array(archive, "X"), _npz_array(archive, "y"), dtype, "npz")
    except _Bad as exc:
        raise SpecError("params.path", f"{path}: {exc}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise SpecError("params.path", f"{path}: not a readable .npz file ({exc})") from None


# --------------------------------------------------------------------------- csv


def _read_rows(path: Path, delimiter: str) -> tuple[list[list[str]], list[int]]:
    """Non-blank rows and their 1-based line numbers (for error messages)."""
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            for row in reader:
                if any(cell.strip() for cell in row):
                    rows.append([cell.strip() for cell in row])
                    lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise _Bad(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise _Bad(f"line {reader.line_num}: malformed CSV ({exc})") from None
    return rows, lines


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _column(i: int, names: Sequence[str] | None) -> str:
    return f"column {i} ({names[i]!r})" if names else f"column {i}"


def _label_index(label: int | str | None, names: Sequence[str] | None, ncol: int) -> int:
    if label is None:
        return ncol - 1
    if isinstance(label, str):
        if names is None:
            raise SpecError("params.label",
                            f"{label!r} is a column name but the file has no header; use a column index")
        if label not in names:
            raise SpecError("params.label", f"no column named {label!r}; columns: {', '.join(names)}")
        return list(names).index(label)
    if not -ncol <= label < ncol:
        raise SpecError("params.label", f"column index {label} is out of range for {ncol} columns")
    return label % ncol


def _parse(cells: np.ndarray, lines: list[int], names: Sequence[str] | None) -> np.ndarray:
    """Text matrix -> float64, vectorised per column; a failing column is rescanned for the culprit."""
    out = np.empty(cells.shape, dtype=np.float64)
    bad: list[tuple[int, int]] = []
    for j in range(cells.shape[1]):
        try:
            out[:, j] = cells[:, j].astype(np.float64)
        except ValueError:
            bad.append((next((i for i, s in enumerate(cells[:, j]) if not _is_number(s)), 0), j))
    if bad:
        i, j = min(bad)
        raise _Bad(f"line {lines[i]}, {_column(j, names)}: non-numeric value {str(cells[i, j])[:40]!r}")
    nonfinite = np.argwhere(~np.isfinite(out))
    if len(nonfinite):
        i, j = nonfinite[0]
        raise _Bad(f"line {lines[i]}, {_column(j, names)}: non-finite value {str(cells[i, j])[:40]!r}")
    return out


def _csv_labels(values: np.ndarray, cells: np.ndarray, lines: list[int], column: str) -> np.ndarray:
    """Class labels must be integers in [0, MAX_CLASSES); report the first offending line."""
    ok = (values == np.floor(values)) & (values >= 0) & (values < MAX_CLASSES)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise _Bad(f"line {lines[i]}, {column}: class label must be an integer in [0, {MAX_CLASSES}), got {cells[i]!r}")
    return values.astype(np.int64)


def _load_csv(path: Path, params: Mapping[str, Any], dtype: np.dtype) -> Dataset:
    rows, lines = _read_rows(path, params["delimiter"])
    if not rows:
        raise _Bad("file is empty")
    header = params["header"]
    if header is None:  # auto: a header is a first row with any non-numeric cell
        header = not all(_is_number(cell) for cell in rows[0])
    names = rows[0] if header else None
    data, lines = (rows[1:], lines[1:]) if header else (rows, lines)
    ncol = len(rows[0])
    if not data:
        raise _Bad("no data rows")
    if ncol < 2:
        raise _Bad(f"need at least 2 columns (features and a label), found {ncol}")
    for row, line in zip(data, lines):
        if len(row) != ncol:
            raise _Bad(f"line {line}: expected {ncol} columns, found {len(row)}")
    label = _label_index(params["label"], names, ncol)
    cells = np.array(data, dtype=str)
    values = _parse(cells, lines, names)
    X = values[:, [j for j in range(ncol) if j != label]]
    task = params["task"]
    if task is None:
        task = CLASSIFICATION if all(_INT_TEXT.fullmatch(s) for s in cells[:, label]) else REGRESSION
    y = values[:, label]
    if task == CLASSIFICATION:
        y = _csv_labels(y, cells[:, label], lines, _column(label, names))
    return from_arrays(X, y, dtype, "csv", task)


def csv_file(params: Mapping[str, Any], dtype: np.dtype, data_dir: Path | None = None) -> Dataset:
    """Delimited numeric text: one example per line, one column holding the label/target."""
    path = resolve_path(params["path"], data_dir)
    try:
        return _load_csv(path, params, dtype)
    except _Bad as exc:
        raise SpecError("params.path", f"{path}: {exc}") from None
    except OSError as exc:
        raise SpecError("params.path", f"{path}: cannot read ({exc})") from None
