"""A local multi-process Ray cluster on this machine, plus the coordinator joined to it.

    dptrain cluster up --nodes 3      # Ray head + 2 more Ray nodes + `dptrain serve`
    dptrain cluster status
    dptrain cluster down              # stops exactly what `up` started, nothing else

Each node is its own `ray start --block` process (own raylet, own ports), started in its
own session so that `down` can stop it and everything it spawned by process group. The
PIDs live in a state file; `ray stop` is never used, since it kills every Ray process on
the machine.

Ray's token authentication is always on: its nodes listen on every interface of the
machine (Ray keeps a loopback node address only in its single-host mode, which refuses
more nodes), so anyone who can reach the machine could otherwise run code in the cluster.
One random token, in a file only the owner can read (`<state dir>/ray_auth_token`), is set
explicitly (RAY_AUTH_MODE, RAY_AUTH_TOKEN) for every process started here: a joining node
does not read ~/.ray/auth_token.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
READY = "Ray runtime started"


class ClusterError(OSError):
    pass


@dataclass
class Proc:
    name: str
    pid: int
    log: str

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        try:  # a zombie (exited, not yet reaped) is not alive
            return Path(f"/proc/{self.pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False


@dataclass
class ClusterState:
    ray_address: str
    grpc_address: str
    nodes: list[Proc] = field(default_factory=list)
    coordinator: Proc | None = None
    started: float = field(default_factory=time.time)

    @classmethod
    def load(cls, path: Path) -> "ClusterState":
        d = json.loads(path.read_text())
        d.pop("auth_mode", None)  # written by older versions, when Ray's auth could be turned off
        d["nodes"] = [Proc(**n) for n in d["nodes"]]
        d["coordinator"] = Proc(**d["coordinator"]) if d["coordinator"] else None
        return cls(**d)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    def procs(self) -> list[Proc]:
        return self.nodes + ([self.coordinator] if self.coordinator else [])


@dataclass
class ClusterConfig:
    state_dir: Path
    nodes: int = 3
    cpus_per_node: int = 1
    ray_port: int = 6390
    grpc_port: int = 50051
    ready_timeout_s: float = 90.0

    @property
    def state_file(self) -> Path:
        return self.state_dir / "cluster.json"


def ray_env(token: str) -> dict[str, str]:
    """The environment every process of the cluster gets, so they all require the same token."""
    if not token:
        raise ClusterError("Ray's auth token is empty")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    return env


def cluster_token(state_dir: Path) -> str:
    """The cluster's Ray token, made once in a file only the owner can read: created with
    that mode (never readable by others, not even for a moment), and refused if someone
    else's or readable by others (planted in a shared directory, or widened later)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / "ray_auth_token"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise ClusterError(f"{path}: not a file of yours that only you can read (mode "
                               f"{st.st_mode & 0o777:o}); delete it, and a new token is made") from None
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _node_args(cfg: ClusterConfig, index: int) -> list[str]:
    """Distinct ports per node: raylets started side by side would race for the same ones."""
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", str(cfg.cpus_per_node),
              "--disable-usage-stats", "--block"]
    if index == 0:
        return ["start", "--head", "--port", str(cfg.ray_port), "--include-dashboard", "false",
                "--temp-dir", str(cfg.state_dir / "ray"), *common]
    base = cfg.ray_port + 100 * index
    ports = {"--node-manager-port": 1, "--object-manager-port": 2, "--dashboard-agent-listen-port": 3,
             "--dashboard-agent-grpc-port": 4, "--metrics-export-port": 5, "--runtime-env-agent-port": 6,
             "--min-worker-port": 10, "--max-worker-port": 99}
    return ["start", "--address", f"127.0.0.1:{cfg.ray_port}", *common,
            *[x for flag, off in ports.items() for x in (flag, str(base + off))]]


def _spawn(name: str, argv: list[str], env: dict[str, str], logs: Path) -> Proc:
    log_path = logs / f"{name}.log"
    with open(log_path, "wb") as out:
        p = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    return Proc(name, p.pid, str(log_path))


