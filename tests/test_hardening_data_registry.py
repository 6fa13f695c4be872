"""Issue 10, item 5 (uploads): an upload is stored whole or not at all, and the parse options
are part of its identity (the same bytes read another way are another dataset).

The real registry on real files with an in-memory store; the stream is what the handler
passes on (bytes, then the end marker). test_hardening_data_upload.py sends the same over gRPC.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from dptrain.core.config import TrainConfig
from dptrain.data import load_dataset
from dptrain.engine import SpecError
from dptrain.server.config import Limits
from dptrain.server.datasets import DatasetRegistry, TooLarge, UploadEnd
from dptrain.store.memory import MemoryJobStore

from .test_hardening_data import write_bomb


def registry(tmp_path: Path, **limits) -> DatasetRegistry:
    return DatasetRegistry(MemoryJobStore(), tmp_path / "datasets", Limits(**limits))


def small_npz(path: Path, n: int = 6) -> Path:
    np.savez(path, X=np.arange(n * 2, dtype=np.float64).reshape(n, 2), y=np.arange(n) % 2)
    return path


# ------------------------------------------------------------------ uploads: whole or nothing


def stream(data: bytes, end: int | None = None, chunk: int = 1000, after: list | None = None):
    for i in range(0, len(data), chunk):
        yield data[i:i + chunk]
    if end is not None:
        yield UploadEnd(end)
    yield from after or []


def assert_nothing_kept(reg: DatasetRegistry) -> None:
    assert reg.store.list_datasets() == []
    assert list(reg.root.iterdir()) == []


@pytest.mark.parametrize("header, parts, field", [
    ({}, lambda d: stream(d), "end"),  # the stream broke off: no end marker
    ({}, lambda d: stream(d, end=len(d) + 1), "end.size_bytes"),
    ({}, lambda d: stream(d[:-10], end=len(d)), "end.size_bytes"),
    ({"size_bytes": 99_999}, lambda d: stream(d, end=len(d)), "header.size_bytes"),
    ({"size_bytes": 10}, lambda d: stream(d, end=len(d)), "header.size_bytes"),
    ({}, lambda d: stream(d, end=len(d), after=[b"more"]), "chunk"),
    ({"size_bytes": -1}, lambda d: stream(d, end=len(d)), "header.size_bytes"),
])
def test_incomplete_uploads_are_never_stored(tmp_path, header, parts, field):
    data = small_npz(tmp_path / "d.npz").read_bytes()
    reg = registry(tmp_path)
    with pytest.raises(SpecError) as info:
        reg.upload({"format": "npz", "filename": "d.npz", **header}, parts(data))
    assert info.value.field == field
    assert_nothing_kept(reg)


def test_a_failing_client_stream_leaves_nothing(tmp_path):
    reg = registry(tmp_path)

    def broken():
        yield b"x" * 5000
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        reg.upload({"format": "csv"}, broken())
    assert_nothing_kept(reg)


def test_upload_errors_name_the_file_not_the_temp_path(tmp_path):
    reg = registry(tmp_path)
    data = b"a,b\n1,x\n"
    with pytest.raises(SpecError) as info:
        reg.upload({"format": "csv", "filename": "mine.csv"}, stream(data, end=len(data)))
    assert "'mine.csv': line 2" in str(info.value) and ".upload-" not in str(info.value)
    assert_nothing_kept(reg)


def test_bomb_upload_is_refused_by_the_upload_limit(tmp_path):
    data = write_bomb(tmp_path / "bomb.npz", rows=1 << 20).read_bytes()
    reg = registry(tmp_path, max_upload_bytes=8 << 20)  # an archive may inflate to what could be uploaded
    with pytest.raises(SpecError, match=r"inflate to .* over the limit of 8388608"):
        reg.upload({"format": "npz", "filename": "bomb.npz"}, stream(data, end=len(data), chunk=1 << 16))
    assert_nothing_kept(reg)


def test_partial_uploads_of_a_killed_server_are_removed_at_start(tmp_path):
    root = tmp_path / "datasets"
    root.mkdir()
    (root / ".upload-abc123").write_bytes(b"half a file")
    (root / "keep.npz").write_bytes(b"a stored dataset")
    DatasetRegistry(MemoryJobStore(), root, Limits())
    assert [p.name for p in root.iterdir()] == ["keep.npz"]


# ------------------------------------------------------------------ uploads: identity


CSV = b"a,b,c\n1,2,0\n3,4,1\n5,6,1\n"


def upload(reg: DatasetRegistry, data: bytes, fmt: str = "csv", **options) -> dict:
    return reg.upload({"format": fmt, "filename": f"d.{fmt}", **options}, stream(data, end=len(data)))


def test_same_bytes_other_csv_options_are_another_dataset(tmp_path):
    reg = registry(tmp_path)
    last = upload(reg, CSV)
    first = upload(reg, CSV, label="a")
    assert first["id"] != last["id"]
    assert (last["n_classes"], first["n_classes"]) == (2, 6)  # each parse, not the first one again
    assert upload(reg, CSV, label="a")["id"] == first["id"]  # same bytes, same options: same dataset
    assert upload(reg, CSV, delimiter=",", task="auto")["id"] == last["id"]  # defaults spelled out
    assert len(reg.store.list_datasets()) == 2 and len(list(reg.root.iterdir())) == 2
    spec = reg.resolve_job({"dataset": {"name": "csv", "params": {"path": first["id"]}}})
    assert spec["dataset"]["params"]["label"] == "a"
    assert load_dataset(spec["dataset"])[0].n_classes == 6


def test_ids_are_derived_from_bytes_and_options(tmp_path):
    reg = registry(tmp_path)
    npz = small_npz(tmp_path / "d.npz").read_bytes()
    assert upload(reg, npz, "npz")["id"] == hashlib.sha256(npz).hexdigest()  # unchanged for npz
    identity = {"format": "csv", "options": {"label": "a"}, "sha256": hashlib.sha256(CSV).hexdigest()}
    expected = hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert upload(reg, CSV, label="a")["id"] == expected


def test_datasets_stored_before_options_counted_keep_working(tmp_path):
    reg = registry(tmp_path)
    sha = hashlib.sha256(CSV).hexdigest()
    (reg.root / f"{sha}.csv").write_bytes(CSV)
    reg.store.add_dataset({"id": sha, "format": "csv", "n": 3, "n_features": 2, "task": "classification",
                           "n_classes": 6, "n_outputs": 6, "size_bytes": len(CSV), "filename": "d.csv",
                           "options": {"label": "a"}, "created": 1.0})
    spec = reg.resolve_job({"dataset": {"name": "csv", "params": {"path": sha}}})
    assert spec["dataset"]["params"]["label"] == "a" and load_dataset(spec["dataset"])[0].n_classes == 6
    spec = {"model": {"input": 2, "layers": ["linear 6"], "loss": "cross_entropy"},
            "dataset": {"name": "csv", "params": {"path": sha}}, "optimizer": {"name": "sgd", "lr": 0.1}, "steps": 1}
    reg.check_fits(TrainConfig.from_dict(reg.resolve_job(spec)))
    assert upload(reg, CSV)["id"] != sha  # a new upload without options is its own dataset


@pytest.mark.parametrize("options, field", [
    ({"label": "a"}, "header.label"),
    ({"label": 0}, "header.label"),
    ({"header": False}, "header.header"),
    ({"task": "regression"}, "header.task"),
    ({"delimiter": ";"}, "header.delimiter"),
])
def test_csv_options_on_an_npz_upload_are_an_error(tmp_path, options, field):
    reg = registry(tmp_path)
    with pytest.raises(SpecError) as info:
        upload(reg, small_npz(tmp_path / "d.npz").read_bytes(), "npz", **options)
    assert info.value.field == field and "csv option" in info.value.message
    assert_nothing_kept(reg)


@pytest.mark.parametrize("header, field", [
    ({"format": "csv", "task": "x" * 5000}, "header.task"),
    ({"format": "csv", "delimiter": ";;"}, "header.delimiter"),
    ({"format": "csv", "label": "L" * 5000}, "header.label"),
    ({"format": "csv", "filename": "f" * 5000}, "header.filename"),
    ({"format": "zip" * 5000}, "header.format"),
])
def test_bad_headers_name_the_field_and_echo_little(tmp_path, header, field):
    reg = registry(tmp_path)
    with pytest.raises(SpecError) as info:
        reg.upload(header, stream(CSV, end=len(CSV)))
    assert info.value.field == field and len(str(info.value)) < 300
    assert_nothing_kept(reg)


def test_declared_size_over_the_limit_is_refused_before_reading(tmp_path):
    reg = registry(tmp_path, max_upload_bytes=100)

    def never():
        raise AssertionError("read the stream")
        yield b""

    with pytest.raises(TooLarge, match="header.size_bytes"):
        reg.upload({"format": "csv", "size_bytes": 101}, never())
    assert_nothing_kept(reg)
