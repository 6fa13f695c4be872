"""Tests for dptrain.data: specs, sources, determinism, splits, file loaders."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from dptrain.data import (
    CLASSIFICATION,
    PARAM_SCHEMAS,
    REGRESSION,
    Dataset,
    DatasetSpec,
    SpecError,
    load_dataset,
    train_val_split,
)
from dptrain.data import loader as loader_module
from hypothesis import given, settings
from hypothesis import strategies as st


def spec(name: str, val_fraction: float = 0.0, seed: int = 0, **params) -> DatasetSpec:
    return DatasetSpec.from_dict({"name": name, "params": params, "val_fraction": val_fraction, "seed": seed})


def load(name: str, **params) -> Dataset:
    train, val = load_dataset(spec(name, **params))
    assert val is None
    return train


def assert_layout(ds: Dataset, dtype=np.float32) -> None:
    assert ds.X.ndim == 2 and ds.X.flags.c_contiguous and ds.X.dtype == dtype
    assert len(ds.y) == ds.n == ds.X.shape[0]
    assert np.isfinite(ds.X).all()
    if ds.task == CLASSIFICATION:
        assert ds.y.dtype == np.int64 and ds.y.ndim == 1
        assert 0 <= ds.y.min() and ds.y.max() < ds.n_classes
    else:
        assert ds.task == REGRESSION and ds.n_classes is None
        assert ds.y.ndim == 2 and ds.y.dtype == dtype


def same(a: Dataset, b: Dataset) -> bool:
    """Bitwise equality of both arrays (dtype, shape and bytes)."""
    return all(p.dtype == q.dtype and p.shape == q.shape and p.tobytes() == q.tobytes()
               for p, q in ((a.X, b.X), (a.y, b.y)))


# ------------------------------------------------------------------ synthetic sources


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_digits(dtype):
    ds, _ = load_dataset(spec("digits"), dtype=dtype)
    assert_layout(ds, dtype)
    assert ds.X.shape == (1797, 64) and ds.n_features == 64
    assert ds.n_classes == ds.n_outputs == 10 and set(np.unique(ds.y)) == set(range(10))
    assert ds.X.min() == 0.0 and ds.X.max() == 1.0


@pytest.mark.parametrize(
    "name, params, shape, n_classes",
    [
        ("teacher", {"n": 500, "d": 20, "classes": 4, "hidden": 8}, (500, 20), 4),
        ("spirals", {"n": 301, "classes": 5, "noise": 0.1}, (301, 2), 5),
        ("blobs", {"n": 90, "d": 7, "classes": 3, "spread": 0.5}, (90, 7), 3),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_synthetic_classification(name, params, shape, n_classes, dtype):
    ds, _ = load_dataset(spec(name, **params), dtype=dtype)
    assert_layout(ds, dtype)
    assert ds.X.shape == shape and ds.task == CLASSIFICATION and ds.n_classes == n_classes
    assert len(np.unique(ds.y)) == n_classes  # every class actually occurs


def test_blobs_and_spirals_are_balanced():
    assert np.bincount(load("blobs", n=30, classes=3).y).tolist() == [10, 10, 10]
    assert np.bincount(load("spirals", n=7, classes=3).y).tolist() == [3, 2, 2]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_regression(dtype):
    ds, _ = load_dataset(spec("regression", n=400, d=5, outputs=3, noise=0.0), dtype=dtype)
    assert_layout(ds, dtype)
    assert ds.X.shape == (400, 5) and ds.y.shape == (400, 3) and ds.n_outputs == 3
    w, *_ = np.linalg.lstsq(ds.X.astype(np.float64), ds.y.astype(np.float64), rcond=None)
    assert np.allclose(ds.X @ w, ds.y, atol=1e-4)  # noise=0 means exactly linear


def test_teacher_large_is_fast():
    start = time.perf_counter()
    ds = load("teacher", n=65536, d=784)
    elapsed = time.perf_counter() - start
    assert ds.X.shape == (65536, 784) and ds.X.dtype == np.float32
    assert abs(float(ds.X.mean())) < 1e-2 and abs(float(ds.X.std()) - 1.0) < 1e-2
    assert elapsed < 5.0  # ~0.6 s on 2 cores; the bound only catches pathological slowdowns


# ------------------------------------------------------------------ determinism


@pytest.mark.parametrize("name, params", [
    ("teacher", {"n": 300, "d": 16}),
    ("spirals", {"n": 200}),
    ("blobs", {"n": 200, "d": 4}),
    ("regression", {"n": 200, "d": 4, "outputs": 2}),
    ("digits", {}),
])
def test_same_spec_gives_bitwise_identical_arrays(name, params):
    a_train, a_val = load_dataset(spec(name, val_fraction=0.25, seed=3, **params))
    b_train, b_val = load_dataset(spec(name, val_fraction=0.25, seed=3, **params))
    assert same(a_train, b_train) and same(a_val, b_val)


def test_seed_changes_data_and_params_seed_overrides_spec_seed():
    base = load("teacher", n=64, d=8, seed=1)
    assert not same(base, load("teacher", n=64, d=8, seed=2))
    fallback, _ = load_dataset(spec("teacher", seed=1, n=64, d=8))  # params.seed defaults to spec.seed
    assert same(base, fallback)


def test_teacher_values_independent_of_n_and_dtype():
    small, big = load("teacher", n=100, d=12), load("teacher", n=5000, d=12)
    assert np.array_equal(small.X, big.X[:100]) and np.array_equal(small.y, big.y[:100])
    wide, _ = load_dataset(spec("teacher", n=100, d=12), dtype=np.float64)
    assert np.array_equal(wide.X, small.X.astype(np.float64)) and np.array_equal(wide.y, small.y)


# ------------------------------------------------------------------ train/validation split


def test_split_sizes_disjoint_and_complete():
    full = load("teacher", n=1000, d=6, seed=5)  # same data seed as the split spec below
    train, val = load_dataset(spec("teacher", val_fraction=0.2, seed=5, n=1000, d=6))
    assert (train.n, val.n) == (800, 200)
    rows = lambda ds: {r.tobytes() for r in ds.X}  # noqa: E731
    assert not rows(train) & rows(val)
    assert rows(train) | rows(val) == rows(full)
    assert val.n_classes == train.n_classes == full.n_classes


def test_split_depends_on_seed_only():
    _, v1 = load_dataset(spec("blobs", val_fraction=0.3, seed=1, n=100))
    _, v2 = load_dataset(spec("blobs", val_fraction=0.3, seed=2, n=100))
    assert v1.n == v2.n == 30 and not same(v1, v2)


def _indexed(n: int) -> Dataset:
    """Row i has X[i, 0] == y[i] == i, so splits can be read back as index sets."""
    X = np.arange(n, dtype=np.float32).reshape(n, 1)
    return Dataset(X, np.arange(n, dtype=np.int64), CLASSIFICATION, max(n, 1), "indexed")


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), frac=st.floats(0.0, 0.99), seed=st.integers(0, 2**32))
def test_split_property(n, frac, seed):
    ds = _indexed(n)
    expected_val = 0 if frac == 0 else max(1, round(n * frac))
    if expected_val >= n:
        with pytest.raises(ValueError, match="no training examples"):
            train_val_split(ds, frac, seed)
        return
    train, val = train_val_split(ds, frac, seed)
    if expected_val == 0:
        assert val is None and train is ds
        return
    assert val.n == expected_val and train.n == n - expected_val
    assert np.all(np.diff(train.y) > 0) and np.all(np.diff(val.y) > 0)  # sorted, no repeats
    assert set(train.y).isdisjoint(val.y) and set(train.y) | set(val.y) == set(range(n))
    assert np.array_equal(train.X[:, 0], train.y.astype(np.float32))


def test_split_leaving_no_training_data_names_val_fraction():
    with pytest.raises(SpecError, match=r"^dataset\.val_fraction: .*no training examples") as info:
        load_dataset(spec("blobs", val_fraction=0.9, n=1))
    assert info.value.field == "dataset.val_fraction"


# ------------------------------------------------------------------ npz


def test_npz_round_trip_classification(tmp_path: Path):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((50, 3)), rng.integers(0, 4, 50).astype(np.int32)
    y[0] = 6  # n_classes = max + 1, even if some classes are absent
    np.savez(tmp_path / "data.npz", X=X, y=y)
    train, _ = load_dataset(spec("npz", path=str(tmp_path / "data.npz")), dtype=np.float64)
    assert_layout(train, np.float64)
    assert np.array_equal(train.X, X) and np.array_equal(train.y, y) and train.n_classes == 7


def test_npz_regression_relative_to_data_dir(tmp_path: Path):
    X, y = np.ones((10, 2), dtype=np.int16), np.linspace(0, 1, 10)
    np.savez_compressed(tmp_path / "reg.npz", X=X, y=y)
    train, val = load_dataset(spec("npz", val_fraction=0.2, path="reg.npz"), data_dir=tmp_path)
    assert_layout(train) and assert_layout(val)
    assert train.task == REGRESSION and train.y.shape == (8, 1) and val.y.shape == (2, 1)
    assert np.array_equal(np.sort(np.concatenate([train.y, val.y])[:, 0]), y.astype(np.float32))


_UNPICKLED: list[int] = []


def _record_unpickle() -> None:
    _UNPICKLED.append(1)


class _Payload:
    def __reduce__(self):
        return (_record_unpickle, ())


def test_npz_object_array_is_rejected_without_unpickling(tmp_path: Path):
    path = tmp_path / "evil.npz"
    np.savez(path, X=np.array([[_Payload()]], dtype=object), y=np.array([0]))
    with pytest.raises(SpecError, match=r"array 'X' is an object array") as info:
        load_dataset(spec("npz", path=str(path)))
    assert info.value.field == "dataset.params.path" and str(path) in str(info.value)
    assert _UNPICKLED == []


@pytest.mark.parametrize("arrays, match", [
    ({"X": np.ones((3, 2))}, r"missing array 'y'; found: X"),
    ({"features": np.ones((3, 2)), "y": np.zeros(3, int)}, r"missing array 'X'; found: features, y"),
    ({"X": np.ones(3), "y": np.zeros(3, int)}, r"array 'X' must be 2-D .* shape \(3,\)"),
    ({"X": np.ones((3, 2)), "y": np.zeros(4, int)}, r"disagree on the number of examples"),
    ({"X": np.ones((3, 2)), "y": np.array([0, -1, 2])}, r"negative class label in row 1"),
    ({"X": np.ones((3, 2)), "y": np.zeros((3, 2), int)}, r"class labels and must be 1-D"),
    ({"X": np.array([[1.0], [np.nan]]), "y": np.zeros(2, int)}, r"'X' has a non-finite value .* row 1"),
    ({"X": np.array([[1e300]]), "y": np.zeros(1, int)}, r"'X' has a non-finite value"),  # float32 overflow
    ({"X": np.array([["a"]]), "y": np.zeros(1, int)}, r"'X' must be numeric, got dtype <U1"),
    ({"X": np.ones((1, 1)), "y": np.array(["cat"])}, r"'y' must be numeric"),
])
def test_npz_content_errors_name_the_array(tmp_path: Path, arrays, match):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(SpecError, match=match) as info:
        load_dataset(spec("npz", path=str(tmp_path / "d.npz")))
    assert info.value.field == "dataset.params.path"


def test_npz_unreadable_files(tmp_path: Path):
    (tmp_path / "text.npz").write_text("hello")
    np.save(tmp_path / "single.npy", np.ones((2, 2)))
    with pytest.raises(SpecError, match="not a readable .npz file"):
        load_dataset(spec("npz", path=str(tmp_path / "text.npz")))
    with pytest.raises(SpecError, match="got a single .npy array"):
        load_dataset(spec("npz", path=str(tmp_path / "single.npy")))
    with pytest.raises(SpecError, match=r"^dataset\.params\.path: file not found: .*missing\.npz"):
        load_dataset(spec("npz", path="missing.npz"), data_dir=tmp_path)


# ------------------------------------------------------------------ csv


def write(tmp_path: Path, text: str, name: str = "d.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_csv_header_label_by_name(tmp_path: Path):
    path = write(tmp_path, "a,label,b\n1.5,0,2\n-3,2, 4e1\n")
    ds = load("csv", path=path, label="label")
    assert_layout(ds)
    assert ds.X.tolist() == [[1.5, 2.0], [-3.0, 40.0]] and ds.y.tolist() == [0, 2] and ds.n_classes == 3


def test_csv_without_header_label_by_index_and_default(tmp_path: Path):
    path = write(tmp_path, "1,0.5,7\n\n2,0.25,8\n")  # blank lines are skipped
    first = load("csv", path=path, label=0)
    assert first.task == CLASSIFICATION and first.y.tolist() == [1, 2]
    assert first.X.tolist() == [[0.5, 7.0], [0.25, 8.0]]
    last = load("csv", path=path)  # default: last column; integer text -> classification
    assert last.y.tolist() == [7, 8] and last.n_classes == 9
    neg = load("csv", path=path, label=-2, header=False)  # float text -> regression
    assert neg.task == REGRESSION and neg.y[:, 0].tolist() == [0.5, 0.25]


def test_csv_forced_header_and_task(tmp_path: Path):
    path = write(tmp_path, "1,2,3\n4,5,6\n7,8,9.0\n")
    ds = load("csv", path=path, header=True, task="classification", delimiter=",")
    assert ds.n == 2 and ds.y.tolist() == [6, 9]
    reg = load("csv", path=path, task="regression")
    assert reg.task == REGRESSION and reg.y.shape == (3, 1) and reg.y.dtype == np.float32


def test_csv_semicolon_delimiter(tmp_path: Path):
    ds = load("csv", path=write(tmp_path, "x;y\n1;0\n2;1\n"), delimiter=";")
    assert ds.X.tolist() == [[1.0], [2.0]] and ds.y.tolist() == [0, 1]


@pytest.mark.parametrize("text, params, match", [
    ("a,b,c\n1,2,0\n1,oops,1\n", {}, r"line 3, column 1 \('b'\): non-numeric value 'oops'"),
    ("1,2,0\n\n1,2,0\n4,,1\n", {}, r"line 4, column 1: non-numeric value ''"),
    ("a,b\n1,nan\n", {}, r"line 2, column 1 \('b'\): non-finite value 'nan'"),
    ("a,b\n1,0\n1,2,3\n", {}, r"line 3: expected 2 columns, found 3"),
    ("a,b\n1,0\n2,-1\n", {}, r"line 3, column 1 \('b'\): class label must be an integer"),
    ("a,b\n1,0.5\n", {"task": "classification"}, r"line 2, column 1 \('b'\): class label"),
    ("a,b\n", {}, r"no data rows"),
    ("", {}, r"file is empty"),
    ("a\n1\n", {}, r"need at least 2 columns"),
])
def test_csv_content_errors_name_line_and_column(tmp_path: Path, text, params, match):
    with pytest.raises(SpecError, match=match) as info:
        load("csv", path=write(tmp_path, text), **params)
    assert info.value.field == "dataset.params.path"


@pytest.mark.parametrize("text, label, match", [
    ("a,b\n1,2\n", "z", r"no column named 'z'; columns: a, b"),
    ("1,2\n3,4\n", "a", r"column name but the file has no header"),
    ("1,2\n3,4\n", 5, r"column index 5 is out of range for 2 columns"),
])
def test_csv_bad_label_names_params_label(tmp_path: Path, text, label, match):
    with pytest.raises(SpecError, match=match) as info:
        load("csv", path=write(tmp_path, text), label=label)
    assert info.value.field == "dataset.params.label"


# ------------------------------------------------------------------ spec validation


def test_spec_error_format_and_fields():
    with pytest.raises(SpecError) as info:
        DatasetSpec.from_dict({"name": "teacher", "params": {"n": -5}})
    err = info.value
    assert str(err) == "dataset.params.n: must be a positive integer, got -5"
    assert (err.field, err.message) == ("dataset.params.n", "must be a positive integer, got -5")
    assert isinstance(err, ValueError)
    copy = pickle.loads(pickle.dumps(err))  # Ray pickles exceptions between processes
    assert (copy.field, copy.message, str(copy)) == (err.field, err.message, str(err))


@pytest.mark.parametrize("d, field, match", [
    ({"name": "cifar10"}, "name",
     r"must be one of 'digits', 'teacher', 'spirals', 'blobs', 'regression', 'npz', 'csv', 'mnist', 'shapes', "
     r"'sequence' or 'text', got 'cifar10'"),
    ({"params": {}}, "name", r"is required"),
    ({"name": "blobs", "shuffle": True}, "shuffle",
     r"unknown field; allowed: name, params, seed, standardize, test_fraction, val_fraction"),
    ({"name": "blobs", "params": {"m": 1}}, "params.m",
     r"unknown field; allowed for 'blobs': classes, d, n, seed, spread"),
    ({"name": "blobs", "params": {"clases": 1}}, "params.clases", r"unknown field \(did you mean 'classes'\?\)"),
    ({"name": "digits", "params": {"n": 1}}, "params.n", r"allowed for 'digits': image$"),
    ({"name": "blobs", "params": [1]}, "params", r"must be a mapping"),
    ({"name": "blobs", "params": {"n": True}}, "params.n", r"positive integer, got True"),
    ({"name": "blobs", "params": {"n": 2.0}}, "params.n", r"positive integer, got 2.0"),
    ({"name": "blobs", "params": {"classes": 1}}, "params.classes", r"integer in \[2, 100000\], got 1"),
    ({"name": "blobs", "params": {"spread": -1}}, "params.spread", r"in \[0, 1e\+06\], got -1"),
    ({"name": "spirals", "params": {"noise": float("nan")}}, "params.noise", r"finite number"),
    ({"name": "teacher", "params": {"hidden": 10**6}}, "params.hidden", r"\[1, 4096\]"),
    ({"name": "teacher", "params": {"seed": -1}}, "params.seed", r"non-negative integer"),
    ({"name": "blobs", "val_fraction": 1.0}, "val_fraction", r"in \[0, 1\), got 1.0"),
    ({"name": "blobs", "val_fraction": "a fifth"}, "val_fraction", r"must be a number, got str 'a fifth'"),
    ({"name": "blobs", "seed": -3}, "seed", r"non-negative integer, got -3"),
    ({"name": "npz"}, "params.path", r"is required for 'npz'"),
    ({"name": "csv", "params": {"path": ""}}, "params.path", r"non-empty path"),
    ({"name": "csv", "params": {"path": "x", "header": "yes"}}, "params.header", r"true, false or 'auto'"),
    ({"name": "csv", "params": {"path": "x", "task": "ranking"}}, "params.task", r"auto, classification, regression"),
    ({"name": "csv", "params": {"path": "x", "label": 1.5}}, "params.label", r"column name or integer index"),
    ({"name": "csv", "params": {"path": "x", "delimiter": ",,"}}, "params.delimiter", r"single character"),
])
def test_validation_errors_name_the_field(d, field, match):
    with pytest.raises(SpecError, match=match) as info:
        DatasetSpec.from_dict(d)
    assert info.value.field == f"dataset.{field}"
    assert str(info.value).startswith(f"dataset.{field}: ")


def test_every_error_is_reported_at_once_and_numeric_strings_are_numbers():
    with pytest.raises(SpecError) as info:
        DatasetSpec.from_dict({"name": "blobs", "params": {"n": 0, "spread": "wide"}, "val_fraction": 2, "shufle": 1})
    assert [f for f, _ in info.value.errors] == ["dataset.params.n", "dataset.params.spread", "dataset.val_fraction",
                                                 "dataset.shufle"]
    assert str(info.value).count("\n") == 3
    # YAML 1.1 (PyYAML) reads `val_fraction: 2e-1` as the string '2e-1'.
    assert DatasetSpec.from_dict({"name": "blobs", "val_fraction": "2e-1"}).val_fraction == 0.2


def test_non_mapping_spec():
    with pytest.raises(SpecError, match=r"^dataset: must be a mapping"):
        DatasetSpec.from_dict(["blobs"])


def test_spec_fills_defaults_and_round_trips():
    s = DatasetSpec.from_dict({"name": "teacher", "seed": 4, "val_fraction": 0.1})
    assert s.params == {"n": 8192, "d": 784, "classes": 10, "hidden": 64, "seed": 4}
    assert DatasetSpec.from_dict(s.to_dict()) == s
    assert DatasetSpec("csv", {"path": Path("a.csv")}).params == {
        "path": "a.csv", "label": None, "header": None, "task": None, "delimiter": ","}


def test_every_source_has_a_loader():
    assert set(PARAM_SCHEMAS) == set(loader_module.LOADERS)


# ------------------------------------------------------------------ limits and dtype


def test_limits_reject_oversized_synthetic_requests_before_generating():
    with pytest.raises(SpecError, match=r"^dataset\.params\.n: must be <= 100 \(max_examples\), got 101"):
        load_dataset(spec("blobs", n=101), max_examples=100)
    with pytest.raises(SpecError, match=r"^dataset\.params\.d: must be <= 5 \(max_features\)"):
        load_dataset(spec("teacher", n=10, d=6), max_features=5)


def test_limits_apply_to_loaded_files_and_module_defaults(tmp_path: Path, monkeypatch):
    np.savez(tmp_path / "d.npz", X=np.ones((20, 3)), y=np.zeros(20, int))
    s = spec("npz", path=str(tmp_path / "d.npz"))
    with pytest.raises(SpecError, match=r"3 features exceeds max_features=2") as info:
        load_dataset(s, max_features=2)
    assert info.value.field == "dataset.params.path"
    monkeypatch.setattr(loader_module, "MAX_EXAMPLES", 10)
    with pytest.raises(SpecError, match=r"20 examples exceeds max_examples=10"):
        load_dataset(s)
    with pytest.raises(SpecError, match=r"^dataset\.name: digits: 1797 examples exceeds"):
        load_dataset(spec("digits"))
    assert load_dataset(s, max_examples=20)[0].n == 20  # argument overrides the module default


@pytest.mark.parametrize("dtype", [np.int64, "float16", None, "bogus"])
def test_unsupported_dtype(dtype):
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        load_dataset(spec("blobs", n=4), dtype=dtype)


def test_dataset_invariants_and_take():
    ds = load("blobs", n=10, d=3)
    part = ds.take(np.array([4, 1]))
    assert part.n == 2 and np.array_equal(part.X, ds.X[[4, 1]]) and part.X.flags.c_contiguous
    with pytest.raises(ValueError, match="C-contiguous"):
        Dataset(ds.X[:, ::2], ds.y, CLASSIFICATION, 3, "x")
    with pytest.raises(ValueError, match="int64 labels"):
        Dataset(ds.X, ds.y.astype(np.int32), CLASSIFICATION, 3, "x")
    with pytest.raises(ValueError, match="rows"):
        Dataset(ds.X, ds.y[:3], CLASSIFICATION, 3, "x")
