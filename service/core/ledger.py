"""Proof that every training example is used exactly once per epoch.

Two cheap checks: workers report, for every chunk, the count and the sum of the example
indices they actually used, which the coordinator compares with the step's plan; and
the coordinator counts uses per example over the epoch. A step only keeps a reference
to its indices (a slice of the epoch's permutation: no copy, no per-step pass); the
epoch's end counts them all at once (`np.bincount`, one pass over the epoch).

The counts so far and the sealed epochs' reports travel in checkpoints (`state_dict`),
so a resumed job's ledger continues from what its workers actually computed rather
than from what the plan says they should have.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    examples: int  # size of the training set
    used_once: int
    unused: int  # > 0 only with drop_last (the dropped tail of the permutation)
    duplicated: int  # always 0, or the coordinator is broken
    complete: bool = True  # False for the epoch in progress

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))  # dataclasses.asdict deep-copies: ~20x slower, and GetJob asks per epoch

    @classmethod
    def of(cls, epoch: int, counts: np.ndarray, complete: bool = True) -> "EpochReport":
        return cls(epoch=epoch, examples=int(counts.size), used_once=int(np.count_nonzero(counts == 1)),
                   unused=int(np.count_nonzero(counts == 0)), duplicated=int(np.count_nonzero(counts > 1)),
                   complete=complete)


_REPORT_FIELDS = ("epoch", "examples", "used_once", "unused", "duplicated")


class EpochLedger:
    def __init__(self, n: int, epoch: int = 0) -> None:
        self.n = n
        self.epoch = epoch
        self.reports: list[EpochReport] = []
        self._used: list[np.ndarray] = []  # the epoch's steps' indices, as given
        self._carried: np.ndarray | None = None  # the epoch's counts restored from a checkpoint

    def record(self, epoch: int, indices: np.ndarray) -> None:
        """Note that `indices` (which the caller does not modify afterwards) were used."""
        if epoch != self.epoch:
            self.close()
            self.epoch = epoch
        if indices.size:
            self._used.append(indices)

    def counts(self) -> np.ndarray:
        """Uses of each example in the current epoch so far."""
        counts = np.zeros(self.n, np.int64) if self._carried is None else self._carried.astype(np.int64)
        if self._used:
            used = np.concatenate(self._used)
            if used.min() < 0 or used.max() >= self.n:
                raise LedgerError(f"epoch {self.epoch}: example indices outside [0, {self.n})")
            counts += np.bincount(used, minlength=self.n)
        return counts

    def close(self) -> EpochReport | None:
        """Seal the current epoch (if anything was recorded) and start counting afresh."""
        if not self._used and self._carried is None:
            return None
        report = EpochReport.of(self.epoch, self.counts())
        self.reports.append(report)
        self._used, self._carried = [], None
        return report

    def in_progress(self) -> EpochReport | None:
        """The current epoch's counts so far, if it has begun."""
        if not self._used and self._carried is None:
            return None
        return EpochReport.of(self.epoch, self.counts(), complete=False)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays for a checkpoint: the current epoch's counts and the sealed epochs' reports."""
        reports = np.array([[getattr(r, f) for f in _REPORT_FIELDS] for r in self.reports], np.int64)
        return {"epoch": np.array(self.epoch, np.int64), "counts": self.counts().astype(np.uint32),
                "reports": reports.reshape(-1, len(_REPORT_FIELDS))}

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        counts = np.asarray(d["counts"])
        if counts.shape != (self.n,):
            raise LedgerError(f"checkpointed ledger counts {counts.shape} do not fit {self.n} examples")
        self.epoch = int(d["epoch"])
        self.reports = [EpochReport(*map(int, row)) for row in np.asarray(d["reports"]).reshape(-1, 5)]
        self._used, self._carried = [], counts.astype(np.int64)


class LedgerError(RuntimeError):
    """Workers used other examples than planned: never expected; the step is not applied."""
