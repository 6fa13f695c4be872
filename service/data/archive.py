"""Reading arrays from an .npz without trusting it: sizes are checked before anything is inflated.

``np.load`` sizes each array from the file's own .npy header and inflates whatever the zip
holds, so a 1 MB upload can claim gigabytes (a zip bomb). Here the zip's end record and
directory, then each wanted array's header, are checked against the limits first, and every
member is read through a reader that fails past its declared size (declared sizes can lie).
The arrays themselves are decoded by numpy's own ``read_array`` (never unpickling), so
they are bitwise what ``np.load`` returns.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

__all__ = ["ArchiveError", "read_npz", "MAX_MEMBERS", "MAX_DIRECTORY_BYTES"]

MAX_MEMBERS = 64
"""Members an .npz dataset may hold (np.savez writes one per array; a dataset needs two)."""
MAX_DIRECTORY_BYTES = 1 << 20
"""Bytes of zip directory: bounds what zipfile parses before any of our checks can run."""
NPY_MAGIC = b"\x93NUMPY"
_END = struct.Struct("<4s4H2LH")  # end of central directory record: 22 bytes
_END_SIGNATURE = b"PK\x05\x06"
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # what np.savez and np.savez_compressed write


class ArchiveError(ValueError):
    """The file is not an acceptable .npz; the message says why (the caller names the file)."""


def read_npz(path: Path, keys: Sequence[str], max_bytes: int) -> list[np.ndarray]:
    """The arrays ``keys`` of the archive at ``path``, if together they inflate to at most ``max_bytes``.

    Raises ArchiveError for anything refused, and zipfile.BadZipFile, zlib.error, ValueError,
    EOFError or OSError for a damaged file.
    """
    with open(path, "rb") as fh:
        if fh.read(len(NPY_MAGIC)) == NPY_MAGIC:
            raise ArchiveError("expected an .npz archive with arrays 'X' and 'y', got a single .npy array")
        _check_end_record(fh)
        with zipfile.ZipFile(fh) as zf:
            members = _members(zf, keys)
            total = sum(m.file_size for m in members)
            if total > max_bytes:
                raise ArchiveError(f"arrays {', '.join(keys)} inflate to {total} bytes, over the limit of "
                                   f"{max_bytes} (max_file_bytes)")
            return [_read_array(zf, m, f"array '{k}'") for k, m in zip(keys, members)]


def _check_end_record(fh: IO[bytes]) -> None:
    """Bound the zip directory from its end record, before zipfile parses every entry of it."""
    size = fh.seek(0, os.SEEK_END)
    tail_len = min(size, _END.size + 0xFFFF)  # the record, then a comment of up to 64 KiB
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    at = len(tail) - _END.size  # where the record is when there is no comment
    if at < 0 or tail[at:at + 4] != _END_SIGNATURE:
        at = tail.rfind(_END_SIGNATURE)
    if at < 0 or at + _END.size > len(tail):
        raise ArchiveError("not a readable .npz file (no zip directory found)")
    entries, directory_bytes = _END.unpack_from(tail, at)[4:6]
    if entries > MAX_MEMBERS:
        raise ArchiveError(f"the archive has {entries} members; an .npz dataset may have at most {MAX_MEMBERS}")
    if directory_bytes > MAX_DIRECTORY_BYTES:
        raise ArchiveError(f"the archive's directory is {directory_bytes} bytes, over the limit of "
                           f"{MAX_DIRECTORY_BYTES}")


def _members(zf: zipfile.ZipFile, keys: Sequence[str]) -> list[zipfile.ZipInfo]:
    """The members holding ``keys`` ("X" is member "X.npy", as np.load names them)."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:  # the end record's count may understate the directory
        raise ArchiveError(f"the archive has {len(infos)} members; an .npz dataset may have at most {MAX_MEMBERS}")
    by_key: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        by_key.setdefault(info.filename.removesuffix(".npy"), info)
    for key in keys:
        if key not in by_key:
            found = ", ".join(k[:64] for k in by_key) or "(none)"
            raise ArchiveError(f"missing array '{key}'; found: {found}")
        info = by_key[key]
        if info.flag_bits & 0x1:
            raise ArchiveError(f"array '{key}' is encrypted")
        if info.compress_type not in _METHODS:
            raise ArchiveError(f"array '{key}' uses zip compression method {info.compress_type}; "
                               f"np.savez writes only stored (0) or deflated (8) members")
    return [by_key[k] for k in keys]


def _read_array(zf: zipfile.ZipFile, info: zipfile.ZipInfo, what: str) -> np.ndarray:
    """Check the member's .npy header against its size, then let numpy read it (no pickles)."""
    with zf.open(info) as raw:
        fp = _Capped(raw, info.file_size, what)
        shape, dtype = _header(fp, what)
        need, held = math.prod(shape) * dtype.itemsize, info.file_size - fp.count
        if need > held:
            raise ArchiveError(f"{what} declares shape {shape} ({need} bytes) but holds only {held} bytes")
    with zf.open(info) as raw:
        return np.lib.format.read_array(_Capped(raw, info.file_size, what), allow_pickle=False)


def _header(fp: _Capped, what: str) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(fp)
    if version not in _HEADER_READERS:
        raise ArchiveError(f"{what}: unsupported .npy format version {version[0]}.{version[1]}")
    shape, _, dtype = _HEADER_READERS[version](fp)
    if dtype.hasobject:
        raise ArchiveError(f"{what} is an object array, which is rejected (loading it would unpickle)")
    if dtype.kind not in "fiub":
        raise ArchiveError(f"{what} must be numeric, got dtype {dtype}")
    return shape, dtype


class _Capped:
    """A member's bytes, failing past its declared size (zipfile stops there too; this does not rely on it)."""

    def __init__(self, raw: IO[bytes], limit: int, what: str) -> None:
        self.raw, self.limit, self.what, self.count = raw, limit, what, 0

    def read(self, size: int | None = -1) -> bytes:
        room = self.limit - self.count + 1  # one byte more than allowed reveals a lie
        data = self.raw.read(room if size is None or size < 0 else min(size, room))
        self.count += len(data)
        if self.count > self.limit:
            raise ArchiveError(f"{self.what} inflates past its declared size of {self.limit} bytes")
        return data
