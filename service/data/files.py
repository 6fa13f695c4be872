"""File sources (.npz and .csv) and the array checks they share.

Files come from users, so every problem is reported as a ``SpecError`` on
``params.path`` (or ``params.label``) naming the file plus the array key or the
line and column at fault. Nothing here ever unpickles, and nothing is read past
the limits: an .npz is sized from its directory and headers before it is inflated
(see ``archive``), a CSV row by row as it streams in blocks.
"""

from __future__ import annotations

import csv
import itertools
import re
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from .archive import ArchiveError, read_npz
from .dataset import CLASSIFICATION, REGRESSION, Dataset
from .limits import DataLimits
from .spec import MAX_CLASSES, MAX_NAME_CHARS, SpecError

__all__ = ["npz", "csv_file", "resolve_path", "from_arrays"]

_INT_TEXT = re.compile(r"\s*[+-]?\d+\s*")
MAX_CELL_CHARS = 100
"""Longest CSV value (a float64 needs 24 characters): each bounds the text arrays a block parses into."""
MAX_LINE_CHARS = 1 << 22
"""Longest CSV line (100k features of 40 characters): bounds what one row may cost before it is checked."""
BLOCK_CELLS = 1 << 16
"""CSV values converted at a time: the text of a whole file is never held at once."""
MAX_EXAMPLE_AXES = 3
"""Axes of one example in an .npz: (features,), (tokens,) or (channels, height, width)."""


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


def _labels(y: np.ndarray, what: str, per_position: bool = False, kind: str = "class label") -> tuple[np.ndarray, int]:
    """Validate class labels (integral, in [0, MAX_CLASSES)) and return them as int64 with n_classes;
    one per example, or with ``per_position`` one per token (any shape; ``kind``: what they are)."""
    if y.ndim != 1 and not per_position:
        raise _Bad(f"{what} holds class labels and must be 1-D, got shape {y.shape}")
    if y.dtype.kind == "f":
        _check_finite(y, what)
        if (y != np.floor(y)).any():
            raise _Bad(f"{what} has a non-integer {kind} in row {_first_bad_row(y != np.floor(y))}")
    if (y < 0).any():
        raise _Bad(f"{what} has a negative {kind} in row {_first_bad_row(y < 0)}; {kind}s must be >= 0")
    top = int(y.max())
    if top >= MAX_CLASSES:
        raise _Bad(f"{what} has {kind} {top}; {kind}s must be < {MAX_CLASSES}")
    return y.astype(np.int64), top + 1


def from_arrays(X: np.ndarray, y: np.ndarray, dtype: np.dtype, name: str, task: str | None = None) -> Dataset:
    """Check user arrays and convert them to the engine layout.

    ``X`` is (examples, features) or, e.g. images, (examples, channels, height, width). The
    task follows ``y``'s dtype unless forced: integer (or bool) labels mean classification
    with ``n_classes = max + 1``; floats mean regression, with 1-D targets promoted to
    ``(n, 1)``. Integer ``X (n, t)`` with integer ``y (n, t)`` is a sequence task: token ids,
    kept as int64, and a label per position. Raises ValueError naming ``X`` or ``y``.
    """
    if X.dtype.kind not in "fiub":
        raise _Bad(f"array 'X' must be numeric, got dtype {X.dtype}")
    if not 2 <= X.ndim <= 1 + MAX_EXAMPLE_AXES or 0 in X.shape:
        raise _Bad(f"array 'X' must be 2-D to {1 + MAX_EXAMPLE_AXES}-D, (examples, features), (examples, tokens) "
                   f"or (examples, channels, height, width), and non-empty, got shape {X.shape}")
    if y.dtype.kind not in "fiub":
        raise _Bad(f"array 'y' must be numeric, got dtype {y.dtype}")
    if y.ndim == 0 or len(y) != len(X):
        raise _Bad(f"arrays 'X' and 'y' disagree on the number of examples: {X.shape} vs {y.shape}")
    if X.dtype.kind in "iu" and X.ndim == 2 and y.shape == X.shape and task != REGRESSION and y.dtype.kind in "iub":
        return _token_ids(X, y, name)
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


