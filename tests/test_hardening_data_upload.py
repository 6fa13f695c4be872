"""Issue 10, items 5 and 17 (data), over gRPC: uploads that break off, lie about their size
or inflate to gigabytes are never stored; the same bytes read another way are another
dataset; a synthetic source too big to build is refused at submit.

A real server on loopback (its own, with an 8 MiB upload limit) and raw streams through the
generated stub, as a broken or hostile client would send them.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from dptrain.client import Client
from dptrain.rpc import pb, pb_grpc

from .test_hardening_data import write_bomb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def small_server(ray_session, tmp_path_factory):
    from dptrain.server import ServerConfig, serve
    from dptrain.server.config import Limits

    state = tmp_path_factory.mktemp("state")
    srv = serve(ServerConfig(port=0, state_dir=state, limits=Limits(max_upload_bytes=8 << 20)))
    srv.state_dir = state
    yield srv
    srv.stop()


@pytest.fixture
def client(small_server):
    with Client(small_server.address) as c:
        yield c


@pytest.fixture
def stub(client):
    return pb_grpc.TrainerStub(client.channel)


def npz_bytes(tmp_path: Path, n: int = 50) -> bytes:
    rng = np.random.default_rng(n)
    np.savez(tmp_path / "d.npz", X=rng.standard_normal((n, 3)), y=rng.integers(0, 2, n))
    return (tmp_path / "d.npz").read_bytes()


def messages(data: bytes, size_bytes: int = 0, end: int | None = None, chunk: int = 4096):
    yield pb.DatasetChunk(header=pb.DatasetHeader(filename="d.npz", format="npz", size_bytes=size_bytes))
    for i in range(0, len(data), chunk):
        yield pb.DatasetChunk(data=data[i:i + chunk])
    if end is not None:
        yield pb.DatasetChunk(end=pb.DatasetEnd(size_bytes=end))


def files_in(server) -> list[str]:
    return sorted(p.name for p in (server.state_dir / "datasets").iterdir())


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def assert_nothing_stored(client: Client, server) -> None:
    assert client.datasets() == []
    assert wait_for(lambda: files_in(server) == []), files_in(server)


@pytest.mark.parametrize("case, field", [
    ("no end marker", "end"),
    ("end says more", "end.size_bytes"),
    ("end says less", "end.size_bytes"),
    ("header says more", "header.size_bytes"),
    ("header says less", "header.size_bytes"),
])
def test_raw_streams_that_do_not_add_up_are_not_stored(client, stub, small_server, tmp_path, case, field):
    data = npz_bytes(tmp_path)
    stream = {
        "no end marker": messages(data),
        "end says more": messages(data, end=len(data) + 1),
        "end says less": messages(data, end=len(data) - 1),
        "header says more": messages(data, size_bytes=len(data) + 1, end=len(data)),
        "header says less": messages(data, size_bytes=len(data) - 1, end=len(data)),
    }[case]
    with pytest.raises(grpc.RpcError) as info:
        stub.UploadDataset(stream, timeout=30)
    assert info.value.code() == INVALID and info.value.details().startswith(f"{field}:"), info.value.details()
    assert_nothing_stored(client, small_server)


def test_a_cancelled_upload_leaves_nothing(client, stub, small_server, tmp_path):
    data, release = npz_bytes(tmp_path), threading.Event()

    def stalled():
        yield from messages(data[:3000])
        release.wait(30)  # the client stops mid-file

    call = stub.UploadDataset.future(stalled(), timeout=60)
    try:
        assert wait_for(lambda: any(n.startswith(".upload-") for n in files_in(small_server)))
        call.cancel()
    finally:
        release.set()
    assert call.cancelled()
    assert_nothing_stored(client, small_server)
    assert client.healthy()


def test_a_client_killed_mid_upload_leaves_nothing(client, small_server, tmp_path):
    script = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
import grpc
from dptrain.rpc import pb, pb_grpc
def stream():
    yield pb.DatasetChunk(header=pb.DatasetHeader(filename="d.npz", format="npz"))
    yield pb.DatasetChunk(data=b"PK" * 5000)
    time.sleep(600)
pb_grpc.TrainerStub(grpc.insecure_channel({small_server.address!r})).UploadDataset(stream())
"""
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        assert wait_for(lambda: any(n.startswith(".upload-") for n in files_in(small_server)), timeout=30)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert_nothing_stored(client, small_server)


def test_a_zip_bomb_is_refused_and_not_kept(client, small_server, tmp_path):
    bomb = write_bomb(tmp_path / "bomb.npz", rows=1 << 20)  # 72 MiB inflated, 8 MiB allowed
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(grpc.RpcError) as info:
        client.upload_dataset(bomb)
    assert info.value.code() == INVALID
    assert "dataset.params.path: 'bomb.npz': arrays X, y inflate to" in info.value.details()
    assert_nothing_stored(client, small_server)


def test_the_client_uploads_whole_files_and_csv_options_make_the_dataset(client, small_server, tmp_path):
    (tmp_path / "d.csv").write_text("a,b,c\n" + "".join(f"{i % 5},{i},{i % 2}\n" for i in range(30)))
    last = client.upload_dataset(tmp_path / "d.csv")
    first = client.upload_dataset(tmp_path / "d.csv", label="a")
    assert last.id != first.id and (last.n_classes, first.n_classes) == (2, 5)
    assert client.upload_dataset(tmp_path / "d.csv", label="a").id == first.id
    assert sorted(d.id for d in client.datasets()) == sorted([last.id, first.id])
    job = client.submit({"model": {"input": 2, "layers": ["linear 5"], "loss": "cross_entropy"},
                         "dataset": {"name": "csv", "params": {"path": first.id}},
                         "optimizer": {"name": "sgd", "lr": 0.1}, "steps": 2, "cpus_per_worker": 0.25})
    assert client.wait(job.id).state == pb.JOB_STATE_SUCCEEDED
    (tmp_path / "d.npz").write_bytes(npz_bytes(tmp_path))
    with pytest.raises(grpc.RpcError) as info:
        client.upload_dataset(tmp_path / "d.npz", task="regression")
    assert info.value.code() == INVALID and info.value.details().startswith("header.task:")


@pytest.mark.parametrize("params, field", [
    ({"n": 100, "d": 100_001}, "dataset.params.d"),
    ({"n": 10**6, "d": 10**5}, "dataset.params"),
])
def test_sources_too_big_to_build_are_refused_at_submit(client, params, field):
    spec = {"model": {"input": params["d"], "layers": ["linear 2"], "loss": "cross_entropy"},
            "dataset": {"name": "teacher", "params": {**params, "classes": 2}},
            "optimizer": {"name": "sgd", "lr": 0.1}, "steps": 1, "cpus_per_worker": 0.25}
    try:
        with pytest.raises(grpc.RpcError) as info:
            job = client.submit(spec)
    finally:
        if "job" in locals():  # accepted (the old behaviour): do not let it try to build the data
            client.cancel(job.id)
    assert info.value.code() == INVALID and info.value.details().startswith(f"{field}:")


def test_the_cli_passes_every_csv_option(small_server, tmp_path, capsys):
    from dptrain.cli import main

    (tmp_path / "d.csv").write_text("1;2;0.5\n3;4;1.5\n5;6;2.5\n")
    args = ["datasets", "upload", "--address", small_server.address, str(tmp_path / "d.csv"),
            "--no-header", "--label", "-1", "--task", "regression", "--delimiter", ";"]
    assert main(args) == 0
    assert "3 examples, 2 features, regression" in capsys.readouterr().out
