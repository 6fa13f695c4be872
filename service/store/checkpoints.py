"""Checkpoints of a job's training state as ``.npz`` files: written atomically, verified on load.

Layout: ``<root>/<job_id>/step-<step:09d>.npz`` holding ``theta``, the optimizer state
under ``opt/<name>``, the epoch ledger under ``ledger/<name>`` (what the workers
actually used this epoch; absent in files written before it), the 0-d int64 counters
``step``, ``epoch``, ``position``, ``version``, ``format`` and (format 2) ``sha256``. A checkpoint is written to a
temporary file in the same directory, fsynced, renamed over its final name with
``os.replace`` and the directory fsynced: after a crash either the complete file exists
or none does. Leftover temporary files (names starting with ``.``) are never listed or
loaded, and the next save removes them; this assumes one writer per job, which the
coordinator guarantees.

Verification: the checksum lives inside the file, so it is renamed into place with the
data it covers (a sidecar could be left describing another file by a crash between two
renames). ``sha256`` is the SHA-256 of every other member in name order: its name,
dtype, shape and bytes (:func:`digest`). Loading reads every member through the zip
layer (each member's CRC-32 is checked at its end), checks that each member's header
declares exactly the bytes it holds before allocating anything, then recomputes the
digest. Format-1 files, written before checksums, are verified by the CRCs and the
structural checks alone (required members, 0-d integer counters, a 1-d float ``theta``,
``step`` equal to the file's step). A file failing any check raises
:class:`CheckpointCorrupt` naming the file, job and step; :meth:`CheckpointStore.latest`
skips such files (logging each) and falls back to the newest intact checkpoint.

Retention: the newest checkpoints up to ``keep`` intact ones, plus any marked with
:meth:`mark` (e.g. the final weights, or a step a user asked to keep); corrupt files
never count towards ``keep``, so the only intact checkpoint is never pruned in favour of
newer corrupt ones. Nothing is unpickled: a checkpoint can never execute code.

Storage failures while writing or listing (disk full, I/O error, read-only) raise
:class:`~dptrain.store.base.StoreUnavailable` naming this store. A file that cannot be
read (EIO included) is that file's problem: it counts as corrupt, and ``latest`` falls
back past it.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from dptrain.core.trainer import TrainState

from .base import StoreError, StoreUnavailable, clip
from .disk import fsync_dir, probe_dir, unavailable

log = logging.getLogger(__name__)

FORMAT = 2
"""1: the arrays only; 2: plus ``sha256``. Both load."""
_FORMATS = (1, 2)
_COUNTERS = ("step", "epoch", "position", "version")
_OPT = "opt/"
_LEDGER = "ledger/"  # the epoch ledger (dptrain.core.ledger.EpochLedger.state_dict); absent in older files
_EARLY = "early/"  # early stopping's watch (dptrain.core.early.EarlyStopping.state_dict); absent when off
_SHA = "sha256"
_FILE = re.compile(r"step-(\d{9,})\.npz")
_MARK = re.compile(r"step-(\d{9,})\.mark")
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_CHUNK = 1 << 24  # bytes read at a time
_SHOWN = 10  # corrupt files listed in one error


class CheckpointNotFound(FileNotFoundError):
    """No checkpoint for this job (and step)."""


class CheckpointCorrupt(StoreError, ValueError):
    """Checkpoint files that exist but fail verification (truncated, flipped bits, not a checkpoint).

    ``problems`` lists ``(path, step, reason)`` for each file; the message names them all.
    """

    def __init__(self, job_id: str, problems: list[tuple[Path, int, str]]) -> None:
        self.job_id, self.problems = job_id, list(problems)
        if len(self.problems) == 1:
            path, step, reason = self.problems[0]
            message = f"checkpoint {path} (job {job_id}, step {step}) is corrupt: {reason}"
        else:
            shown = "; ".join(f"{p} (step {s}): {r}" for p, s, r in self.problems[:_SHOWN])
            more = f"; and {len(self.problems) - _SHOWN} more" if len(self.problems) > _SHOWN else ""
            message = f"job {job_id} has no usable checkpoint: all {len(self.problems)} are corrupt: {shown}{more}"
        super().__init__(message)

    def __reduce__(self):
        return type(self), (self.job_id, self.problems)


class _Bad(Exception):
    """Why a file is not an intact checkpoint (internal: becomes a CheckpointCorrupt)."""


class CheckpointStore:
    def __init__(self, root_dir: str | os.PathLike[str], keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = Path(root_dir)
        self.keep = keep
        self.label = f"checkpoint store {self.root}"
        self._intact: dict[Path, tuple[int, int, int]] = {}  # path -> stat key when last verified
        with self._storage(f"create {self.root}"):
            self.root.mkdir(parents=True, exist_ok=True)

    def _dir(self, job_id: str) -> Path:
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):  # the id becomes a path
            raise ValueError(f"invalid job id {clip(job_id)} for a checkpoint path")
        return self.root / job_id

    @staticmethod
    def _name(step: int) -> str:
        return f"step-{step:09d}.npz"

    def _storage(self, action: str):
        return _StorageErrors(self.label, action)

    # --- writing --------------------------------------------------------------------------
    def save(self, job_id: str, state: Any, mark: bool = False, keep: int | None = None) -> Path:
        """Write ``state`` (a TrainState or anything with its fields) atomically; prune old ones,
        keeping the newest ``keep`` intact ones (default: the store's) and the marked."""
        step = int(state.step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        arrays: dict[str, np.ndarray] = {"format": np.array(FORMAT, np.int64), "theta": np.asarray(state.theta)}
        arrays.update({c: np.array(int(getattr(state, c)), np.int64) for c in _COUNTERS})
        arrays.update({_OPT + k: np.asarray(v) for k, v in (state.optimizer or {}).items()})
        arrays.update({_LEDGER + k: np.asarray(v) for k, v in (getattr(state, "ledger", None) or {}).items()})
        arrays.update({_EARLY + k: np.asarray(v) for k, v in (getattr(state, "early", None) or {}).items()})
        for key, a in arrays.items():
            if a.dtype.kind not in "biuf":  # anything else would need pickle to read back
                raise ValueError(f"checkpoint array {key!r} has dtype {a.dtype}; only numeric arrays are stored")
        arrays[_SHA] = np.frombuffer(digest(arrays), np.uint8)
        job_dir = self._dir(job_id)
        final = job_dir / self._name(step)
        with self._storage(f"write {final.name} of job {job_id}"):
            job_dir.mkdir(parents=True, exist_ok=True)
            _write_atomically(final, arrays)
            self._remember_intact(final)
            if mark:
                self.mark(job_id, step)
        self._prune(job_id, job_dir, self.keep if keep is None else keep)
        log.debug("checkpoint %s", final)
        return final

    def mark(self, job_id: str, step: int) -> None:
        """Keep this checkpoint regardless of retention."""
        job_dir = self._dir(job_id)
        if not (job_dir / self._name(step)).exists():
            raise CheckpointNotFound(f"job {job_id}: no checkpoint at step {step}")
        with self._storage(f"mark step {step} of job {job_id}"):
            (job_dir / f"step-{step:09d}.mark").touch()
            fsync_dir(job_dir)

    def delete(self, job_id: str) -> None:
        """Remove all of a job's checkpoints."""
        job_dir = self._dir(job_id)
        for path in list(self._intact):  # a snapshot: other jobs' threads add entries meanwhile
            if path.parent == job_dir:
                self._intact.pop(path, None)
        shutil.rmtree(job_dir, ignore_errors=True)

    def check_writable(self) -> None:
        """Create, write, fsync and remove a small file under the root (cheap: call it for health)."""
        probe_dir(self.root, self.label)

    def writable(self) -> bool:
        try:
            self.check_writable()
        except StoreUnavailable:
            return False
        return True

    # --- reading --------------------------------------------------------------------------
    def _listing(self, job_id: str, pattern: re.Pattern[str]) -> list[int]:
        job_dir = self._dir(job_id)
        with self._storage(f"list {job_dir}"):
            if not job_dir.is_dir():
                return []
            return sorted(int(m.group(1)) for p in job_dir.iterdir() if (m := pattern.fullmatch(p.name)))

    def marked(self, job_id: str) -> list[int]:
        return self._listing(job_id, _MARK)

    def steps(self, job_id: str) -> list[int]:
        """Steps with a checkpoint file, ascending (intact or not: :meth:`load` verifies)."""
        return self._listing(job_id, _FILE)

    def latest(self, job_id: str) -> TrainState | None:
        """The newest intact checkpoint; None if the job has none at all.

        Corrupt newer files are skipped with a warning naming each; if every file is
        corrupt, :class:`CheckpointCorrupt` names them all.
        """
        skipped: list[CheckpointCorrupt] = []
        for step in reversed(self.steps(job_id)):
            try:
                state = self.load(job_id, step)
            except CheckpointNotFound:  # pruned since the listing
                continue
            except CheckpointCorrupt as e:
                log.warning("job %s: skipping checkpoint %s (step %d): %s", job_id, *e.problems[0])
                skipped.append(e)
                continue
            if skipped:
                log.warning("job %s: using checkpoint at step %d, the newest intact one (skipped steps %s)",
                            job_id, step, [e.problems[0][1] for e in skipped])
            return state
        if skipped:
            raise CheckpointCorrupt(job_id, [e.problems[0] for e in skipped])
        return None

    def load(self, job_id: str, step: int) -> TrainState:
        """The checkpoint at ``step``, verified; :class:`CheckpointCorrupt` names the file if it is not intact."""
        path = self._dir(job_id) / self._name(step)
        if not path.exists():
            raise CheckpointNotFound(f"job {job_id}: no checkpoint at step {step}")
        try:
            arrays = _verified(path)
            _check_structure(arrays, step)
        except FileNotFoundError:
            raise CheckpointNotFound(f"job {job_id}: no checkpoint at step {step}") from None
        except _Bad as e:
            self._intact.pop(path, None)
            raise CheckpointCorrupt(job_id, [(path, step, str(e))]) from e
        self._remember_intact(path)
        return _to_state(arrays)

    # --- retention ------------------------------------------------------------------------
    def _remember_intact(self, path: Path) -> None:
        try:
            self._intact[path] = _stat_key(path)
        except OSError:
            self._intact.pop(path, None)

    def _is_intact(self, path: Path, step: int) -> bool:
        """Verified, reading the file only if it changed since it was last verified (or written)."""
        try:
            if self._intact.get(path) == _stat_key(path):
                return True
            _check_structure(_verified(path), step)
        except (OSError, _Bad):
            self._intact.pop(path, None)
            return False
        self._remember_intact(path)
        return True

    def _prune(self, job_id: str, job_dir: Path, keep: int) -> None:
        """Keep the newest files up to ``keep`` intact ones, and the marked; remove the rest.

        A failure here is logged, not raised: the new checkpoint is already durable.
        """
        try:
            steps, marked = self.steps(job_id), set(self.marked(job_id))
            kept, intact = set(), 0
            for step in reversed(steps):
                if intact == keep:
                    break
                kept.add(step)
                intact += self._is_intact(job_dir / self._name(step), step)
            for step in steps:
                if step not in kept and step not in marked:
                    path = job_dir / self._name(step)
                    self._intact.pop(path, None)
                    path.unlink(missing_ok=True)
            for p in job_dir.glob(".step-*.tmp"):  # left by a crash mid-save
                p.unlink(missing_ok=True)
        except (OSError, StoreUnavailable) as e:
            log.warning("%s: could not prune old checkpoints of job %s: %s", self.label, job_id, e)


class _StorageErrors:
    """Re-raise an OSError that means the disk failed as :class:`StoreUnavailable`; others unchanged."""

    def __init__(self, store: str, action: str) -> None:
        self.store, self.action = store, action

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, e: BaseException | None, tb: object) -> None:
        if e is not None and unavailable(e):
            raise StoreUnavailable(self.store, self.action, e) from e


def digest(arrays: dict[str, np.ndarray]) -> bytes:
    """SHA-256 over every member but ``sha256``, in name order: name, dtype, shape, then the bytes."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        if key == _SHA:
            continue
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(memoryview(a.reshape(-1)).cast("B"))  # flat: a 0-d or empty array casts too
    return h.digest()


def _write_atomically(final: Path, arrays: dict[str, np.ndarray]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def _verified(path: Path) -> dict[str, np.ndarray]:
    """Every member of the file, read through its CRC and checked against ``sha256`` if present.

    Raises :class:`_Bad` saying what is wrong; FileNotFoundError passes through.
    """
    try:
        arrays = _read_members(path)
    except FileNotFoundError:
        raise
    except _Bad:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file can fail in any layer (zip, zlib, numpy, the disk)
        raise _Bad(f"unreadable: {type(e).__name__}: {e}") from e
    if _SHA in arrays:
        stored = arrays[_SHA]
        if stored.dtype != np.uint8 or stored.shape != (32,):
            raise _Bad(f"member {_SHA!r} is {stored.dtype}{list(stored.shape)}, not 32 bytes")
        if stored.tobytes() != digest(arrays):
            raise _Bad("sha256 mismatch: the contents changed after it was written")
    return arrays


def _read_members(path: Path) -> dict[str, np.ndarray]:
    if path.stat().st_size == 0:
        raise _Bad("empty file (0 bytes)")
    if not zipfile.is_zipfile(path):
        raise _Bad(f"not a zip archive ({path.stat().st_size} bytes)")
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            key = info.filename.removesuffix(".npy")
            if key == info.filename or key in arrays:
                raise _Bad(f"unexpected member {info.filename[:64]!r}")
            with zf.open(info) as fp:
                arrays[key] = _read_array(fp, info, key)
    return arrays


def _read_array(fp: Any, info: zipfile.ZipInfo, key: str) -> np.ndarray:
    """One ``.npy`` member, its header's size checked against the member's before any allocation."""
    version = np.lib.format.read_magic(fp)
    if version not in ((1, 0), (2, 0)):
        raise _Bad(f"member {key!r}: npy version {version}")
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(fp)
    if dtype.hasobject:
        raise _Bad(f"member {key!r} holds Python objects, which cannot be loaded with allow_pickle=False")
    if dtype.kind not in "biuf":
        raise _Bad(f"member {key!r} has dtype {dtype}; checkpoints hold numeric arrays only")
    nbytes = math.prod(shape) * dtype.itemsize  # exact: a damaged header may claim anything
    if nbytes != info.file_size - fp.tell():
        raise _Bad(f"member {key!r} declares {nbytes} bytes of data but holds {info.file_size - fp.tell()}")
    buf = np.empty(nbytes, np.uint8)
    view, pos = memoryview(buf), 0
    while pos < nbytes:
        chunk = fp.read(min(_CHUNK, nbytes - pos))
        if not chunk:
            raise _Bad(f"member {key!r} is truncated at byte {pos} of {nbytes}")
        view[pos:pos + len(chunk)] = chunk
        pos += len(chunk)
    if fp.read(1):  # also makes the zip layer check the member's CRC-32
        raise _Bad(f"member {key!r} has data past its end")
    return buf.view(dtype).reshape(shape, order="F" if fortran else "C")


def _check_structure(arrays: dict[str, np.ndarray], step: int) -> None:
    """The checks every format passes: what a format-1 file, without a checksum, relies on."""
    missing = sorted({"format", "theta", *_COUNTERS} - set(arrays))
    if missing:
        raise _Bad(f"not a checkpoint: missing {missing}")
    for key in ("format", *_COUNTERS):
        if arrays[key].shape != () or arrays[key].dtype.kind not in "iu":
            raise _Bad(f"member {key!r} is {arrays[key].dtype}{list(arrays[key].shape)}, not an integer")
    fmt = int(arrays["format"])
    if fmt not in _FORMATS:
        raise _Bad(f"checkpoint format {fmt}, expected one of {list(_FORMATS)}")
    if fmt >= 2 and _SHA not in arrays:
        raise _Bad(f"format {fmt} without its {_SHA!r} member")
    theta = arrays["theta"]
    if theta.ndim != 1 or theta.dtype.kind != "f":
        raise _Bad(f"'theta' is {theta.dtype}{list(theta.shape)}, not a float vector")
    if int(arrays["step"]) != step:
        raise _Bad(f"holds step {int(arrays['step'])}, not the {step} of its name")


def _to_state(arrays: dict[str, np.ndarray]) -> TrainState:
    optimizer = {k[len(_OPT):]: v for k, v in arrays.items() if k.startswith(_OPT)}
    ledger = {k[len(_LEDGER):]: v for k, v in arrays.items() if k.startswith(_LEDGER)}
    early = {k[len(_EARLY):]: v for k, v in arrays.items() if k.startswith(_EARLY)}
    return TrainState(theta=arrays["theta"], optimizer=optimizer, ledger=ledger, early=early,
                      **{c: int(arrays[c]) for c in _COUNTERS})


def _stat_key(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns

