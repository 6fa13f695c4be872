"""Issue 10, items 5 and 17 (data): hostile dataset files and oversized sources are refused
before they cost memory (a zip bomb is never inflated, a CSV never sizes a giant text array,
a synthetic source too big to build is refused at submit).

Real files and the real registry; no server (test_hardening_data_upload.py goes over gRPC).
"""
from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from dptrain.core.config import TrainConfig
from dptrain.data import DatasetSpec, SpecError, load_dataset
from dptrain.data import loader as loader_module
from dptrain.engine import SpecError as EngineSpecError
from dptrain.server.config import Limits
from dptrain.server.datasets import DatasetRegistry
from dptrain.store.memory import MemoryJobStore


def write_bomb(path: Path, rows: int, cols: int = 8) -> Path:
    """An .npz of zeros: X rows x cols float64 and y, a few KB on disk, rows*cols*8 bytes inflated."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, shape, descr in (("X.npy", (rows, cols), "<f8"), ("y.npy", (rows,), "<i8")):
            with zf.open(name, "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
                left, zeros = int(np.prod(shape)) * 8, bytes(1 << 20)
                while left:
                    f.write(zeros[:min(left, len(zeros))])
                    left -= min(left, len(zeros))
    return path


def npz_spec(path: Path) -> DatasetSpec:
    return DatasetSpec("npz", {"path": str(path)})


def small_npz(path: Path, n: int = 6) -> Path:
    np.savez(path, X=np.arange(n * 2, dtype=np.float64).reshape(n, 2), y=np.arange(n) % 2)
    return path


# ------------------------------------------------------------------ npz: bombs and lies


def test_zip_bomb_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    bomb = write_bomb(tmp_path / "bomb.npz", rows=1 << 19, cols=16)  # 68 MiB inflated
    assert bomb.stat().st_size < 1 << 20
    monkeypatch.setattr(loader_module, "MAX_FILE_BYTES", 4 << 20, raising=False)
    tracemalloc.start()
    try:
        with pytest.raises(SpecError, match=r"arrays X, y inflate to 713\d{5} bytes, over the limit of 4194304") \
                as info:
            load_dataset(npz_spec(bomb))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.field == "dataset.params.path"
    assert peak < 2 << 20  # nothing was inflated (numpy's allocations are traced too)
    assert load_dataset(npz_spec(bomb), max_file_bytes=80 << 20)[0].n == 1 << 19  # within the limit: fine


def _patch_directory_size(data: bytes, name: bytes, size: int) -> bytes:
    """Set a member's uncompressed size in the zip's central directory (or its zip64 extra)."""
    at = 0
    while True:
        at = data.index(b"PK\x01\x02", at)
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46:at + 46 + name_len] == name:
            break
        at += 4
    out = bytearray(data)
    if struct.unpack_from("<I", data, at + 24)[0] == 0xFFFFFFFF:  # zip64: the size lives in the extra field
        extra = at + 46 + name_len
        out[extra + 4:extra + 12] = struct.pack("<Q", size)
    else:
        struct.pack_into("<I", out, at + 24, size)
    return bytes(out)


def test_an_array_header_larger_than_its_data_is_refused_unread(tmp_path):
    path = tmp_path / "lie.npz"
    with zipfile.ZipFile(path, "w") as zf:
        with zf.open("X.npy", "w") as f:  # claims a million rows, holds two
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 2)})
            f.write(np.ones(4).tobytes())
        with zf.open("y.npy", "w") as f:
            np.lib.format.write_array(f, np.zeros(2, np.int64))
    with pytest.raises(SpecError, match=r"'X' declares shape \(1000000, 2\) \(16000000 bytes\) but holds only 32"):
        load_dataset(npz_spec(path))


def test_a_directory_understating_a_member_is_refused_unread(tmp_path):
    path = small_npz(tmp_path / "d.npz", n=100_000)
    lie = _patch_directory_size(path.read_bytes(), b"X.npy", 10_000)  # the directory now says 10 kB
    (tmp_path / "lie.npz").write_bytes(lie)
    with pytest.raises(SpecError, match=r"array 'X' declares shape \(100000, 2\) \(1600000 bytes\) but holds only"):
        load_dataset(npz_spec(tmp_path / "lie.npz"))


def test_a_member_is_never_read_past_its_declared_size():
    from dptrain.data.archive import ArchiveError, _Capped

    capped = _Capped(io.BytesIO(b"x" * 100), 10, "array 'X'")
    assert capped.read(4) == b"xxxx"
    with pytest.raises(ArchiveError, match="inflates past its declared size of 10 bytes"):
        capped.read()


def test_member_count_is_bounded(tmp_path):
    path = tmp_path / "many.npz"
    np.savez(path, X=np.ones((3, 2)), y=np.zeros(3, int), **{f"a{i}": np.zeros(1) for i in range(100)})
    with pytest.raises(SpecError, match=r"102 members; an .npz dataset may have at most 64"):
        load_dataset(npz_spec(path))


def test_end_record_understating_the_members_is_caught(tmp_path):
    path = tmp_path / "many.npz"
    np.savez(path, X=np.ones((3, 2)), y=np.zeros(3, int), **{f"a{i}": np.zeros(1) for i in range(100)})
    data = bytearray(path.read_bytes())
    end = data.rindex(b"PK\x05\x06")
    struct.pack_into("<HH", data, end + 8, 2, 2)  # the end record now claims 2 members
    path.write_bytes(bytes(data))
    with pytest.raises(SpecError, match=r"102 members"):
        load_dataset(npz_spec(path))


def test_unsupported_members_are_refused_not_crashed_on(tmp_path):
    path = tmp_path / "bz.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_BZIP2) as zf:
        for key, arr in (("X", np.ones((3, 2))), ("y", np.zeros(3, int))):
            with zf.open(f"{key}.npy", "w") as f:
                np.lib.format.write_array(f, arr)
    with pytest.raises(SpecError, match=r"array 'X' uses zip compression method 12"):
        load_dataset(npz_spec(path))
    enc = bytearray(small_npz(tmp_path / "enc.npz").read_bytes())
    for sig, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # mark every member encrypted
        at = 0
        while (at := enc.find(sig, at)) >= 0:
            enc[at + flags_at] |= 1
            at += 4
    (tmp_path / "enc.npz").write_bytes(bytes(enc))
    with pytest.raises(SpecError, match=r"array 'X' is encrypted"):  # zipfile's RuntimeError was an INTERNAL
        load_dataset(npz_spec(tmp_path / "enc.npz"))


def test_damaged_archives_only_ever_raise_spec_errors(tmp_path):
    """Seeded byte flips and cuts of a valid (compressed) .npz: a SpecError naming the path, never anything else."""
    good = tmp_path / "good.npz"
    rng = np.random.default_rng(0)
    np.savez_compressed(good, X=rng.standard_normal((40, 3)), y=rng.integers(0, 3, 40))
    data = good.read_bytes()
    bad = tmp_path / "bad.npz"
    for i in range(400):
        mutant = bytearray(data)
        if i % 4 == 0:
            mutant = mutant[:int(rng.integers(0, len(data)))]
        else:
            for at in rng.integers(0, len(data), int(rng.integers(1, 4))):
                mutant[at] = int(rng.integers(0, 256))
        bad.write_bytes(bytes(mutant))
        try:
            load_dataset(npz_spec(bad))
        except SpecError as e:
            assert e.field == "dataset.params.path" and len(str(e)) < 1000
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"mutant {i}: {type(e).__name__}: {e}")


# ------------------------------------------------------------------ csv: memory bombs


def test_csv_long_value_is_refused_before_it_sizes_a_text_array(tmp_path):
    """An 820 KB file whose one 20,000-character cell made every cell of a 200,000-row array that wide (30 GiB)."""
    path = tmp_path / "wide.csv"
    path.write_text("1,0\n" * 200_000 + "1" * 20_000 + ",0\n")
    with pytest.raises(SpecError, match=r"line 200001, column 0: a value of 20000 characters"):
        load_dataset({"name": "csv", "params": {"path": str(path)}})


def test_csv_long_line_and_too_many_columns(tmp_path, monkeypatch):
    path = tmp_path / "line.csv"
    path.write_text("a,b\n1,2\n" + "1," * 3_000_000 + "0\n")
    with pytest.raises(SpecError, match=r"line 3: longer than 4194304 characters"):
        load_dataset({"name": "csv", "params": {"path": str(path)}})
    path.write_text(",".join(["1"] * 30) + "\n")
    with pytest.raises(SpecError, match=r"29 features exceeds max_features=10"):
        load_dataset({"name": "csv", "params": {"path": str(path)}}, max_features=10)


def test_csv_rows_and_values_are_bounded_as_they_stream(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("1,0\n" * 100_000)
    with pytest.raises(SpecError, match=r"more than 1000 examples"):
        load_dataset({"name": "csv", "params": {"path": str(path)}}, max_examples=1000)
    with pytest.raises(SpecError, match=r"more than 5000 values"):
        load_dataset({"name": "csv", "params": {"path": str(path)}}, max_values=5000)


def test_csv_in_blocks_is_bitwise_the_whole_file(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((500, 4)), rng.integers(0, 5, 500)
    path = tmp_path / "d.csv"
    path.write_text("".join(",".join(repr(float(v)) for v in row) + f",{label}\n" for row, label in zip(X, y)))
    whole = load_dataset({"name": "csv", "params": {"path": str(path)}}, dtype="float64")[0]
    monkeypatch.setattr("dptrain.data.files.BLOCK_CELLS", 7, raising=False)
    blocks = load_dataset({"name": "csv", "params": {"path": str(path)}}, dtype="float64")[0]
    assert whole.X.tobytes() == blocks.X.tobytes() == X.tobytes() and np.array_equal(blocks.y, y)
    (tmp_path / "bad.csv").write_text("a,b\n" + "1,0\n" * 30 + "1,-2\n")  # the bad label is in a later block
    with pytest.raises(SpecError, match=r"line 32, column 1 \('b'\): class label must be an integer"):
        load_dataset({"name": "csv", "params": {"path": str(tmp_path / "bad.csv")}})


# ------------------------------------------------------------------ synthetic sources at submit


def registry(tmp_path: Path, **limits) -> DatasetRegistry:
    return DatasetRegistry(MemoryJobStore(), tmp_path / "datasets", Limits(**limits))


def job(dataset: dict, inputs: int) -> TrainConfig:
    """A small model on `dataset` (its output width may not fit: the size checks come first)."""
    loss = "mse" if dataset["name"] == "regression" else "cross_entropy"
    return TrainConfig.from_dict({"model": {"input": inputs, "layers": ["linear 2"], "loss": loss},
                                  "dataset": dataset, "optimizer": {"name": "sgd", "lr": 0.1}, "steps": 1})


@pytest.mark.parametrize("dataset, inputs, field, words", [
    ({"name": "teacher", "params": {"d": 100_001, "classes": 2}}, 100_001, "dataset.params.d", "max_features"),
    ({"name": "teacher", "params": {"n": 10**6, "d": 10**5, "classes": 2}}, 10**5, "dataset.params", "n*d"),
    ({"name": "blobs", "params": {"n": 10, "d": 50_000, "classes": 10_000}}, 50_000, "dataset.params", "classes*d"),
    ({"name": "regression", "params": {"n": 10**6, "d": 300, "outputs": 2}}, 300, "dataset.params", "max_values"),
])
def test_oversized_synthetic_sources_are_refused_at_submit_without_data(tmp_path, dataset, inputs, field, words):
    config = job(dataset, inputs)
    tracemalloc.start()
    try:
        with pytest.raises(EngineSpecError) as info:
            registry(tmp_path).check_fits(config)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.field == field and words in info.value.message
    assert peak < 64 << 20  # the model's description at most; no data


@pytest.mark.parametrize("params, field, words", [
    ({"name": "spirals", "params": {"noise": 1e308}}, "dataset.params.noise", "in [0, 1e+06], got 1e+308"),
    ({"name": "blobs", "params": {"spread": 1e9}}, "dataset.params.spread", "in [0, 1e+06]"),
    ({"name": "regression", "params": {"outputs": 10**9}}, "dataset.params.outputs", "100000"),
    ({"name": "csv", "params": {"path": "x", "label": "L" * 10_000}}, "dataset.params.label", "256 characters"),
])
def test_every_synthetic_parameter_is_bounded(params, field, words):
    with pytest.raises(SpecError) as info:
        DatasetSpec.from_dict(params)
    assert info.value.field == field and words in info.value.message and len(str(info.value)) < 300


def test_sizes_within_the_limits_still_pass(tmp_path):
    registry(tmp_path).check_fits(job({"name": "teacher", "params": {"n": 65536, "d": 784, "classes": 2}}, 784))
    with pytest.raises(EngineSpecError, match="output width 2 < 3 classes"):  # the model must still fit the data
        registry(tmp_path).check_fits(job({"name": "teacher", "params": {"n": 100, "d": 8, "classes": 3}}, 8))
