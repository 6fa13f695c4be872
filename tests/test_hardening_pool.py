"""Recovery that keeps trying and restores the job's size, failures counted in validation
passes, and cancellation while the pool waits (issue 10, items 11, 18 and 2). Real Ray,
real SIGKILLs; every finished run is bitwise the in-process loop's."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from dptrain.core.trainer import Trainer
from dptrain.execution.waiting import Cancelled
from dptrain.execution.warm import WARM

from tests.test_core_exactness import config, local_weights, same_bits


@pytest.fixture(scope="module")
def reference():
    return local_weights(config())


@pytest.fixture
def cold(ray_session):
    """No idle warm actors: replacements are new processes, and the CPUs are free."""
    WARM.drain()
    yield ray_session
    WARM.drain()


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def worker_pids() -> set[int]:
    """Processes of this test session's shard-worker actors (Ray titles them by class and
    method; they are children of our Ray's raylet, itself a child of this process). Other
    sessions' workers on the machine are never touched."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if not f.read().startswith(b"ray::ShardWorkerProcess"):
                    continue
            if _parent(_parent(int(entry))) == os.getpid():
                pids.add(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return pids


class StartKiller(threading.Thread):
    """SIGKILLs the first new worker process to appear: a replacement while it starts."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.known, self.killed, self.stop = worker_pids(), [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and not self.killed:
            for pid in worker_pids() - self.known:
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)
                return
            time.sleep(0.002)


def pids(t: Trainer) -> list[int]:
    return [n["pid"] for n in t.backend.nodes()]


def step_and_kill(t: Trainer, slot: int, ray_session, delays: list[float], after_s: float = 0.7):
    """Run one step in a thread; SIGKILL worker `slot` `after_s` into it, while it sleeps
    `delays` (its next calls' injected delays)."""
    victim = pids(t)[slot]
    ray_session.get(t.backend.pool.slots[slot].actor.inject_delay.remote(delays))
    result: dict = {}
    stepper = threading.Thread(target=lambda: result.setdefault("m", t.step()))
    stepper.start()
    time.sleep(after_s)
    os.kill(victim, signal.SIGKILL)
    stepper.join(timeout=120)
    assert "m" in result, "the step did not finish"
    return result["m"], victim


@pytest.mark.parametrize("workers", [1, 3])
def test_a_replacement_killed_while_it_starts_is_started_again(cold, reference, workers):
    """Before: 1 worker failed the job at once ("within the 120s recovery budget", unused);
    3 workers went on with 2 for the rest of the job."""
    t = Trainer(config(workers=workers), backend="ray")
    killer = StartKiller()
    try:
        for _ in range(3):
            t.step()
        killer.known |= set(pids(t))
        killer.start()
        m, victim = step_and_kill(t, workers - 1, cold, [2.0])
        killer.join(timeout=30)
        assert len(killer.killed) == 1  # the replacement, while it started
        assert m.failures == 2 and t.backend.size == workers
        assert not {victim, *killer.killed} & set(pids(t))
        for _ in t.run():
            pass
        assert t.backend.size == workers and t.backend.failures == 2
    finally:
        killer.stop.set()
        t.close()
    assert same_bits(t.theta, reference)


def test_the_pool_returns_to_its_size_once_the_cluster_has_room(cold, reference):
    """A replacement that cannot start in time (its CPU taken) leaves a survivor with the
    chunks; the pool starts it in the background and takes it back once it answers."""

    @cold.remote(num_cpus=1)
    class Blocker:
        def ping(self) -> bool:
            return True

    t = Trainer(config(workers=2, cpus_per_worker=1.0, worker_timeout_s=2.0, recovery_budget_s=6.0),
                backend="ray")
    blocker = None
    try:
        for _ in range(3):
            t.step()
        blocker = Blocker.remote()  # queued: it takes the CPU of the worker killed next
        os.kill(pids(t)[1], signal.SIGKILL)
        cold.get(blocker.ping.remote(), timeout=60)
        m = t.step()
        assert m.failures == 1 and t.backend.size == 1
        cold.kill(blocker)
        blocker = None
        deadline = time.monotonic() + 60
        while t.backend.size < 2 and time.monotonic() < deadline and not t.done:
            t.step()
            time.sleep(0.1)
        assert t.backend.size == 2 and not t.done
        for _ in t.run():
            pass
        assert t.backend.size == 2 and t.backend.failures == 1
    finally:
        if blocker is not None:
            cold.kill(blocker)
        t.close()
    assert same_bits(t.theta, reference)


def test_a_worker_lost_in_a_validation_pass_is_recovered_and_counted(cold, reference):
    t = Trainer(config(workers=2, val_every=5), backend="ray")
    try:
        for _ in range(4):
            t.step()
        m, victim = step_and_kill(t, 1, cold, [0.0, 2.0])  # step 5's training call, then its validation call
        assert m.step == 5 and m.val_loss is not None
        assert m.failures == 1 and victim not in pids(t) and t.backend.size == 2
        for _ in t.run():
            pass
        assert t.backend.failures == 1
    finally:
        t.close()
    assert same_bits(t.theta, reference)


def cancel_after(seconds: float) -> threading.Event:
    flag = threading.Event()
    threading.Timer(seconds, flag.set).start()
    return flag


def test_cancel_while_workers_cannot_start_ends_at_once(cold):
    """Two 1-CPU workers while another actor holds one of the 2 CPUs: they never all start,
    and cancel ends the wait, not the recovery budget."""

    @cold.remote(num_cpus=1)
    class Holder:
        def ping(self) -> bool:
            return True

    holder = Holder.remote()
    cold.get(holder.ping.remote(), timeout=60)
    try:
        started = time.monotonic()
        with pytest.raises(Cancelled):
            Trainer(config(workers=2, cpus_per_worker=1.0), backend="ray", cancel=cancel_after(1.0))
        assert time.monotonic() - started < 4
    finally:
        cold.kill(holder)
    t = Trainer(config(workers=2, cpus_per_worker=1.0, steps=1, epochs=None), backend="ray")  # nothing leaked
    try:
        t.step()
    finally:
        t.close()


def test_cancel_during_a_step_and_during_a_recovery(cold):
    flag = threading.Event()
    t = Trainer(config(workers=2, cpus_per_worker=1.0), backend="ray", cancel=flag)
    try:
        t.step()
        cold.get(t.backend.pool.slots[0].actor.inject_delay.remote([60.0]))
        threading.Timer(1.0, flag.set).start()
        started = time.monotonic()
        with pytest.raises(Cancelled):
            t.step()
        assert time.monotonic() - started < 3
    finally:
        t.close()

    @cold.remote(num_cpus=1)
    class Blocker:
        def ping(self) -> bool:
            return True

    flag = threading.Event()
    t = Trainer(config(workers=1, cpus_per_worker=1.0), backend="ray", cancel=flag)
    blockers = [Blocker.remote()]
    try:
        cold.get(blockers[0].ping.remote(), timeout=60)
        blockers.append(Blocker.remote())  # takes the worker's CPU once it is killed
        t.step()
        os.kill(pids(t)[0], signal.SIGKILL)
        cold.get(blockers[1].ping.remote(), timeout=60)
        threading.Timer(1.0, flag.set).start()
        started = time.monotonic()
        with pytest.raises(Cancelled):
            t.step()  # the replacement waits for a CPU (for up to 120 s without the cancel)
        assert time.monotonic() - started < 3
    finally:
        for b in blockers:
            cold.kill(b)
        t.close()


def test_a_job_the_cluster_can_never_fit_fails_at_once_naming_workers(cold):
    """16 workers of 1 CPU on 2 CPUs used to wait for the whole recovery budget (120 s by
    default), then fail with a Ray timeout."""
    from dptrain.engine import SpecError

    started = time.monotonic()
    with pytest.raises(SpecError, match=r"^workers: 16 workers x 1 CPUs .* need 16 CPUs; the Ray cluster has 2$"):
        Trainer(config(workers=16, cpus_per_worker=1.0, recovery_budget_s=5.0), backend="ray")
    assert time.monotonic() - started < 3


def test_capacity_for_admission(cold):
    from dptrain.execution import capacity

    def settle(check) -> float:
        """Ray's view of free CPUs lags kills and starts a little."""
        deadline = time.monotonic() + 10
        while not check(free := capacity.free_cpus()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return free

    assert capacity.cluster_cpus() == 2.0
    t = Trainer(config(workers=2, steps=1, epochs=None), backend="ray")  # 2 x 0.25 CPU
    t.close()  # its workers stay warm, holding their CPUs
    assert WARM.idle_cpus() == 0.5
    held = settle(lambda free: free <= 1.5)
    assert held <= 1.5
    assert WARM.release_other_sizes(0.25) == 0.0 and WARM.idle_cpus() == 0.5
    assert WARM.release_other_sizes(1.0) == 0.5 and len(WARM) == 0
    assert settle(lambda free: free >= held + 0.5) == held + 0.5
