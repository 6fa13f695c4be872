"""The embedded Ray of `dptrain serve` (issue 10, items 12 and 13): it listens on loopback
only, admits no client without its own token, and its processes die with the server.

One real `dptrain serve` for the module (a Ray start costs seconds); the SIGKILL test is last.
"""
from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

ROOT = Path(__file__).resolve().parent.parent
AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


# --- /proc ------------------------------------------------------------------------------------------

def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def argv(pid: int) -> list[str]:
    return [a.decode(errors="replace") for a in _read(f"/proc/{pid}/cmdline").split(b"\0") if a]


def alive(pid: int) -> bool:
    stat = _read(f"/proc/{pid}/stat")
    return bool(stat) and stat.rsplit(b")", 1)[1].split()[0] != b"Z"


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read(f"/proc/{entry}/stat")
            if stat:
                children.setdefault(int(stat.rsplit(b")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _address(hex_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp{,6} print addresses as 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_ip)
    return ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))


def listening(pids: set[int]) -> list[tuple[str, int, int, str]]:
    """(address, port, pid, process) of every TCP socket in LISTEN that one of `pids` holds."""
    owner: dict[str, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[target[8:-1]] = pid
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in _read(table).decode().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in owner:  # 0A: LISTEN
                ip, port = cols[1].split(":")
                pid = owner[cols[9]]
                found.append((str(_address(ip)), int(port, 16), pid, (argv(pid) or ["?"])[0]))
    return found


def is_loopback(ip: str) -> bool:
    a = ipaddress.ip_address(ip)
    mapped = getattr(a, "ipv4_mapped", None)
    return (mapped or a).is_loopback


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout:g}s")


# --- the server ---------------------------------------------------------------------------------------

def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh shell: none of this test session's Ray settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DPTRAIN_"))}
    return {**env, **extra}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("serve")
    out = open(home / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "dptrain.cli", "serve", "--port", "0", "--ray-num-cpus", "1"],
                            cwd=ROOT, env=clean_env(DPTRAIN_HOME=str(home)), stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    log = home / "serve.log"
    try:
        wait_for(lambda: b"listening on" in log.read_bytes() or proc.poll() is not None, 120, "dptrain serve")
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        # The raylet starts its agents (and a worker) after ray.init returns; their ports follow.
        wait_for(lambda: all(any(p[3] == a for p in listening(descendants(proc.pid))) for a in AGENTS),
                 60, "Ray's agents listening")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()


def ray_pids(server: subprocess.Popen) -> dict[int, str]:
    return {pid: " ".join(argv(pid))[:80] for pid in descendants(server.pid)}


def raylet(server: subprocess.Popen) -> int:
    for pid in descendants(server.pid):
        args = argv(pid)
        if args and os.path.basename(args[0]) == "raylet":
            return pid
    raise AssertionError("no raylet under the server")


def gcs_address(server: subprocess.Popen) -> str:
    return next(a.split("=", 1)[1] for a in argv(raylet(server)) if a.startswith("--gcs-address="))


def gcs_client(address: str, **env: str) -> subprocess.CompletedProcess:
    """A Ray client in a fresh process with `env`: lists the GCS's keys (needs its trust)."""
    code = ("import sys, ray; c = ray._raylet.GcsClient(address=sys.argv[1]); "
            "print('KEYS', len(c.internal_kv_keys(b'', None, timeout=10)))")
    return subprocess.run([sys.executable, "-c", code, address], env=clean_env(**env), capture_output=True,
                          text=True, timeout=120)


# --- the tests ------------------------------------------------------------------------------------------

def test_embedded_ray_listens_on_loopback_only(served):
    time.sleep(1.0)  # late binders (metrics exporters) after the agents
    sockets = listening(descendants(served.pid) | {served.pid})
    assert len(sockets) >= 6, sockets  # gRPC, gcs, raylet x2, agents, a worker at least
    public = [s for s in sockets if not is_loopback(s[0])]
    assert not public, f"listening beyond loopback: {public}"


def test_embedded_ray_admits_only_its_own_token(served, tmp_path):
    address = gcs_address(served)
    anonymous = gcs_client(address, HOME=str(tmp_path))
    assert anonymous.returncode != 0 and "KEYS" not in anonymous.stdout
    assert "auth" in (anonymous.stderr + anonymous.stdout).lower(), anonymous.stderr[-2000:]
    # Not the user's shared ~/.ray/auth_token (world-readable when Ray writes it) ...
    shared = Path.home() / ".ray" / "auth_token"
    if shared.is_file():
        guess = gcs_client(address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=shared.read_text().strip())
        assert guess.returncode != 0 and "KEYS" not in guess.stdout, "the shared ~/.ray/auth_token admits"
    # ... but one only the server's processes hold (/proc shows the environment they started with).
    environ = dict(e.split(b"=", 1) for e in _read(f"/proc/{raylet(served)}/environ").split(b"\0") if b"=" in e)
    token = environ.get(b"RAY_AUTH_TOKEN", b"").decode()
    assert token, "the server's Ray runs without a private token"
    assert "KEYS" in gcs_client(address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token).stdout


def test_ray_processes_die_with_the_server(served):
    """SIGKILL: nothing runs the server's cleanup, yet its Ray (~200 MiB of agents that used to
    linger for a minute) is gone within seconds."""
    started = ray_pids(served)
    assert any(name.startswith(AGENTS) for name in started.values()), started
    served.kill()
    served.wait()
    t0 = time.monotonic()
    left = started
    while left and time.monotonic() - t0 < 10.0:
        time.sleep(0.2)
        left = {pid: name for pid, name in left.items() if alive(pid)}
    assert not left, f"still running {time.monotonic() - t0:.0f}s after the server's SIGKILL: {left}"
