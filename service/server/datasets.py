"""Uploaded datasets, and checking a job's dataset against its model before accepting it.

Over the API a file dataset is named by the id of an upload, never by a path on the
server: `resolve_job` swaps the id for the stored file's path and rejects anything else,
so clients cannot make the server read arbitrary files.

An upload is the header, the file's bytes, then an end marker carrying their count. It is
written to a temp file and published (renamed into place, then registered) only once the
marker arrived, every count agrees and the file parsed within the limits: a client that
stops or dies mid-stream leaves nothing behind.

A dataset's id is the sha256 of its bytes for an npz or a txt, and for a csv a sha256 of
the bytes' hash and the parse options (label, header, task, delimiter): the same bytes read
another way are another dataset. Ids stored before options counted (the bare sha256 of a
csv) keep working, with the options stored beside them.

A txt upload is a text for the ``text`` source (character-level language modelling): its
record keeps the number of characters and the vocabulary (``n_chars``, ``vocab``: the sorted
distinct characters, id = position), so a job's layout follows from its window (``context``,
``stride``) without reading the file, and a client can decode ids.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from dptrain.core.config import TrainConfig
from dptrain.core.trainer import check_compatible
from dptrain.data import (
    MAX_FILE_BYTES,
    PARAM_SCHEMAS,
    SOURCES,
    DataLimits,
    DatasetSpec,
    Layout,
    check_limits,
    load_dataset,
    read_text,
    text_layout,
)
from dptrain.data import SpecError as DataSpecError
from dptrain.data.sequences import Text, windows
from dptrain.data.spec import DEFAULT_CONTEXT
from dptrain.engine import SpecError
from dptrain.engine.errors import show as clip
from dptrain.rpc.bounds import CSV_OPTIONS, UPLOAD_FORMATS
from dptrain.store.base import DatasetNotFound, JobStore
from dptrain.store.disk import fsync_dir

from .config import Limits

log = logging.getLogger(__name__)
FORMATS = tuple(UPLOAD_FORMATS.values())
SOURCE_OF = {fmt: name for name, fmt in UPLOAD_FORMATS.items()}
MAX_FILENAME_CHARS = 255
PARTIAL_PREFIX = ".upload-"
MIN_PREFIX = 6
"""Shortest id prefix that names an upload in a spec."""


class TooLarge(Exception):
    """A request over a configured limit (RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class UploadEnd:
    """The end-of-stream marker: the number of bytes the client says it sent."""

    size_bytes: int


class DatasetRegistry:
    def __init__(self, store: JobStore, root: Path, limits: Limits) -> None:
        self.store, self.root, self.limits = store, Path(root), limits
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_partial_uploads()

    def _remove_partial_uploads(self) -> None:
        """Temp files of uploads a killed server never finished (a running one removes its own)."""
        stale = list(self.root.glob(f"{PARTIAL_PREFIX}*"))
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            log.info("removed %d partial upload(s) left by an earlier server", len(stale))

    # --- jobs -------------------------------------------------------------------------
    def resolve_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The job with an uploaded dataset's id replaced by the stored file and its options."""
        ds = spec.get("dataset")
        if not isinstance(ds, dict) or ds.get("name") not in UPLOAD_FORMATS:
            return spec
        params = dict(ds.get("params") or {})
        ref = params.get("path")
        info = self.find(str(ref))
        if info["format"] != UPLOAD_FORMATS[ds["name"]]:
            raise SpecError("dataset.name", f"dataset {ref} is a {info['format']} upload, read by source "
                                            f"{SOURCE_OF[info['format']]!r}, not {ds['name']!r}")
        stored = info.get("options", {})
        for key in CSV_OPTIONS:  # parse options are fixed at upload: a different one is a mistake, not a wish
            given = params.get(key)
            if given not in (None, "auto") and given != stored.get(key):
                was = repr(stored[key]) if key in stored else "its default"
                raise SpecError(f"dataset.params.{key}", f"dataset {info['id'][:16]} was uploaded with {key} {was}, "
                                                         f"not {given!r}: upload the file again with --{key} {given} "
                                                         f"(a file's parse options are fixed when it is uploaded)")
        params.update(stored, path=str(self.path_of(info)))
        return {**spec, "dataset": {**ds, "params": params}}

    def find(self, ref: str) -> dict[str, Any]:
        """An uploaded dataset by its id or a unique prefix of it (`datasets ls` shows 16 digits)."""
        try:
            return self.store.get_dataset(ref)
        except DatasetNotFound:
            pass
        matches = [d for d in self.store.list_datasets() if len(ref) >= MIN_PREFIX and d["id"].startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        problem = (f"is a prefix of {len(matches)} uploaded datasets' ids: give more digits" if matches else
                   f"must be the id (or a unique prefix of {MIN_PREFIX}+ digits) of an uploaded dataset "
                   f"(see `dptrain datasets ls`; a local file is uploaded by `dptrain datasets upload`, "
                   f"or by `dptrain submit` itself)")
        raise SpecError("dataset.params.path", f"{problem}, got {ref!r}")

    def check_fits(self, config: TrainConfig) -> None:
        """Model vs dataset shape and every size limit the data would hit at load, without loading any."""
        model = config.build_model()
        if model.num_params > self.limits.max_params:
            raise TooLarge(f"model: {model.num_params} parameters exceed the server's limit of "
                           f"{self.limits.max_params}")
        layout = self.describe(config)
        if layout.n > self.limits.max_examples:
            raise TooLarge(f"dataset.params.n: {layout.n} examples exceed the server's limit of "
                           f"{self.limits.max_examples}")
        check_limits(config.dataset, max_examples=self.limits.max_examples)  # d, n x d, ...: SpecError
        check_compatible(model, layout, config.dataset.name)

    def describe(self, config: TrainConfig) -> Layout:
        """A dataset spec's layout: a synthetic source's from its params (the source
        registry), a text's from its record and window, another file's as recorded at upload
        (older records: a vector of features)."""
        name, p = config.dataset.name, config.dataset.params
        layout = SOURCES[name].layout
        if layout is not None:
            return layout(p)
        info = self._info_by_path(p["path"])
        if name == "text":
            limits = DataLimits(max_examples=self.limits.max_examples)
            return text_layout(info["n_chars"], len(info["vocab"]), p, limits)
        return Layout(info["n"], tuple(info.get("x_shape") or (info["n_features"],)), info["task"],
                      info["n_classes"] or info.get("n_outputs", 1), bool(info.get("x_int")),
                      tuple(info.get("y_shape") or ()), int(info.get("x_vocab") or 0))

    def _info_by_path(self, path: str) -> dict[str, Any]:
        return self.store.get_dataset(Path(path).stem)

    def path_of(self, info: dict[str, Any]) -> Path:
        return self.root / f"{info['id']}.{info['format']}"

    def relocate(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A stored job's spec with its upload's path pointed into this registry.

        Stored specs carry the upload's absolute path as it was when the job was accepted;
        a state directory that has since moved (restored from a backup, another mount)
        still holds the file under the same id, so the id in the file's name finds it."""
        ds = spec.get("dataset")
        if not isinstance(ds, dict) or ds.get("name") not in UPLOAD_FORMATS:
            return spec
        path = Path(str((ds.get("params") or {}).get("path", "")))
        try:
            info = self.store.get_dataset(path.stem)
        except DatasetNotFound:
            return spec
        here = self.path_of(info)
        if here == path or not here.is_file():
            return spec
        return {**spec, "dataset": {**ds, "params": {**ds["params"], "path": str(here)}}}

    # --- uploads ------------------------------------------------------------------------
    def upload(self, header: dict[str, Any], parts: Iterator[bytes | UploadEnd]) -> dict[str, Any]:
        """Receive to a temp file while hashing; check the counts; parse it as the engine will;
        then publish it. `parts` is the file's bytes, then one UploadEnd."""
        fmt, options, declared, filename = self._check_header(header)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=PARTIAL_PREFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                sha, size = self._receive(parts, f, declared)
            dataset_id = _dataset_id(sha, fmt, options)
            known = self._known(dataset_id, fmt)
            if known is not None:
                return known
            info = {"id": dataset_id, "sha256": sha, "format": fmt, **self._parse(tmp, fmt, options, filename),
                    "size_bytes": size, "filename": filename, "options": options, "created": time.time()}
            os.replace(tmp, self.path_of(info))
            fsync_dir(self.root)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        log.info("stored dataset %s (%s, %d examples)", info["id"][:12], fmt, info["n"])
        return self.store.add_dataset(info)

    def _check_header(self, header: dict[str, Any]) -> tuple[str, dict[str, Any], int, str]:
        """(format, canonical csv options, declared size or 0, file name), or the field at fault."""
        fmt = header.get("format")
        if fmt not in FORMATS:
            raise SpecError("header.format", f"must be one of {list(FORMATS)}, got {clip(fmt)}")
        declared = header.get("size_bytes") or 0
        if declared < 0:
            raise SpecError("header.size_bytes", f"must be >= 0 (0: not given), got {declared}")
        if declared > self.limits.max_upload_bytes:
            raise TooLarge(f"header.size_bytes: a dataset of {declared} bytes exceeds the limit of "
                           f"{self.limits.max_upload_bytes}")
        filename = header.get("filename") or ""
        if len(filename) > MAX_FILENAME_CHARS:
            raise SpecError("header.filename", f"must be at most {MAX_FILENAME_CHARS} characters, got {len(filename)}")
        return fmt, upload_options(fmt, header), declared, filename

    def _receive(self, parts: Iterator[bytes | UploadEnd], f: BinaryIO, declared: int) -> tuple[str, int]:
        """Write the bytes to `f`; (sha256 hex, size) once the end marker came and every count agrees."""
        digest, size, end = hashlib.sha256(), 0, None
        limit = self.limits.max_upload_bytes
        for part in parts:
            if end is not None:
                raise SpecError("chunk", "nothing may follow the end marker")
            if isinstance(part, UploadEnd):
                end = part
                continue
            size += len(part)
            if size > limit:
                raise TooLarge(f"upload exceeds the limit of {limit} bytes")
            if declared and size > declared:
                raise SpecError("header.size_bytes", f"declares {declared} bytes but more arrived; nothing was stored")
            digest.update(part)
            f.write(part)
        if end is None:
            raise SpecError("end", f"the upload stopped after {size} bytes without its end marker (did the client "
                                   f"stop early?); nothing was stored")
        if end.size_bytes != size:
            raise SpecError("end.size_bytes", f"says {end.size_bytes} bytes were sent but {size} arrived; "
                                              f"nothing was stored")
        if declared and declared != size:
            raise SpecError("header.size_bytes", f"declares {declared} bytes but {size} arrived; nothing was stored")
        f.flush()
        os.fsync(f.fileno())
        return digest.hexdigest(), size

    def _known(self, dataset_id: str, fmt: str) -> dict[str, Any] | None:
        """The stored dataset with this id (same bytes, same options), if its file is in place."""
        try:
            info = self.store.get_dataset(dataset_id)
        except DatasetNotFound:
            return None
        if info["format"] != fmt:
            raise SpecError("header.format", f"these bytes are stored as dataset {dataset_id}, a {info['format']} file")
        return info if self.path_of(info).is_file() else None

    def _parse(self, tmp: str, fmt: str, options: dict[str, Any], filename: str) -> dict[str, Any]:
        """The upload's record (size, task, layout), from reading it as the engine will; errors
        name the upload's file name, not the temp path."""
        max_bytes = min(self.limits.max_upload_bytes, MAX_FILE_BYTES)
        try:
            if fmt == "txt":
                return _text_record(read_text(Path(tmp), DataLimits(max_file_bytes=max_bytes)))
            train, _ = load_dataset({"name": SOURCE_OF[fmt], "params": {"path": tmp, **options}},
                                    max_examples=self.limits.max_examples, max_file_bytes=max_bytes)
        except DataSpecError as e:
            raise SpecError(e.field, e.message.replace(tmp, clip(filename or "the upload"))) from None
        return _record(train.layout, train.n_features)


def _record(layout: Layout, n_features: int) -> dict[str, Any]:
    """What a dataset's record says of its examples; their shape and kind when not a vector of floats."""
    info = {"n": layout.n, "n_features": n_features, "task": layout.task,
            "n_classes": layout.n_outputs if layout.task == "classification" else 0, "n_outputs": layout.n_outputs}
    if len(layout.x_shape) > 1 or layout.x_int or layout.y_shape:  # images, sequences
        info.update(x_shape=list(layout.x_shape), x_int=layout.x_int, y_shape=list(layout.y_shape))
        if layout.x_int:
            info["x_vocab"] = layout.x_vocab
    return info


def _text_record(text: Text) -> dict[str, Any]:
    """A text's record: its characters and vocabulary, and its examples with the default window
    (n is 0 when the text is shorter than that window: a job then needs a smaller context)."""
    n, context = windows(len(text.ids), DEFAULT_CONTEXT, None), DEFAULT_CONTEXT
    layout = Layout(n, (context,), "classification", len(text.vocab), True, (context,))
    return {**_record(layout, context), "n_chars": len(text.ids), "vocab": text.vocab}


def upload_options(fmt: str, header: dict[str, Any]) -> dict[str, Any]:
    """The csv options given, validated, without the ones equal to their defaults: the canonical
    form the dataset's id is derived from. An npz upload takes none."""
    given = {key: header[key] for key in CSV_OPTIONS if header.get(key) not in (None, "")}
    if fmt != "csv":
        if given:
            raise SpecError(f"header.{next(iter(given))}", f"is a csv option; a {fmt} upload takes none")
        return {}
    try:
        params = DatasetSpec("csv", {"path": "upload", **given}).params
    except DataSpecError as e:
        raise SpecError.of([(f.replace("dataset.params.", "header.", 1), m) for f, m in e.errors]) from None
    fields = PARAM_SCHEMAS["csv"].model_fields
    return {key: params[key] for key in CSV_OPTIONS if params[key] != fields[key].default}


def _dataset_id(sha: str, fmt: str, options: dict[str, Any]) -> str:
    """npz, txt: the bytes' sha256; csv: a sha256 of it and the options, so each way of reading them is its own."""
    if fmt != "csv":
        return sha
    identity = json.dumps({"format": fmt, "options": options, "sha256": sha}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(identity.encode()).hexdigest()



