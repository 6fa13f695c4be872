"""Dispatch with deadlines: a step's plans sent to the workers, results taken as they arrive.

One plan per slot, in order. Each result's tree nodes go to the step's `Reduction` as it
arrives (which adds what it can while other workers compute). A call whose worker died
(`WorkerGone`), or not answered within `timeout_s` of being sent, is handed to the
failure policy, which says where to send its plan again; a worker's own error (a bug or
bad data) fails the step. Waits are sliced so the job's cancel flag is seen at once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from dptrain.core.backends import Outcome
from dptrain.core.reduce import Reduction
from dptrain.core.shard import Plan
from dptrain.execution import transports
from dptrain.execution.failures import FailurePolicy
from dptrain.execution.group import Slot, WorkerGroup
from dptrain.execution.transports import Call, WorkerGone
from dptrain.execution.waiting import SLICE_S, Waits


@dataclass
class _Pending:
    p: int  # plan
    s: int  # slot index
    slot: Slot  # the slot as sent to (it may be replaced meanwhile)
    t: float  # sent at


def run(plans: list[Plan], into: Reduction, group: WorkerGroup, policy: FailurePolicy, waits: Waits,
        timeout_s: float) -> list[Outcome]:
    """Plan i on slot i; one Outcome per plan once every plan's result went to `into`."""
    outcomes: dict[int, Outcome] = {}
    pending: dict[Call, _Pending] = {}

    def send(p: int, s: int) -> None:
        slot, t = group.slots[s], time.monotonic()  # before the worker can start
        pending[slot.link.send(plans[p])] = _Pending(p, s, slot, t)

    for p in range(len(plans)):
        send(p, p)
    while pending:
        waits.check()
        first_deadline = min(x.t + timeout_s for x in pending.values())
        for call in transports.wait(list(pending), min(SLICE_S, max(0.0, first_deadline - time.monotonic()))):
            x = pending.pop(call)
            try:
                parts, compute_s = call.take()
            except WorkerGone as e:
                send(x.p, policy.lost(x.s, x.slot, f"died: {e}"))
                continue
            into.add(parts)
            outcomes[x.p] = Outcome(compute_s, time.monotonic() - x.t, x.s, x.slot.info.get("node_id", ""))
        now = time.monotonic()
        late = [call for call, x in pending.items() if now - x.t > timeout_s]
        answered = set(transports.wait(late, 0.0)) if late else set()  # in while recovering another worker
        for call in late:
            if call not in answered:
                x = pending.pop(call)
                send(x.p, policy.lost(x.s, x.slot, f"missed the {timeout_s:g}s deadline"))
    return [outcomes[p] for p in range(len(plans))]
