"""Starting or joining Ray, the same way for the CLI, the server and the tests.

An embedded instance (no cluster to join) is private to this process:

- it listens on loopback only: the GCS, the raylet and its object manager, the agents and
  every worker bind all interfaces unless the node's address is a loopback one, and Ray
  replaces a loopback node address by the machine's own unless its single-host mode is on
  (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`), which it therefore is while the instance starts;
- it requires a token (`RAY_AUTH_MODE=token`) that only this process and its children
  know, not the shared `~/.ray/auth_token` (which Ray writes with the default umask);
- its processes end within seconds of this one, SIGKILL included. Ray fate-shares the
  GCS and the raylet with us, but the raylet's agents wait 60 s trying to tell the dead
  GCS about the dead raylet; a watchdog kills what is left of the node at once (its
  processes are those writing into the node's session directory).

Joining a cluster (`address`, $DPTRAIN_RAY_ADDRESS or $RAY_ADDRESS) uses the cluster's
settings as they are: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN in the environment, the same
on every node (`dptrain cluster` and deploy/ set them).
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import select
import signal
import subprocess
import sys
from collections.abc import Iterator

log = logging.getLogger(__name__)
SINGLE_HOST_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ensure_ray(address: str | None = None, num_cpus: float | None = None) -> None:
    """Join `address` (or $DPTRAIN_RAY_ADDRESS / $RAY_ADDRESS), else start a private local instance."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("DPTRAIN_RAY_ADDRESS") or os.environ.get("RAY_ADDRESS")
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address:
        log.info("joining Ray cluster at %s", address)
        if os.environ.get("RAY_AUTH_MODE") != "token":
            log.warning("joining Ray at %s without token authentication (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN): "
                        "anyone who can reach the cluster's ports can run code in it", address)
        ray.init(address=address, **kwargs)
        return
    _private_token()
    with _single_host():
        context = ray.init(num_cpus=num_cpus, **kwargs)
    info = context.address_info
    if not _is_loopback(info["node_ip_address"]):
        log.warning("the embedded Ray listens on %s, not on loopback only", info["node_ip_address"])
    _start_watchdog(info["session_dir"])


def _private_token() -> None:
    """Token authentication with a fresh token in our environment (Ray's processes inherit it)."""
    mode = os.environ.setdefault("RAY_AUTH_MODE", "token")
    if mode != "token":
        log.warning("RAY_AUTH_MODE=%s: the embedded Ray accepts any local process, without a token", mode[:32])
        return
    if not os.environ.get("RAY_AUTH_TOKEN"):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    try:  # Ray reads RAY_AUTH_MODE when imported: re-read it, as Ray does when it turns auth on itself
        from ray._raylet import Config
    except ImportError:
        log.warning("this Ray has no token authentication: upgrade to Ray >= 2.52")
        return
    Config.initialize("")


@contextlib.contextmanager
def _single_host() -> Iterator[None]:
    """Ray's single-host mode while the instance starts: its node address stays loopback.

    The processes started meanwhile inherit the variable; ours gets it back afterwards, so
    that joining a real cluster later in this process advertises a reachable address."""
    from ray._private import ray_constants  # read when the node address is resolved, not only at import

    saved_env, saved_flag = os.environ.get(SINGLE_HOST_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_HOST_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(SINGLE_HOST_ENV, None)
        else:
            os.environ[SINGLE_HOST_ENV] = saved_env


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# --- the watchdog: what is left of the embedded node dies with us ---------------------------------

_watchdog_pipe: int | None = None  # the write end, held open while the node may run


def _start_watchdog(session_dir: str) -> None:
    """A small process, in its own session, that reads a pipe we hold: the kernel closes it
    when we die, however we die; then the watchdog kills the node's remaining processes."""
    global _watchdog_pipe
    if not sys.platform.startswith("linux"):
        return
    if _watchdog_pipe is not None:  # a node of an earlier ray.init, stopped since: its watchdog may go
        os.close(_watchdog_pipe)
        _watchdog_pipe = None
    read_end, write_end = os.pipe()  # not inherited by the processes we start later
    try:
        subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), "watch", os.path.realpath(session_dir)],
                         stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    except OSError as e:
        os.close(write_end)
        log.warning("no watchdog for the embedded Ray (%s): its agents outlive a crash by a minute", e)
        return
    finally:
        os.close(read_end)
    _watchdog_pipe = write_end


def node_pids(session_dir: str) -> list[int]:
    """This user's processes writing into one Ray session's directory: each process of the
    node (GCS, raylet, agents, workers, monitors) holds its own log files there open for
    writing. Command lines and environments are no use: the agents and workers overwrite
    both with their titles (`ray::DashboardAgent`). Readers (`tail -f`) are left alone."""
    prefix, mine, found = os.path.join(session_dir, ""), os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != mine and _writes_under(int(entry), prefix):
            found.append(int(entry))
    return found


def _writes_under(pid: int, prefix: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or another user's
        return False
    for fd in fds:
        try:
            if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                flags = next(int(line.split()[1], 8) for line in f if line.startswith("flags:"))
        except (OSError, StopIteration, ValueError):
            continue
        if flags & os.O_ACCMODE != os.O_RDONLY:
            return True
    return False


def _raylet_pid(session_dir: str) -> int | None:
    for pid in node_pids(session_dir):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0")[0]
        except OSError:
            continue
        if os.path.basename(argv0) == b"raylet":
            return pid
    return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _parent_gone(timeout: float) -> bool:
    """EOF on stdin: the last holder of the pipe's write end (our parent) has exited."""
    ready, _, _ = select.select([0], [], [], timeout)
    return bool(ready) and not os.read(0, 4096)


def _watch(session_dir: str, grace_s: float = 5.0) -> None:
    """Until the parent dies, then kill the node's processes. If the raylet exits while the
    parent lives on (ray.shutdown), Ray has stopped the node itself: nothing left to do.
    A raylet killed with its parent can be seen first: the kernel signals it when the
    parent's thread that started it exits, and closes the pipe only when the last thread
    has; `grace_s` covers the gap."""
    raylet = _raylet_pid(session_dir)
    while not _parent_gone(1.0):
        if raylet is not None and not _alive(raylet):
            if not _parent_gone(grace_s):
                return
            break
    for pid in node_pids(session_dir):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


if __name__ == "__main__" and sys.argv[1:2] == ["watch"]:
    _watch(sys.argv[2])
