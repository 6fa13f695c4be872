"""Jobs from acceptance to a final state: queue, run, checkpoint, cancel, resume.

Accepted jobs are in the SQLite registry before SubmitJob returns, and a running job
checkpoints every `checkpoint_every` steps (atomically). When the server starts, jobs
that were RUNNING or QUEUED are requeued and continue from their last checkpoint; the
core is deterministic, so their final weights equal an uninterrupted run's, bit for bit.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from service.config import TrainConfig
from service.rpc import convert, pb
from service.store.base import JobRecord, JobStore
from service.store.checkpoints import CheckpointStore
from service.trainer import Trainer

from . import metrics as prom
from .datasets import DatasetRegistry
from .feeds import JobFeed, WeightsFeed

log = logging.getLogger(__name__)
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def metrics_event(metrics: dict[str, Any]) -> pb.JobEvent:
    return pb.JobEvent(metrics=convert.metrics_to_pb(metrics))


class JobCancelled(Exception):
    pass


class MetricsBuffer:
    """Per-step metrics reach the store in batches: one fsync a second, not one a step.

    Steps after the last checkpoint are re-run on resume, so a crash loses no history
    that cannot be rebuilt; the buffer is flushed before every checkpoint.
    """

    def __init__(self, store: JobStore, job_id: str, every_s: float = 1.0) -> None:
        self.store, self.job_id, self.every_s = store, job_id, every_s
        self.items: list[tuple[int, dict[str, Any]]] = []
        self.last = time.monotonic()

    def add(self, step: int, metrics: dict[str, Any]) -> None:
        self.items.append((step, metrics))
        if time.monotonic() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self.items:
            self.store.append_metrics(self.job_id, self.items)
            self.items = []
        self.last = time.monotonic()


class JobManager:
    def __init__(self, store: JobStore, checkpoints: CheckpointStore, datasets: DatasetRegistry,
                 max_running: int = 1, weights_ring: int = 32) -> None:
        self.store, self.checkpoints, self.datasets = store, checkpoints, datasets
        self.max_running = max_running
        self.weights_ring = weights_ring
        self.lock = threading.Lock()
        self.wakeup = threading.Condition(self.lock)
        self.running: dict[str, threading.Event] = {}  # job id -> cancel flag
        self.feeds: dict[str, JobFeed] = {}
        self.weights: dict[str, WeightsFeed] = {}
        self.trainers: dict[str, Trainer] = {}
        self.stopping = False
        self.scheduler = threading.Thread(target=self._schedule, name="dptrain-scheduler", daemon=True)

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        for rec in self.store.unfinished():
            if rec.state == "RUNNING":
                log.info("requeueing job %s interrupted at step %s", rec.id, rec.step)
                self.store.transition(rec.id, "QUEUED")
        self.scheduler.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop running jobs at a step boundary (they stay resumable), then return."""
        with self.lock:
            self.stopping = True
            for flag in self.running.values():
                flag.set()
            self.wakeup.notify_all()
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            time.sleep(0.05)

    # --- requests ---------------------------------------------------------------------
    def submit(self, name: str, spec: dict[str, Any]) -> JobRecord:
        config = TrainConfig.from_dict(self.datasets.resolve_job(spec))
        self.datasets.check_fits(config)
        rec = self.store.create(name, config.to_dict())
        prom.JOBS_SUBMITTED.inc()
        log.info("accepted job %s (%s)", rec.id, name or "unnamed")
        with self.lock:
            self.wakeup.notify_all()
        return rec

    def cancel(self, job_id: str) -> JobRecord:
        with self.lock:
            rec = self.store.get(job_id)
            if rec.state == "QUEUED":
                rec = self.store.transition(job_id, "CANCELLED")
                self.feed(job_id).set_state("CANCELLED")
            elif rec.state == "RUNNING" and job_id in self.running:
                self.running[job_id].set()
            return rec

    def feed(self, job_id: str) -> JobFeed:
        """The job's event feed, loaded from the store the first time it is asked for."""
        feed = self.feeds.get(job_id)
        if feed is None:
            rec = self.store.get(job_id)
            history = [(step, metrics_event(d)) for step, d in self.store.metrics(job_id)]
            feed = self.feeds.setdefault(job_id, JobFeed(rec.state, history))
        return feed

    def weights_feed(self, job_id: str) -> WeightsFeed:
        return self.weights.setdefault(job_id, WeightsFeed(self.weights_ring))

    # --- scheduling -------------------------------------------------------------------
    def _schedule(self) -> None:
        while True:
            with self.lock:
                while not self.stopping and (len(self.running) >= self.max_running or not self._next()):
                    self.wakeup.wait(timeout=1.0)
                if self.stopping:
                    return
                rec = self._next()
                flag = self.running[rec.id] = threading.Event()
                rec = self.store.transition(rec.id, "RUNNING")
                self.feed(rec.id).set_state("RUNNING")
            threading.Thread(target=self._run, args=(rec, flag), name=f"job-{rec.id}", daemon=True).start()

    def _next(self) -> JobRecord | None:
        queued, _ = self.store.list(states=["QUEUED"], page_size=1)
        return queued[0] if queued else None

    # --- running one job ------------------------------------------------------------------
    def _run(self, rec: JobRecord, cancel: threading.Event) -> None:
        job_id, feed, weights = rec.id, self.feed(rec.id), self.weights_feed(rec.id)
        trainer = None
        history = MetricsBuffer(self.store, job_id)
        try:
            config = TrainConfig.from_dict(rec.spec)
            state = self.checkpoints.latest(job_id)
            if state is not None:
                log.info("job %s resumes from its checkpoint at step %d", job_id, state.step)
            trainer = Trainer(config, backend="ray", state=state, on_weights=weights.publish)
            self.trainers[job_id] = trainer
            self.store.update(job_id, total_steps=trainer.total_steps)
            weights.publish(trainer.state.version, trainer.state.step, trainer.theta)
            while not trainer.done:
                if cancel.is_set():
                    raise JobCancelled()
                m = trainer.step()
                d = m.as_dict()
                feed.add_metrics(m.step, metrics_event(d))
                history.add(m.step, d)
                prom.observe_step(m)
                every = config.checkpoint_every
                if every and m.step % every == 0 and not trainer.done:
                    self._checkpoint(job_id, trainer, history)
            self._checkpoint(job_id, trainer, history, final=True)
            self._finish(job_id, "SUCCEEDED", feed)
        except JobCancelled:
            if self.stopping:  # server shutdown: leave it resumable
                log.info("job %s paused for shutdown at step %d", job_id, trainer.state.step if trainer else 0)
                if trainer is not None:
                    self._checkpoint(job_id, trainer, history)
                self.store.transition(job_id, "QUEUED")
            else:
                if trainer is not None:
                    self._checkpoint(job_id, trainer, history, final=True)
                self._finish(job_id, "CANCELLED", feed)
        except Exception as e:  # the job fails; the server keeps serving
            log.exception("job %s failed", job_id)
            history.flush()
            self._finish(job_id, "FAILED", feed, f"{type(e).__name__}: {e}")
        finally:
            if trainer is not None:
                trainer.close()
            self.trainers.pop(job_id, None)
            weights.close()
            self.weights.pop(job_id, None)
            with self.lock:
                self.running.pop(job_id, None)
                self.wakeup.notify_all()

    def _checkpoint(self, job_id: str, trainer: Trainer, history: MetricsBuffer, final: bool = False) -> None:
        history.flush()  # the history is durable up to every checkpoint
        state = trainer.snapshot()
        self.checkpoints.save(job_id, state, mark=final)
        self.store.update(job_id, checkpoint_step=state.step)

    def _finish(self, job_id: str, state: str, feed: JobFeed, error: str | None = None) -> None:
        self.store.transition(job_id, state, error=error)
        feed.set_state(state, error or "")
        prom.JOBS_FINISHED.labels(state=state).inc()
        log.info("job %s %s%s", job_id, state, f": {error}" if error else "")

    def stats(self, job_id: str) -> dict[str, Any] | None:
        trainer = self.trainers.get(job_id)
        return trainer.stats() if trainer else None
