"""Uploaded datasets, and checking a job's dataset against its model before accepting it.

Over the API a file dataset is named by the id (sha256) of an upload, never by a path on
the server: `resolve_job` swaps the id for the stored file's path and rejects anything
else, so clients cannot make the server read arbitrary files.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from service.config import TrainConfig
from service.store.base import DatasetNotFound, JobStore
from service.trainer import check_compatible
from workers.data import load_dataset
from workers.engine import SpecError

from .config import Limits

log = logging.getLogger(__name__)
FILE_SOURCES = ("npz", "csv")


class TooLarge(Exception):
    """A request over a configured limit (RESOURCE_EXHAUSTED)."""


class DatasetRegistry:
    def __init__(self, store: JobStore, root: Path, limits: Limits) -> None:
        self.store, self.root, self.limits = store, Path(root), limits
        self.root.mkdir(parents=True, exist_ok=True)

    # --- jobs -------------------------------------------------------------------------
    def resolve_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The job with an uploaded dataset's id replaced by the stored file and its options."""
        ds = spec.get("dataset")
        if not isinstance(ds, dict) or ds.get("name") not in FILE_SOURCES:
            return spec
        params = dict(ds.get("params") or {})
        ref = params.get("path")
        try:
            info = self.store.get_dataset(str(ref))
        except DatasetNotFound:
            raise SpecError("dataset.params.path", f"must be the id of an uploaded dataset "
                                                   f"(see ListDatasets), got {ref!r}") from None
        if info["format"] != ds["name"]:
            raise SpecError("dataset.name", f"dataset {ref} is {info['format']}, not {ds['name']}")
        params.update(info.get("options", {}), path=str(self.path_of(info)))
        return {**spec, "dataset": {**ds, "params": params}}

    def check_fits(self, config: TrainConfig) -> None:
        """Model vs dataset shape and the server's size limits, without loading any data."""
        model = config.build_model()
        if model.num_params > self.limits.max_params:
            raise TooLarge(f"model: {model.num_params} parameters exceed the server's limit of "
                           f"{self.limits.max_params}")
        n, n_features, task, n_outputs = self.describe(config)
        if n > self.limits.max_examples:
            raise TooLarge(f"dataset.params.n: {n} examples exceed the server's limit of {self.limits.max_examples}")
        check_compatible(model, n_features, task, n_outputs, config.dataset.name)

    def describe(self, config: TrainConfig) -> tuple[int, int, str, int]:
        """(examples, features, task, classes or target width) of a dataset spec."""
        name, p = config.dataset.name, config.dataset.params
        if name in FILE_SOURCES:
            info = self._info_by_path(p["path"])
            return info["n"], info["n_features"], info["task"], info["n_classes"] or info.get("n_outputs", 1)
        if name == "digits":
            return 1797, 64, "classification", 10
        if name == "spirals":
            return p["n"], 2, "classification", p["classes"]
        if name == "regression":
            return p["n"], p["d"], "regression", p["outputs"]
        return p["n"], p["d"], "classification", p["classes"]  # teacher, blobs

    def _info_by_path(self, path: str) -> dict[str, Any]:
        return self.store.get_dataset(Path(path).stem)

    def path_of(self, info: dict[str, Any]) -> Path:
        return self.root / f"{info['id']}.{info['format']}"

    # --- uploads ------------------------------------------------------------------------
    def upload(self, header: dict[str, Any], chunks: Iterator[bytes]) -> dict[str, Any]:
        """Stream to a temp file while hashing; parse it as the engine will; then publish it."""
        fmt = header.get("format")
        if fmt not in FILE_SOURCES:
            raise SpecError("header.format", f"must be one of {list(FILE_SOURCES)}, got {fmt!r}")
        if header.get("size_bytes", 0) > self.limits.max_upload_bytes:
            raise TooLarge(f"dataset of {header['size_bytes']} bytes exceeds the limit of "
                           f"{self.limits.max_upload_bytes}")
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                for data in chunks:
                    size += len(data)
                    if size > self.limits.max_upload_bytes:
                        raise TooLarge(f"upload exceeds the limit of {self.limits.max_upload_bytes} bytes")
                    digest.update(data)
                    f.write(data)
                f.flush()
                os.fsync(f.fileno())
            options = _csv_options(header) if fmt == "csv" else {}
            train, _ = load_dataset({"name": fmt, "params": {"path": tmp, **options}},
                                    max_examples=self.limits.max_examples)
            info = {"id": digest.hexdigest(), "format": fmt, "n": train.n, "n_features": train.n_features,
                    "task": train.task, "n_classes": train.n_classes or 0, "n_outputs": train.n_outputs,
                    "size_bytes": size, "filename": header.get("filename", ""), "options": options,
                    "created": time.time()}
            os.replace(tmp, self.path_of(info))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        log.info("stored dataset %s (%s, %d examples)", info["id"][:12], fmt, info["n"])
        return self.store.add_dataset(info)


def _csv_options(header: dict[str, Any]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for key in ("label", "header", "task", "delimiter"):
        if header.get(key) not in (None, ""):
            opts[key] = header[key]
    return copy.deepcopy(opts)
