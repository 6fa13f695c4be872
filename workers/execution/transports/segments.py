"""The shared-memory transport's files: names, ownership locks, stale-file cleanup, `Segment`.

Files are plain memory-mapped files in /dev/shm (tmpfs; `$DPTRAIN_SHM_DIR` overrides):

    dptrain-<pid>.<pid namespace>-<token>-<what>

created and unlinked by the coordinator only (`<pid>` is the coordinator's), so one
`unlink_owned` on close removes a job's files and `cleanup_stale` at the next start
removes those of a coordinator that died without closing (SIGKILL, power loss of a
container sharing /dev/shm). While its files are in use the coordinator holds an
exclusive `flock` on `<prefix>-lock`; the kernel drops it when the process dies, however
it dies. So files are stale exactly when their lock can be taken: a reused PID (a
restarted container's server often gets the same one) never protects them, and a live
coordinator's files are never removed, whichever process or PID namespace looks. (Plain
files rather than `multiprocessing.shared_memory`, whose resource tracker unlinks a
segment when any attaching process exits on Python 3.11.)

Each file starts with a 64-byte header: a magic, a random nonce (proves a worker opened
the file the coordinator meant, not a same-named one in another mount namespace) and a
version word (the weights' version, written after the data). Space is reserved with
`posix_fallocate` when the file is created, so a full tmpfs fails there, cleanly (the
job then uses the object store), never with SIGBUS on a later write. Docker's default
/dev/shm is 64 MB: give containers `shm_size` (docs/scaling.md).
"""
from __future__ import annotations

import fcntl
import glob
import mmap
import os
import secrets
import struct

import numpy as np

HEADER = 64
_MAGIC = b"dptrshm1"
_HEAD = struct.Struct("<8sQq")  # magic, nonce, version


def slot_stride(nbytes: int) -> int:
    """Bytes between gradient slots of an output file: each slot starts on a cache line."""
    return -(-nbytes // 64) * 64


def shm_dir() -> str:
    return os.environ.get("DPTRAIN_SHM_DIR", "/dev/shm")


def mode() -> str:
    """`$DPTRAIN_SHM`: "channel" (default: shared memory, step calls over a Unix socket),
    "calls" (shared memory, step calls through Ray) or "off" (0/false/no/off: the object
    store for everyone, as for workers on other nodes)."""
    flag = os.environ.get("DPTRAIN_SHM", "1").strip().lower()
    if flag in ("0", "false", "no", "off") or not os.path.isdir(shm_dir()):
        return "off"
    return "calls" if flag == "calls" else "channel"


def _pid_namespace() -> str:
    try:
        link = os.readlink("/proc/self/ns/pid")  # 'pid:[4026531836]'
        return "".join(c for c in link if c.isdigit()) or "0"
    except OSError:
        return "0"


def owner_tag() -> str:
    """`<pid>.<pid namespace>` of this process: whose files these are."""
    return f"{os.getpid()}.{_pid_namespace()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(directory: str | None = None) -> list[str]:
    """Unlink the dptrain-* files of coordinators that are gone; returns the paths removed.

    A prefix with a lock file is stale when its lock can be taken (held meanwhile, so no
    other cleaner judges it half-removed). One without (files of an older version) is
    judged by the PID in its name: stale if that process of this PID namespace is gone;
    files of another PID namespace are left alone then, their PIDs mean nothing here.
    """
    directory = directory or shm_dir()
    groups: dict[str, list[str]] = {}
    for path in glob.glob(os.path.join(directory, "dptrain-*")):
        parts = os.path.basename(path).split("-", 3)  # dptrain, <pid>.<ns>, <token>, <what>
        if len(parts) == 4:
            groups.setdefault(os.path.join(directory, "-".join(parts[:3])), []).append(path)
    removed = []
    for prefix, paths in groups.items():
        lock = _lock_path(prefix)
        if lock not in paths:
            if _owner_gone(prefix):
                removed += _unlink_all(paths)
            continue
        fd = _try_lock(lock)
        if fd is None:  # held: a live coordinator's files
            continue
        try:
            removed += _unlink_all([p for p in paths if p != lock] + [lock])
        finally:
            os.close(fd)
    for tmp in glob.glob(os.path.join(directory, ".dptrain-*-lock")):  # died before renaming its lock
        fd = _try_lock(tmp)
        if fd is not None:
            removed += _unlink_all([tmp])
            os.close(fd)
    return removed


def _owner_gone(prefix: str) -> bool:
    """The creator named in an unlocked prefix is a dead process of this PID namespace."""
    pid, _, pns = os.path.basename(prefix)[len("dptrain-"):].split("-", 1)[0].partition(".")
    return pid.isdigit() and pns == _pid_namespace() and not _pid_alive(int(pid))


def _lock_path(prefix: str) -> str:
    return f"{prefix}-lock"


def _try_lock(path: str) -> int | None:
    """An fd holding an exclusive flock on `path`, or None if another holds it (or it is gone).

    flock, not fcntl/lockf: its locks belong to the open file, so a cleaner in the owner's
    own process neither takes nor, on close, drops the owner's lock."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def hold_lock(prefix: str) -> int:
    """Lock `prefix`'s files for this process: an fd holding the flock on `<prefix>-lock`.

    The file is locked under a hidden name, then renamed into place, so no cleaner ever
    sees it unlocked. Closing the fd (or dying) releases it."""
    directory, name = os.path.split(prefix)
    tmp = os.path.join(directory, f".{name}-lock")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, _lock_path(prefix))
    except BaseException:
        os.close(fd)
        _unlink(tmp)
        raise
    return fd


def _unlink_all(paths: list[str]) -> list[str]:
    removed = []
    for path in paths:
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


class Segment:
    """One shared file mapped into this process: the header, then `nbytes` of data."""

    def __init__(self, path: str, mm: mmap.mmap, nonce: int, nbytes: int, writable: bool) -> None:
        self.path, self.nonce, self.nbytes, self.writable = path, nonce, nbytes, writable
        self._mm = mm
        self._head = np.frombuffer(mm, dtype=np.int64, count=HEADER // 8)  # word 2: version

    @classmethod
    def create(cls, prefix: str, what: str, nbytes: int) -> "Segment":
        """A new file `<prefix>-<what>` of HEADER + nbytes bytes, space reserved up front.

        Raises OSError if the file cannot be created or tmpfs has no room.
        """
        path = f"{prefix}-{what}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            size = HEADER + max(int(nbytes), 8)
            os.posix_fallocate(fd, 0, size)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            _unlink(path)
            raise
        os.close(fd)
        nonce = secrets.randbits(63)
        mm[:_HEAD.size] = _HEAD.pack(_MAGIC, nonce, -1)
        return cls(path, mm, nonce, nbytes, True)

    @classmethod
    def attach(cls, path: str, nonce: int, writable: bool) -> "Segment":
        """Map an existing file, checking it is the one announced (magic and nonce)."""
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
        finally:
            os.close(fd)
        magic, got, _ = _HEAD.unpack(mm[:_HEAD.size])
        if magic != _MAGIC or got != nonce:
            mm.close()
            raise OSError(f"{path} is not the shared segment announced (magic or nonce differ)")
        return cls(path, mm, nonce, size - HEADER, writable)

    def array(self, dtype: np.dtype, count: int, offset: int = 0) -> np.ndarray:
        """`count` items of `dtype` at byte `offset` of the data (read-only unless writable)."""
        return np.frombuffer(self._mm, dtype=dtype, count=count, offset=HEADER + offset)

    @property
    def version(self) -> int:
        return int(self._head[2])

    def set_version(self, v: int) -> None:
        self._head[2] = v

    def unlink(self) -> None:
        """Remove the file; this process's mapping (and views of it) stay valid."""
        _unlink(self.path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def unlink_owned(prefix: str) -> None:
    """Remove every file a coordinator created under `prefix`."""
    for path in glob.glob(glob.escape(prefix) + "-*"):
        _unlink(path)


def new_prefix() -> str:
    """`<dir>/dptrain-<pid>.<ns>-<token>`: a fresh namespace for one backend's files."""
    return os.path.join(shm_dir(), f"dptrain-{owner_tag()}-{secrets.token_hex(4)}")
