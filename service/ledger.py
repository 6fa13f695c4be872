"""Proof that every training example is used exactly once per epoch.

Two cheap checks: workers report, for every chunk, the count and the sum of the example
indices they actually used, which the coordinator compares with the step's plan; and
the coordinator counts uses per example over the epoch (one byte per example).
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
        self.counts = np.zeros(n, dtype=np.uint8)
        self.epoch = epoch
        self.reports: list[EpochReport] = []

    def record(self, epoch: int, indices: np.ndarray) -> None:
        if epoch != self.epoch:
            self.close()
            self.epoch = epoch
        np.add.at(self.counts, indices, 1)

    def close(self) -> EpochReport | None:
        """Seal the current epoch (if anything was recorded) and start counting afresh."""
        if not self.counts.any():
            return None
        report = EpochReport(epoch=self.epoch, examples=int(self.counts.size),
                             used_once=int(np.count_nonzero(self.counts == 1)),
                             unused=int(np.count_nonzero(self.counts == 0)),
                             duplicated=int(np.count_nonzero(self.counts > 1)))
        self.reports.append(report)
        self.counts[:] = 0
        return report


class LedgerError(RuntimeError):
    """Workers used other examples than planned: never expected; the step is not applied."""
