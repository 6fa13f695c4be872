"""Proof that every training example is used exactly once per epoch.

Two cheap checks: workers report, for every chunk, the count and the sum of the example
indices they actually used, which the coordinator compares with the step's plan; and
the coordinator counts uses per example over the epoch. A step only keeps a reference
to its indices (a slice of the epoch's permutation: no copy, no per-step pass); the
epoch's end counts them all at once (`np.bincount`, one pass over the epoch).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    examples: int  # size of the training set
    used_once: int
    unused: int  # > 0 only with drop_last (the dropped tail of the permutation)
    duplicated: int  # always 0, or the coordinator is broken

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class EpochLedger:
    def __init__(self, n: int, epoch: int = 0) -> None:
        self.n = n
        self.epoch = epoch
        self.reports: list[EpochReport] = []
        self._used: list[np.ndarray] = []  # the epoch's steps' indices, as given

    def record(self, epoch: int, indices: np.ndarray) -> None:
        """Note that `indices` (which the caller does not modify afterwards) were used."""
        if epoch != self.epoch:
            self.close()
            self.epoch = epoch
        if indices.size:
            self._used.append(indices)

    def close(self) -> EpochReport | None:
        """Seal the current epoch (if anything was recorded) and start counting afresh."""
        if not self._used:
            return None
        used = np.concatenate(self._used)
        if used.min() < 0 or used.max() >= self.n:
            raise LedgerError(f"epoch {self.epoch}: example indices outside [0, {self.n})")
        counts = np.bincount(used, minlength=self.n)
        report = EpochReport(epoch=self.epoch, examples=self.n,
                             used_once=int(np.count_nonzero(counts == 1)),
                             unused=int(np.count_nonzero(counts == 0)),
                             duplicated=int(np.count_nonzero(counts > 1)))
        self.reports.append(report)
        self._used = []
        return report


class LedgerError(RuntimeError):
    """Workers used other examples than planned: never expected; the step is not applied."""