def _wait_for(procs: list[Proc], ready, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(procs)
    while pending:
        for p in list(pending):
            if ready(p):
                pending.remove(p)
            elif not p.alive():
                raise ClusterError(f"{p.name} exited while starting; see {p.log}")
        if pending and time.monotonic() > deadline:
            raise ClusterError(f"{', '.join(p.name for p in pending)} not {what} after {timeout:g}s; see logs")
        time.sleep(0.1)


def _raylet_sockets(cfg: ClusterConfig) -> int:
    """How many nodes have bound their raylet and object-store sockets in the shared session."""
    sockets = cfg.state_dir / "ray" / "session_latest" / "sockets"
    return min(len(list(sockets.glob("raylet*"))), len(list(sockets.glob("plasma_store*"))))


def _ray_ready(p: Proc) -> bool:
    return READY in Path(p.log).read_text(errors="replace")


UNIX_PATH_MAX = 107
"""Longest Unix socket path Linux binds (sun_path is 108 bytes with its NUL)."""
SOCKET_TAIL = len("/ray/session_2026-12-03_07-27-22_399045_14359/sockets/plasma_store")
"""What Ray appends to the state directory for a socket path (at least: a longer pid or a
numbered socket adds a few bytes, so a directory within them of the limit may still fail)."""


def check_socket_paths(state_dir: Path) -> None:
    """Ray's raylets bind Unix sockets under the state directory: a long one fails only in
    node1.log, after a timeout; say so at once, with the fix."""
    longest = len(str(Path(state_dir).resolve()).encode()) + SOCKET_TAIL
    if longest > UNIX_PATH_MAX:
        raise ClusterError(f"the state directory {state_dir} is too long for Ray's Unix sockets (paths of up to "
                           f"{longest} bytes; Linux allows {UNIX_PATH_MAX}): set DPTRAIN_HOME to a shorter one, "
                           f"e.g. DPTRAIN_HOME=/tmp/dptrain dptrain cluster up")


def up(cfg: ClusterConfig) -> ClusterState:
    """Start the head, then the other nodes side by side, then the coordinator."""
    check_socket_paths(cfg.state_dir)
    token = cluster_token(cfg.state_dir)
    if cfg.state_file.exists():
        old = ClusterState.load(cfg.state_file)
        if any(p.alive() for p in old.procs()):
            raise ClusterError(f"a cluster from {cfg.state_file} is running; `dptrain cluster down` first")
    logs = cfg.state_dir / "logs"
    logs.mkdir(exist_ok=True)
    env = ray_env(token)
    state = ClusterState(ray_address=f"127.0.0.1:{cfg.ray_port}", grpc_address=f"127.0.0.1:{cfg.grpc_port}")
    try:
        state.nodes.append(_spawn("node0-head", [_ray_bin(), *_node_args(cfg, 0)], env, logs))
        state.save(cfg.state_file)
        _wait_for(state.nodes, _ray_ready, "ready", cfg.ready_timeout_s)
        for i in range(1, cfg.nodes):
            state.nodes.append(_spawn(f"node{i}", [_ray_bin(), *_node_args(cfg, i)], env, logs))
            state.save(cfg.state_file)
            # Raylets on one host pick their socket names by probing: let node i take its
            # sockets before node i+1 starts; the slow part (registration) still overlaps.
            _wait_for([state.nodes[-1]], lambda p, k=i: _raylet_sockets(cfg) > k or _ray_ready(p),
                      "started", cfg.ready_timeout_s)
        _wait_for(state.nodes, _ray_ready, "ready", cfg.ready_timeout_s)
        serve = [sys.executable, "-m", "dptrain.cli", "serve", "--port", str(cfg.grpc_port),
                 "--ray-address", state.ray_address, "--state-dir", str(cfg.state_dir / "coordinator")]
        state.coordinator = _spawn("coordinator", serve, env, logs)
        state.save(cfg.state_file)
        _wait_for([state.coordinator], lambda p: _serving(state.grpc_address), "serving", cfg.ready_timeout_s)
    except BaseException:
        down(cfg.state_file)
        raise
    return state


def _serving(address: str) -> bool:
    from dptrain.client import Client

    with Client(address) as c:
        return c.healthy(timeout=1.0)


def down(state_file: Path, timeout: float = 20.0) -> list[str]:
    """Stop the coordinator (it checkpoints running jobs), then the nodes, each with
    everything in its process group. Nodes get a short grace: draining a node whose whole
    cluster is going away serves nothing."""
    if not state_file.exists():
        return []
    state = ClusterState.load(state_file)
    stopped = []
    if state.coordinator:
        _stop_group(state.coordinator, timeout)
        stopped.append(state.coordinator.name)
    for p in reversed(state.nodes):  # head last
        _stop_group(p, 3.0)
        stopped.append(p.name)
    state_file.unlink()
    return stopped


def _stop_group(p: Proc, timeout: float) -> None:
    try:
        pgid = os.getpgid(p.pid)
    except ProcessLookupError:
        pgid = p.pid  # the leader is gone; its group may still hold children
    if pgid != p.pid:
        return  # the PID was reused by an unrelated process: never signal it
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def status(state_file: Path) -> ClusterState | None:
    return ClusterState.load(state_file) if state_file.exists() else None