def _token_ids(X: np.ndarray, y: np.ndarray, name: str) -> Dataset:
    """A sequence set: ids (n, t) as int64, labels (n, t), both in [0, MAX_CLASSES)."""
    ids, _ = _labels(X, "array 'X'", per_position=True, kind="token id")
    labels, n_classes = _labels(y, "array 'y'", per_position=True)
    return Dataset(np.ascontiguousarray(ids), np.ascontiguousarray(labels), CLASSIFICATION, n_classes, name)


# --------------------------------------------------------------------------- npz


def npz(params: Mapping[str, Any], dtype: np.dtype, data_dir: Path | None = None,
        limits: DataLimits | None = None) -> Dataset:
    """``np.savez`` archive with arrays ``X`` and ``y``; pickles are never loaded, bombs never inflated."""
    path = resolve_path(params["path"], data_dir)
    limits = limits or DataLimits()
    try:
        X, y = read_npz(path, ("X", "y"), limits.max_file_bytes)
        return from_arrays(X, y, dtype, "npz")
    except (_Bad, ArchiveError) as exc:
        raise SpecError("params.path", f"{path}: {exc}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as exc:
        raise SpecError("params.path", f"{path}: not a readable .npz file ({str(exc)[:200]})") from None


# --------------------------------------------------------------------------- csv


def _lines(fh: IO[str]) -> Iterator[str]:
    """The file's lines, refusing one longer than MAX_LINE_CHARS before csv splits it."""
    number = 0
    while line := fh.readline(MAX_LINE_CHARS + 1):
        number += 1
        if len(line) > MAX_LINE_CHARS:
            raise _Bad(f"line {number}: longer than {MAX_LINE_CHARS} characters")
        yield line


def _rows(fh: IO[str], delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Non-blank rows, cells stripped, with their 1-based line numbers (for error messages)."""
    reader = csv.reader(_lines(fh), delimiter=delimiter)
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                yield reader.line_num, [cell.strip() for cell in row]
    except UnicodeDecodeError as exc:
        raise _Bad(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise _Bad(f"line {reader.line_num}: malformed CSV ({exc})") from None


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
            shown = ", ".join(names[:20]) + (f", ... ({len(names)} columns)" if len(names) > 20 else "")
            raise SpecError("params.label", f"no column named {label!r}; columns: {shown}")
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


def _bad_label(values: np.ndarray, text: np.ndarray, lines: list[int], column: str) -> str | None:
    """Why the first value that is not a class label (an integer in [0, MAX_CLASSES)) is not; None if all are."""
    ok = (values == np.floor(values)) & (values >= 0) & (values < MAX_CLASSES)
    if ok.all():
        return None
    i = int(np.flatnonzero(~ok)[0])
    return f"line {lines[i]}, {column}: class label must be an integer in [0, {MAX_CLASSES}), got {str(text[i])!r}"


class _Table:
    """A CSV's numbers, taken a block at a time: X in the target dtype, the label column as float64."""

    def __init__(self, names: list[str] | None, ncol: int, label: int, dtype: np.dtype, limits: DataLimits) -> None:
        self.names, self.ncol, self.label, self.dtype, self.limits = names, ncol, label, dtype, limits
        self.features = [j for j in range(ncol) if j != label]
        self.xs: list[np.ndarray] = []
        self.ys: list[np.ndarray] = []
        self.n = 0
        self.int_labels = True  # every label cell is integer text (auto task: classification)
        self.bad_label: str | None = None  # the first cell that cannot be a class label

    def add(self, block: list[tuple[int, list[str]]]) -> None:
        lines = [line for line, _ in block]
        for line, row in block:
            if len(row) != self.ncol:
                raise _Bad(f"line {line}: expected {self.ncol} columns, found {len(row)}")
            longest = max(row, key=len)
            if len(longest) > MAX_CELL_CHARS:
                j = row.index(longest)
                raise _Bad(f"line {line}, {_column(j, self.names)}: a value of {len(longest)} characters; "
                           f"numbers have at most {MAX_CELL_CHARS}")
        self.n += len(block)
        if self.n > self.limits.max_examples:
            raise _Bad(f"more than {self.limits.max_examples} examples (max_examples)")
        if self.n * self.ncol > self.limits.max_values:
            raise _Bad(f"more than {self.limits.max_values} values, rows x columns (max_values)")
        cells = np.array([row for _, row in block], dtype=str)
        values = _parse(cells, lines, self.names)
        text = cells[:, self.label]
        self.int_labels = self.int_labels and all(_INT_TEXT.fullmatch(s) for s in text)
        if self.bad_label is None:
            self.bad_label = _bad_label(values[:, self.label], text, lines, _column(self.label, self.names))
        with np.errstate(over="ignore"):  # float32 overflow becomes inf, reported by from_arrays
            self.xs.append(values[:, self.features].astype(self.dtype))
        self.ys.append(values[:, self.label])

    def dataset(self, task: str | None) -> Dataset:
        """The examples read so far; ``task`` None: classification iff every label is integer text."""
        task = task or (CLASSIFICATION if self.int_labels else REGRESSION)
        y = np.concatenate(self.ys)
        if task == CLASSIFICATION:
            if self.bad_label is not None:
                raise _Bad(self.bad_label)
            y = y.astype(np.int64)
        return from_arrays(np.concatenate(self.xs), y, self.dtype, "csv", task)


def _blocks(rows: Iterator[tuple[int, list[str]]], size: int) -> Iterator[list[tuple[int, list[str]]]]:
    block: list[tuple[int, list[str]]] = []
    for row in rows:
        block.append(row)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


def _load_csv(path: Path, params: Mapping[str, Any], dtype: np.dtype, limits: DataLimits) -> Dataset:
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise _Bad(f"{size} bytes, over the limit of {limits.max_file_bytes} (max_file_bytes)")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = _rows(fh, params["delimiter"])
        first = next(rows, None)
        if first is None:
            raise _Bad("file is empty")
        header = params["header"]
        if header is None:  # auto: a header is a first row with any non-numeric cell
            header = not all(_is_number(cell) for cell in first[1])
        ncol = len(first[1])
        if ncol - 1 > limits.max_features:
            raise _Bad(f"{ncol - 1} features exceeds max_features={limits.max_features}")
        names = first[1] if header else None
        if names is not None and max(len(name) for name in names) > MAX_NAME_CHARS:
            raise _Bad(f"line {first[0]}: a column name is longer than {MAX_NAME_CHARS} characters")
        data = rows if header else itertools.chain([first], rows)
        table: _Table | None = None
        for block in _blocks(data, max(1, BLOCK_CELLS // ncol)):
            if table is None:
                if ncol < 2:
                    raise _Bad(f"need at least 2 columns (features and a label), found {ncol}")
                table = _Table(names, ncol, _label_index(params["label"], names, ncol), dtype, limits)
            table.add(block)
    if table is None:
        raise _Bad("no data rows")
    return table.dataset(params["task"])


def csv_file(params: Mapping[str, Any], dtype: np.dtype, data_dir: Path | None = None,
             limits: DataLimits | None = None) -> Dataset:
    """Delimited numeric text: one example per line, one column holding the label/target."""
    path = resolve_path(params["path"], data_dir)
    try:
        return _load_csv(path, params, dtype, limits or DataLimits())
    except _Bad as exc:
        raise SpecError("params.path", f"{path}: {exc}") from None
    except OSError as exc:
        raise SpecError("params.path", f"{path}: cannot read ({exc})") from None
