"""Sequence sources: a text as character-level language modelling, and a synthetic sequence task.

Both give int64 token ids ``X (n, length)`` and a label per position ``y (n, length)``.

A text's vocabulary is its sorted distinct characters (id = rank), so the same text always
gets the same ids and a client decodes with ``vocab[id]``. Example ``i`` is the window of
``context`` characters starting at ``i * stride``; its labels are the same window shifted by
one character (each position's next character)::

    n = (characters - 1 - context) // stride + 1      (at least one window, or an error)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import CLASSIFICATION, Dataset, Layout
from .files import resolve_path
from .limits import DataLimits
from .spec import MAX_VOCAB, SpecError

__all__ = ["Text", "read_text", "text", "text_layout", "windows", "sequence", "sequence_layout", "SIZES"]


class Text:
    """A text as token ids: ``ids[i]`` is the rank of character ``i`` in ``vocab``."""

    def __init__(self, ids: np.ndarray, vocab: str) -> None:
        self.ids, self.vocab = ids, vocab

    def decode(self, ids: np.ndarray) -> str:
        return "".join(self.vocab[i] for i in np.asarray(ids).ravel())


def _fail(path: Path | str, message: str) -> SpecError:
    return SpecError("params.path", f"{path}: {message}")


def read_text(path: Path, limits: DataLimits) -> Text:
    """A UTF-8 file (a leading byte-order mark is dropped) as ids and vocabulary, within the
    limits: its size in bytes, at least two characters (one next character to predict) and at
    most ``MAX_VOCAB`` distinct ones."""
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise _fail(path, f"{size} bytes, over the limit of {limits.max_file_bytes} (max_file_bytes)")
    try:
        chars = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _fail(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise _fail(path, f"cannot read ({exc})") from None
    if len(chars) > limits.max_values:
        raise _fail(path, f"{len(chars)} characters, over the limit of {limits.max_values} (max_values)")
    if len(chars) < 2:
        raise _fail(path, f"the text has {len(chars)} character(s); a language model needs at least 2")
    codes = np.frombuffer(chars.encode("utf-32-le"), dtype=np.uint32)
    distinct = np.unique(codes)
    if len(distinct) > MAX_VOCAB:
        raise _fail(path, f"{len(distinct)} distinct characters, over the limit of {MAX_VOCAB} (the vocabulary)")
    vocab = "".join(map(chr, distinct))
    return Text(np.searchsorted(distinct, codes).astype(np.int64), vocab)


def windows(n_chars: int, context: int, stride: int | None) -> int:
    """Examples a text of ``n_chars`` characters gives (0 if the window is too long)."""
    return max(0, (n_chars - 1 - context) // (stride or context) + 1)


def text_layout(n_chars: int, vocab_size: int, params: Mapping[str, Any], limits: DataLimits | None = None) -> Layout:
    """The layout of a text of ``n_chars`` characters read with ``params`` (context, stride), known
    from the text's record alone; refuses windows longer than the text and sets too big to build."""
    limits = limits or DataLimits()
    context, stride = params["context"], params.get("stride")
    n = windows(n_chars, context, stride)
    if n < 1:
        raise SpecError("params.context", f"is {context} but the text has {n_chars} characters: a window and the "
                                          f"character after it need at most {n_chars - 1}")
    if n > limits.max_examples:
        raise SpecError("params.stride", f"{n} windows exceed max_examples={limits.max_examples}; "
                                         f"use a larger stride")
    if 2 * n * context > limits.max_values:
        raise SpecError("params.stride", f"{n} windows of {context} characters build {2 * n * context} values "
                                         f"(2*n*context), over the limit of {limits.max_values} (max_values); "
                                         f"use a larger stride")
    return Layout(n, (context,), CLASSIFICATION, vocab_size, True, (context,), vocab_size)


def text(params: Mapping[str, Any], dtype: np.dtype, data_dir: Path | None = None,
         limits: DataLimits | None = None) -> Dataset:
    """Windows of a text file: X the characters' ids, y the next character's at each position."""
    limits = limits or DataLimits()
    txt = read_text(resolve_path(params["path"], data_dir), limits)
    layout = text_layout(len(txt.ids), len(txt.vocab), params, limits)
    context, stride = params["context"], params.get("stride") or params["context"]
    both = np.lib.stride_tricks.sliding_window_view(txt.ids, context + 1)[::stride][:layout.n]
    return Dataset(np.ascontiguousarray(both[:, :-1]), np.ascontiguousarray(both[:, 1:]), CLASSIFICATION,
                   len(txt.vocab), "text")


def sequence_layout(params: Mapping[str, Any]) -> Layout:
    length = params["length"]
    return Layout(params["n"], (length,), CLASSIFICATION, params["vocab"], True, (length,), params["vocab"])


def sequence(params: Mapping[str, Any], dtype: np.dtype, data_dir: Path | None = None,
             limits: DataLimits | None = None) -> Dataset:
    """Uniform random tokens; the target at each position is the input reversed, or sorted."""
    n, length, vocab = params["n"], params["length"], params["vocab"]
    X = np.random.default_rng(params["seed"]).integers(0, vocab, (n, length), dtype=np.int64)
    y = X[:, ::-1] if params["task"] == "reverse" else np.sort(X, axis=1)
    return Dataset(X, np.ascontiguousarray(y), CLASSIFICATION, vocab, "sequence")


SIZES = {"sequence": (lambda p: 2 * p["n"] * p["length"], "2*n*length")}
"""Values each source builds, and the formula, for errors (as ``synthetic.SIZES``)."""
