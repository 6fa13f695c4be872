"""Checkpoints of a job's training state as ``.npz`` files, written atomically.

Layout: ``<root>/<job_id>/step-<step:09d>.npz`` holding ``theta``, the optimizer state
under ``opt/<name>`` and the 0-d int64 counters ``step``, ``epoch``, ``position``,
``version``. A checkpoint is written to a temporary file in the same directory,
fsynced, renamed over its final name with ``os.replace`` and the directory fsynced:
after a crash either the complete file exists or none does. Leftover temporary files
(names starting with ``.``) are never listed or loaded, and the next save removes them;
this assumes one writer per job, which the coordinator guarantees.

Retention: the newest ``keep`` checkpoints, plus any marked with :meth:`mark` (e.g. the
final weights, or a step a user asked to keep). Files are read with
``allow_pickle=False``: a checkpoint can never execute code.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from service.trainer import TrainState

log = logging.getLogger(__name__)

FORMAT = 1
_COUNTERS = ("step", "epoch", "position", "version")
_OPT = "opt/"
_FILE = re.compile(r"^step-(\d{9,})\.npz$")
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class CheckpointNotFound(FileNotFoundError):
    """No checkpoint for this job (and step)."""


class CheckpointStore:
    def __init__(self, root_dir: str | os.PathLike[str], keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = Path(root_dir)
        self.keep = keep
        self.root.mkdir(parents=True, exist_ok=True)

    def _dir(self, job_id: str) -> Path:
        if not isinstance(job_id, str) or not _JOB_ID.match(job_id):  # the id becomes a path
            raise ValueError(f"invalid job id {job_id!r} for a checkpoint path")
        return self.root / job_id

    @staticmethod
    def _name(step: int) -> str:
        return f"step-{step:09d}.npz"

    def save(self, job_id: str, state: Any, mark: bool = False) -> Path:
        """Write ``state`` (a TrainState or anything with its fields) atomically; prune old ones."""
        step = int(state.step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        arrays: dict[str, np.ndarray] = {"format": np.array(FORMAT, np.int64), "theta": np.asarray(state.theta)}
        arrays.update({c: np.array(int(getattr(state, c)), np.int64) for c in _COUNTERS})
        arrays.update({_OPT + k: np.asarray(v) for k, v in (state.optimizer or {}).items()})
        for key, a in arrays.items():
            if a.dtype.kind not in "biuf":  # anything else would need pickle to read back
                raise ValueError(f"checkpoint array {key!r} has dtype {a.dtype}; only numeric arrays are stored")
        job_dir = self._dir(job_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        final = job_dir / self._name(step)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=job_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(job_dir)
        if mark:
            self.mark(job_id, step)
        self._prune(job_id, job_dir)
        log.debug("checkpoint %s", final)
        return final

    def mark(self, job_id: str, step: int) -> None:
        """Keep this checkpoint regardless of retention."""
        job_dir = self._dir(job_id)
        if not (job_dir / self._name(step)).exists():
            raise CheckpointNotFound(f"job {job_id}: no checkpoint at step {step}")
        (job_dir / f"step-{step:09d}.mark").touch()
        _fsync_dir(job_dir)

    def marked(self, job_id: str) -> list[int]:
        job_dir = self._dir(job_id)
        if not job_dir.is_dir():
            return []
        return sorted(int(p.name[5:-5]) for p in job_dir.glob("step-*.mark"))

    def steps(self, job_id: str) -> list[int]:
        """Steps with a complete checkpoint, ascending."""
        job_dir = self._dir(job_id)
        if not job_dir.is_dir():
            return []
        return sorted(int(m.group(1)) for p in job_dir.iterdir() if (m := _FILE.match(p.name)))

    def latest(self, job_id: str) -> TrainState | None:
        steps = self.steps(job_id)
        return self.load(job_id, steps[-1]) if steps else None

    def load(self, job_id: str, step: int) -> TrainState:
        from service.trainer import TrainState  # deferred: it imports Ray, the store must not

        path = self._dir(job_id) / self._name(step)
        if not path.exists():
            raise CheckpointNotFound(f"job {job_id}: no checkpoint at step {step}")
        with np.load(path, allow_pickle=False) as z:
            missing = sorted({"format", "theta", *_COUNTERS} - set(z.files))
            if missing:
                raise ValueError(f"{path}: not a checkpoint, missing {missing}")
            if int(z["format"]) != FORMAT:
                raise ValueError(f"{path}: checkpoint format {int(z['format'])}, expected {FORMAT}")
            counters = {c: int(z[c]) for c in _COUNTERS}
            optimizer = {k[len(_OPT):]: z[k] for k in z.files if k.startswith(_OPT)}
            return TrainState(theta=z["theta"], optimizer=optimizer, **counters)

    def delete(self, job_id: str) -> None:
        """Remove all of a job's checkpoints."""
        shutil.rmtree(self._dir(job_id), ignore_errors=True)

    def _prune(self, job_id: str, job_dir: Path) -> None:
        keep = set(self.steps(job_id)[-self.keep:]) | set(self.marked(job_id))
        for step in self.steps(job_id):
            if step not in keep:
                (job_dir / self._name(step)).unlink(missing_ok=True)
        for p in job_dir.glob(".step-*.tmp"):  # left by a crash mid-save
            p.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (POSIX: the directory entry must be synced too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
