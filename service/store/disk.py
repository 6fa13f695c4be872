"""What both stores do with the disk: tell a failing disk from a bad request, and probe it.

A full disk, an I/O error or a file system remounted read-only is the storage's fault,
not the caller's: both stores raise :class:`~dptrain.store.base.StoreUnavailable` for it
(naming the store and the cause) so the server can answer UNAVAILABLE and report
NOT_SERVING until :func:`probe_dir` succeeds again.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from .base import StoreUnavailable

UNAVAILABLE_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EROFS, errno.EDQUOT})
"""OSError numbers that mean the storage failed: disk full, I/O error, read-only, over quota."""
PROBE_BYTES = 4096  # one page: enough that the file system must allocate a block


def unavailable(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in UNAVAILABLE_ERRNOS


def probe_dir(directory: str | os.PathLike[str], store: str) -> None:
    """Create, write a page to, fsync and remove a hidden file in ``directory``.

    Cheap (one small file, one fsync) and honest: on a full disk the write or the fsync
    fails even where rewriting existing pages would still succeed. Any OSError counts,
    since it means this store cannot write there now.
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=".probe-", suffix=".tmp", dir=directory)
    except OSError as e:
        raise StoreUnavailable(store, "write", e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise StoreUnavailable(store, "write", e) from e
    finally:
        try:
            Path(tmp).unlink(missing_ok=True)
        except OSError:  # the write's error (or none) is the answer; a stray probe file is harmless
            pass


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename in ``path`` durable (POSIX: the directory entry must be synced too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
