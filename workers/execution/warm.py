"""Warm workers: a job's actors outlive it for a while, so the next job starts at once.

Starting a Ray actor means a new Python process importing numpy, Ray and the engine:
~0.5-0.8 s on a small machine, most of a small job's submit-to-first-step time. A job
that ends cleanly hands its actors back here, emptied (`release`: no data views, no
files), and the next job asking for actors of the same CPU size `load`s itself into
them. Nothing numerical carries over: `load` builds the worker from the job's arguments
exactly as a new actor's constructor does.

An idle actor still holds its CPUs in Ray. So idle actors are killed after
`$DPTRAIN_WARM_S` seconds (default 60; 0 turns warm workers off), and at once when a
job needs actors of another size (their CPUs may be what it needs): the pool does that
itself, and the server's admission can do it before admitting a job (`idle_cpus`,
`release_other_sizes`, `drain`).

The reaper thread runs only while there are idle actors, and never calls Ray once Ray
has shut down (most Ray calls start a new local cluster when none is running): the idle
actors of a Ray session that ended are simply forgotten, since Ray killed them with it.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import ray

log = logging.getLogger(__name__)


def idle_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("DPTRAIN_WARM_S", "60")))
    except ValueError:
        log.warning("ignoring DPTRAIN_WARM_S=%r: not a number", os.environ["DPTRAIN_WARM_S"])
        return 60.0


@dataclass
class _Idle:
    actor: Any
    cpus: float
    since: float
    session: str  # the Ray job (driver session) the handle belongs to


def _session() -> str:
    """This driver's connection to Ray: job ids restart at 1 in a new local cluster, so the
    driver's node id (random per node start) tells clusters apart."""
    if not ray.is_initialized():
        return ""
    ctx = ray.get_runtime_context()
    return f"{ctx.get_job_id()}@{ctx.get_node_id()}"


class WarmActors:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Idle] = []
        self._reaper: threading.Thread | None = None

    def take(self, cpus: float, count: int) -> list[Any]:
        """Up to `count` idle actors of `cpus` CPUs each (the most recently used first)."""
        session = _session()
        with self._lock:
            self._idle = [i for i in self._idle if i.session == session]  # a new Ray session
            fits = [i for i in reversed(self._idle) if i.cpus == cpus][:count]
            for i in fits:
                self._idle.remove(i)
        return [i.actor for i in fits]

    def give(self, cpus: float, actors: list[Any]) -> None:
        """Keep emptied, healthy actors for the next job (or kill them if warm workers are off)."""
        idle_s = idle_seconds()
        if not idle_s:
            kill(actors)
            return
        now, session = time.monotonic(), _session()
        with self._lock:
            self._idle += [_Idle(a, cpus, now, session) for a in actors]
            if self._idle and self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="dptrain-warm", daemon=True)
                self._reaper.start()

    def idle_cpus(self) -> float:
        """CPUs Ray has reserved for idle actors (what `drain` would free)."""
        with self._lock:
            return sum(i.cpus for i in self._idle)

    def release_other_sizes(self, cpus: float) -> float:
        """Kill the idle actors not of `cpus` CPUs each (a job of that size cannot use them;
        their CPUs may be what it needs). Returns the CPUs freed (once Ray sees them die)."""
        return self._release(lambda i: i.cpus != cpus)

    def drain(self) -> float:
        """Kill every idle actor. Returns the CPUs freed (once Ray sees them die)."""
        return self._release(lambda i: True)

    def _release(self, which: Callable[[_Idle], bool]) -> float:
        with self._lock:
            gone = [i for i in self._idle if which(i)]
            self._idle = [i for i in self._idle if not which(i)]
        kill([i.actor for i in gone])
        return sum(i.cpus for i in gone)

    def __len__(self) -> int:
        with self._lock:
            return len(self._idle)

    def _reap(self) -> None:
        """Kill actors idle for longer than `$DPTRAIN_WARM_S`; stop when none is left."""
        while True:
            idle_s = idle_seconds()
            time.sleep(min(max(idle_s, 0.5), 5.0))
            cutoff, session = time.monotonic() - idle_s, _session()
            with self._lock:
                # Actors of a Ray session that ended went with it; calling Ray for them
                # would fail, or with no Ray running, start a new one.
                self._idle = [i for i in self._idle if i.session == session]
                old = [i for i in self._idle if i.since <= cutoff]
                self._idle = [i for i in self._idle if i.since > cutoff]
                done = not self._idle
                if done:
                    self._reaper = None  # `give` starts a new one
            kill([i.actor for i in old])
            if done:
                return


def kill(actors: list[Any]) -> None:
    """ray.kill each, ignoring actors already gone; nothing once Ray has shut down (its
    actors went with it, and ray.kill would start a new local Ray)."""
    for a in actors:
        if not ray.is_initialized():
            return
        try:
            ray.kill(a, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone, or Ray shut down
            pass


WARM = WarmActors()
