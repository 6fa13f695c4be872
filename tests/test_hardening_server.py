"""The server process: shutdown always ends, metrics stay private, TLS mistakes are named.

Each test runs `dptrain serve` as a real subprocess on loopback.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from .test_service_crash import free_port, kill_group, start_server


def _reflection_garbage(port: int, n: int = 5) -> None:
    """Send ServerReflectionInfo requests whose bytes are not a valid message."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                request_serializer=lambda b: b, response_deserializer=lambda b: b)
        for _ in range(n):
            try:
                responses = call(iter([b"\xff\xff\xff\xff\x0f garbage"] * 3), timeout=2)
                for _ in responses:
                    pass
            except grpc.RpcError:
                pass


@pytest.mark.timeout(240)
def test_sigterm_after_undeserializable_reflection_requests_exits(tmp_path):
    port = free_port()
    proc = start_server(tmp_path, port)
    try:
        _reflection_garbage(port)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)  # was: stuck forever in grpc_server.stop(grace).wait()
        assert time.monotonic() - t0 < 60
    finally:
        kill_group(proc)


def _serve_fails(tmp_path, *args: str) -> str:
    cmd = [sys.executable, "-m", "dptrain.cli", "serve", "--port", str(free_port()),
           "--state-dir", str(tmp_path / "state"), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, start_new_session=True)
    assert out.returncode != 0
    return out.stderr


def _make_pair(tmp_path, name: str) -> tuple[str, str]:
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    return str(cert), str(key)


def test_swapped_tls_cert_and_key_say_what_is_wrong(tmp_path):
    cert, key = _make_pair(tmp_path, "a")
    err = _serve_fails(tmp_path, "--tls-cert", key, "--tls-key", cert)
    assert "tls_cert" in err and "swapped" in err and "Failed to bind" not in err


def test_mismatched_tls_key_says_so(tmp_path):
    cert, _ = _make_pair(tmp_path, "a")
    _, other_key = _make_pair(tmp_path, "b")
    err = _serve_fails(tmp_path, "--tls-cert", cert, "--tls-key", other_key)
    assert "does not belong to the certificate" in err


def _listening(pid: int) -> set[tuple[str, int]]:
    import psutil

    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN}


@pytest.mark.timeout(240)
def test_metrics_port_binds_loopback_even_when_grpc_is_public(tmp_path):
    port, metrics = free_port(), free_port()
    cmd = [sys.executable, "-m", "dptrain.cli", "serve", "--host", "0.0.0.0", "--port", str(port),
           "--state-dir", str(tmp_path), "--ray-num-cpus", "2", "--token", "t" * 32,
           "--metrics-port", str(metrics)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not {p for _, p in _listening(proc.pid)} >= {port, metrics}:
            assert proc.poll() is None and time.monotonic() < deadline, "server did not come up"
            time.sleep(0.3)
        addrs = dict((p, ip) for ip, p in _listening(proc.pid))
        assert addrs[metrics] == "127.0.0.1"
        assert addrs[port] in ("0.0.0.0", "::")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        finally:
            kill_group(proc)
