"""Jobs from acceptance to a final state: admit, queue, run, checkpoint, cancel, resume.

Accepted jobs are in the SQLite registry before SubmitJob returns, and a running job
checkpoints every `checkpoint_every` steps (atomically). When the server starts, jobs
that were RUNNING or QUEUED are requeued and continue from their last checkpoint; the
core is deterministic, so their final weights equal an uninterrupted run's, bit for bit.
ResumeJob requeues a FAILED or CANCELLED job the same way.

Admission is by CPUs, all of a job's workers or none (gang admission): a job that needs
more CPUs (`workers * cpus_per_worker`) than the whole cluster has is refused at submit;
one that fits the cluster but not what running jobs leave free waits QUEUED, in
submission order, so jobs running together never fail for lack of CPUs.

Storage can fail (a full disk): a failed write never kills the scheduler; the job's
state in the feed stays truthful, and writes that could not be made are retried until
they succeed (`settle_pending`, called by the server's health loop).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from dptrain.core.config import TrainConfig
from dptrain.core.trainer import Trainer, TrainState
from dptrain.engine import SpecError
from dptrain.execution.waiting import Cancelled
from dptrain.rpc import convert, pb
from dptrain.store.base import (
    TERMINAL,
    AmbiguousId,
    IllegalTransition,
    JobNotFound,
    JobRecord,
    JobState,
    JobStore,
    StoreError,
)
from dptrain.store.checkpoints import CheckpointNotFound, CheckpointStore

from . import metrics as prom
from .datasets import DatasetRegistry
from .feeds import JobFeed, WeightsFeed

log = logging.getLogger(__name__)
RESUMABLE = TERMINAL - {JobState.SUCCEEDED}  # ResumeJob requeues these; SUCCEEDED is final
_CPU_EPS = 1e-6  # Ray keeps resources to 1e-4; sums of fractional CPUs must not round a fit away


def cpus_needed(spec: dict[str, Any]) -> float:
    """CPUs a job holds while it runs: every worker's reservation (the coordinator uses none)."""
    return spec.get("workers", 2) * spec.get("cpus_per_worker", 1.0)


def ray_cluster_cpus() -> float:
    """Total CPUs of the Ray cluster's live nodes."""
    import ray

    return float(ray.cluster_resources().get("CPU", 0.0))


def metrics_event(job_id: str, metrics: dict[str, Any]) -> pb.JobEvent:
    """A step's event, built once and shared by every watcher of the job."""
    return pb.JobEvent(job_id=job_id, metrics=convert.metrics_to_pb(metrics))


class JobCancelled(Exception):
    """The job's cancel flag was seen between steps."""


class MetricsBuffer:
    """Per-step metrics and log lines reach the store in batches: one fsync a second, not
    one a step (or a validation pass).

    Steps after the last checkpoint are re-run on resume, so a crash loses no history
    that cannot be rebuilt; the buffer is flushed before every checkpoint.
    """

    def __init__(self, store: JobStore, job_id: str, every_s: float = 1.0) -> None:
        self.store, self.job_id, self.every_s = store, job_id, every_s
        self.items: list[tuple[int, dict[str, Any]]] = []
        self.lines: list[tuple[float, str, str]] = []
        self.last = time.monotonic()

    def add(self, step: int, metrics: dict[str, Any], lines: list[tuple[str, str]] = ()) -> None:
        self.items.append((step, metrics))
        now = time.time()
        self.lines += [(now, kind, message) for kind, message in lines]
        if time.monotonic() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self.items:
            self.store.append_metrics(self.job_id, self.items)
            self.items = []
        if self.lines:
            self.store.append_events(self.job_id, self.lines)
            self.lines = []
        self.last = time.monotonic()


class JobManager:
    def __init__(self, store: JobStore, checkpoints: CheckpointStore, datasets: DatasetRegistry,
                 max_running: int = 1, weights_ring: int = 32,
                 cluster_cpus: Callable[[], float] = ray_cluster_cpus) -> None:
        self.store, self.checkpoints, self.datasets = store, checkpoints, datasets
        self.max_running = max_running
        self.weights_ring = weights_ring
        self.cluster_cpus = cluster_cpus
        self.lock = threading.RLock()  # re-entered: cancel() asks for the weights feed
        self.wakeup = threading.Condition(self.lock)
        self.running: dict[str, threading.Event] = {}  # job id -> cancel flag
        self.reserved: dict[str, float] = {}  # job id -> CPUs its workers hold
        self.pending: dict[str, tuple[str, str | None]] = {}  # job id -> final state not yet stored
        self.feeds: dict[str, JobFeed] = {}
        self.weights: dict[str, WeightsFeed] = {}
        self.trainers: dict[str, Trainer] = {}
        self.earlier_failures: dict[str, int] = {}  # recovered failures of a job's earlier runs
        self.stopping = False
        self._short_of_cpus: str | None = None  # the queue's head waiting for nodes (logged once)
        self.scheduler = threading.Thread(target=self._schedule, name="dptrain-scheduler", daemon=True)

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        for rec in self.store.unfinished():
            if rec.state == JobState.RUNNING:
                log.info("requeueing job %s interrupted at step %s", rec.id, rec.step)
                self.store.transition(rec.id, JobState.QUEUED)
        self.scheduler.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop running jobs at a step boundary (they stay resumable, QUEUED); True if all
        stopped within `timeout` (a job still running then resumes from an older checkpoint)."""
        with self.lock:
            self.stopping = True
            for flag in self.running.values():
                flag.set()
            self.wakeup.notify_all()
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.running:
            log.warning("jobs %s did not stop within %.0f s", sorted(self.running), timeout)
        return not self.running

    # --- requests ---------------------------------------------------------------------
    def submit(self, name: str, spec: dict[str, Any], request_id: str | None = None) -> JobRecord:
        """Validate and queue a job; with `request_id`, a retry returns the job created first."""
        config = TrainConfig.from_dict(self.datasets.resolve_job(spec))
        self.datasets.check_fits(config)
        self._check_cluster_fits(config)
        if config.init_from is not None:
            config = self._check_init_from(config)
        rec = self.store.create(name, config.to_dict(), request_id=request_id or None)
        prom.JOBS_SUBMITTED.inc()
        log.info("accepted job %s (%s)", rec.id, name or "unnamed")
        self.event(rec.id, "submitted", f"accepted{f' as {name!r}' if name else ''}: {config.workers} workers, "
                                        f"{config.dataset.name} data; waits for CPUs in submission order")
        with self.lock:
            self.wakeup.notify_all()
        return rec

    def _check_init_from(self, config: TrainConfig) -> TrainConfig:
        """The source job exists (a unique prefix names it), has the weights asked for, and
        its model has this one's parameters; returns the config naming it by its full id."""
        ref = config.init_from
        try:
            source_id = self.store.resolve_id(ref.job)
        except (JobNotFound, AmbiguousId) as e:
            raise SpecError("init_from.job", str(e)) from None
        source = TrainConfig.from_stored(self.store.get(source_id).spec)
        steps = self.checkpoints.steps(source_id)
        if ref.step is not None and ref.step not in steps:
            raise SpecError("init_from.step", f"job {source_id} has no checkpoint at step {ref.step}; it has {steps}")
        if not steps:
            raise SpecError("init_from.job", f"job {source_id} has no checkpoint yet (it writes one every "
                                             f"checkpoint_every steps and when it ends)")
        mine, theirs = config.build_model(), source.build_model()
        if [(p.name, p.shape) for p in mine.params] != [(p.name, p.shape) for p in theirs.params]:
            raise SpecError("init_from.job", f"job {source_id}'s model has other parameters: "
                                             f"{[(p.name, p.shape) for p in theirs.params][:6]}...")
        if source.dtype != config.dtype:
            raise SpecError("init_from.job", f"job {source_id} trains in {source.dtype}, this job in {config.dtype}")
        if ref.optimizer and source.optimizer.name != config.optimizer.name:
            raise SpecError("init_from.optimizer", f"job {source_id}'s optimizer is {source.optimizer.name!r}, this "
                                                   f"job's {config.optimizer.name!r}: its state does not carry over")
        d = config.to_dict()
        d["init_from"] = {**d["init_from"], "job": source_id}
        return TrainConfig.from_dict(d)

    def _initial_state(self, job_id: str, config: TrainConfig) -> TrainState:
        """The source job's weights (and optimizer state, if asked) for a job with init_from."""
        ref = config.init_from
        src = (self.checkpoints.load(ref.job, ref.step) if ref.step is not None
               else self.checkpoints.latest(ref.job))
        if src is None:
            raise CheckpointNotFound(f"init_from: job {ref.job} has no intact checkpoint")
        self.event(job_id, "init_from", f"starts from job {ref.job}'s weights at step {src.step}"
                                        + (" with its optimizer state" if ref.optimizer else ""))
        return TrainState(theta=src.theta.copy(), optimizer=dict(src.optimizer) if ref.optimizer else {})

    def _check_cluster_fits(self, config: TrainConfig) -> None:
        need, total = config.workers * config.cpus_per_worker, self.cluster_cpus()
        if need > total + _CPU_EPS:
            field = "job.workers" if config.workers > 1 else "job.cpus_per_worker"
            raise SpecError(field, f"the job needs {need:g} CPUs ({config.workers} workers x "
                                   f"{config.cpus_per_worker:g} cpus_per_worker) but the cluster has "
                                   f"{total:g} CPUs in all")

    def resume(self, job_id: str) -> JobRecord:
        """Requeue a FAILED or CANCELLED job: it continues from its newest intact checkpoint."""
        with self.lock:
            rec = self.store.get(job_id)
            if rec.state not in RESUMABLE or job_id in self.running:
                raise IllegalTransition(f"job {job_id} is {rec.state}; only FAILED or CANCELLED jobs "
                                        f"can be resumed")
            self.pending.pop(job_id, None)
            rec = self.store.transition(job_id, JobState.QUEUED)
            self.feed(job_id).set_state(JobState.QUEUED, "resumed")
            self.wakeup.notify_all()
        log.info("job %s resumed (from its checkpoint at step %s)", job_id, rec.checkpoint_step)
        self.event(job_id, "resumed", f"queued again; continues from its checkpoint at step {rec.checkpoint_step or 0}")
        return rec

    def cancel(self, job_id: str) -> JobRecord:
        with self.lock:
            rec = self.store.get(job_id)
            if rec.state == JobState.QUEUED and job_id not in self.running:
                rec = self.store.transition(job_id, JobState.CANCELLED)
                self.feed(job_id).set_state(JobState.CANCELLED)
                self.weights_feed(job_id).close()  # ends StreamWeights waiting for it to start
                self.weights.pop(job_id, None)
            elif job_id in self.running:
                self.running[job_id].set()
        if rec.state == JobState.CANCELLED:  # it was queued: cancelled at once
            self.event(job_id, "cancelled", "cancelled while queued")
        else:
            self.event(job_id, "cancel", "cancel requested: it stops at the end of the current step")
        return rec

    def feed(self, job_id: str) -> JobFeed:
        """The job's event feed, loaded from the store the first time it is asked for."""
        feed = self.feeds.get(job_id)
        if feed is None:
            rec = self.store.get(job_id)
            history = [(step, metrics_event(job_id, d)) for step, d in self.store.metrics(job_id)]
            feed = self.feeds.setdefault(job_id, JobFeed(rec.state, history))
        return feed

    def weights_feed(self, job_id: str) -> WeightsFeed:
        """The job's weights feed. For a job that has ended it is closed from the start: a
        StreamWeights that read the job as QUEUED just before a cancel must not then wait
        on a new feed for weights that will never come (the cancel closed the old one)."""
        with self.lock:
            feed = self.weights.get(job_id)
            if feed is None:
                feed = WeightsFeed(self.weights_ring)
                if self.store.get(job_id).state in TERMINAL:
                    feed.close()
                else:
                    self.weights[job_id] = feed
            return feed

    # --- scheduling -------------------------------------------------------------------
    def _schedule(self) -> None:
        """Start queued jobs in submission order while they fit; never dies of a store error."""
        while True:
            try:
                with self.lock:
                    rec = self._admit_next()
                    while rec is None and not self.stopping:
                        self.wakeup.wait(timeout=1.0)
                        rec = self._admit_next()
                    if self.stopping:
                        return
                    flag = self.running[rec.id] = threading.Event()
                    self.reserved[rec.id] = cpus_needed(rec.spec)
                threading.Thread(target=self._run, args=(rec, flag), name=f"job-{rec.id}", daemon=True).start()
            except Exception:  # noqa: BLE001 - e.g. the store cannot write: retry, keep scheduling
                log.exception("scheduler: could not start the next job; retrying")
                time.sleep(1.0)

    def _admit_next(self) -> JobRecord | None:
        """The oldest queued job if it may start now (under the lock), marked RUNNING."""
        if self.stopping or len(self.running) >= self.max_running:
            return None
        queued, _ = self.store.list(states=[JobState.QUEUED], page_size=1)
        if not queued:
            return None
        rec, need = queued[0], cpus_needed(queued[0].spec)
        free = self.cluster_cpus() - sum(self.reserved.values())
        if need > free + _CPU_EPS:  # gang admission: all of its workers or none; later jobs wait
            if not self.running and self._short_of_cpus != rec.id:  # the cluster shrank: say so once
                log.warning("job %s needs %g CPUs; the cluster has %g: it waits for nodes", rec.id, need, free)
                self._short_of_cpus = rec.id
            return None
        rec = self.store.transition(rec.id, JobState.RUNNING)
        self.feed(rec.id).set_state(JobState.RUNNING)
        return rec

    # --- running one job ------------------------------------------------------------------
    def _run(self, rec: JobRecord, cancel: threading.Event) -> None:
        job_id, feed, weights = rec.id, self.feed(rec.id), self.weights_feed(rec.id)
        trainer = None
        history = MetricsBuffer(self.store, job_id)
        try:
            config = TrainConfig.from_stored(self.datasets.relocate(rec.spec))
            state = self.checkpoints.latest(job_id)
            if state is not None:
                log.info("job %s resumes from its checkpoint at step %d", job_id, state.step)
            self.event(job_id, "started", "started" + (f" from its checkpoint at step {state.step}" if state else ""))
            if state is None and config.init_from is not None:
                state = self._initial_state(job_id, config)
            self.earlier_failures[job_id] = int(rec.stats.get("failures", 0))
            trainer = Trainer(config, backend="ray", state=state, on_weights=weights.publish, cancel=cancel)
            self.trainers[job_id] = trainer
            self.store.update(job_id, total_steps=trainer.total_steps)
            self.event(job_id, "workers", _workers_line(self.stats(job_id, trainer).get("workers") or []))
            weights.publish(trainer.state.version, trainer.state.step, trainer.theta)
            while not trainer.done:
                if cancel.is_set():
                    raise JobCancelled()
                m = trainer.step()
                d = m.as_dict()
                feed.add_metrics(m.step, metrics_event(job_id, d))
                history.add(m.step, d, self._step_lines(job_id, m, trainer))
                prom.observe_step(m, job_id)
                every = config.checkpoint_every
                if every and m.step % every == 0 and not trainer.done:
                    self._checkpoint(job_id, trainer, history)
            self._checkpoint(job_id, trainer, history, final=True)
            self._finish(job_id, JobState.SUCCEEDED, feed)
        except (JobCancelled, Cancelled):
            self._stopped(job_id, trainer, history, feed)
        except Exception as e:  # the job fails; the server keeps serving
            log.exception("job %s failed", job_id)
            self._quietly(history.flush)
            self._finish(job_id, JobState.FAILED, feed, _describe(e))
        finally:
            if trainer is not None:
                self._quietly(trainer.close)
            self.trainers.pop(job_id, None)
            self.earlier_failures.pop(job_id, None)
            weights.close()
            prom.forget_job(job_id)
            with self.lock:
                self.weights.pop(job_id, None)
                self.running.pop(job_id, None)
                self.reserved.pop(job_id, None)
                self.wakeup.notify_all()

    def _stopped(self, job_id: str, trainer: Trainer | None, history: MetricsBuffer, feed: JobFeed) -> None:
        """Cancelled, or paused by a server shutdown (then left resumable, QUEUED)."""
        step = trainer.state.step if trainer else 0
        try:
            if trainer is not None:
                self._checkpoint(job_id, trainer, history, final=not self.stopping)
        except Exception as e:  # noqa: BLE001 - the job still stops; an older checkpoint remains
            log.error("job %s: no checkpoint at step %d as it stopped: %s", job_id, step, _describe(e))
        if self.stopping:
            log.info("job %s paused for shutdown at step %d", job_id, step)
            self.event(job_id, "paused", f"paused at step {step} by a server shutdown; resumes when it restarts")
            self._quietly(self.store.transition, job_id, JobState.QUEUED)
        else:
            self._finish(job_id, JobState.CANCELLED, feed)

    def _checkpoint(self, job_id: str, trainer: Trainer, history: MetricsBuffer, final: bool = False) -> None:
        history.flush()  # the history is durable up to every checkpoint
        state = trainer.snapshot()
        self.checkpoints.save(job_id, state, mark=final, keep=trainer.config.keep_checkpoints)
        kept = {k: v for k, v in self.stats(job_id, trainer).items() if k != "workers"}
        self.store.update(job_id, checkpoint_step=state.step, stats=kept)
        self.event(job_id, "checkpoint", f"checkpoint at step {state.step}" + (" (final)" if final else ""))

    def _finish(self, job_id: str, state: str, feed: JobFeed, error: str | None = None) -> None:
        """Record a final state; if the store cannot write it now, it is retried later
        (`settle_pending`) and `record` says the truth meanwhile. The feed is told last: a
        client whose WatchJob stream ends on the final state and then asks GetJob must read
        that state, not the one before it."""
        prom.JOBS_FINISHED.labels(state=state).inc()
        log.info("job %s %s%s", job_id, state, f": {error}" if error else "")
        self.event(job_id, state.lower(), state.lower() + (f": {error}" if error else ""))
        try:
            self.store.transition(job_id, state, error=error)
        except StoreError as e:
            log.error("job %s: could not record %s (%s); will retry", job_id, state, e)
            with self.lock:
                self.pending[job_id] = (state, error)
        feed.set_state(state, error or "")

    def event(self, job_id: str, kind: str, message: str) -> None:
        """One line of the job's log (`dptrain logs`), written now. Never fails the job: a
        store that cannot write now loses the line, and the server log has it."""
        try:
            self.store.append_events(job_id, [(time.time(), kind, message)])
        except StoreError as e:
            log.warning("job %s: log line not stored (%s): %s", job_id, e, message)

    def _step_lines(self, job_id: str, m: Any, trainer: Trainer) -> list[tuple[str, str]]:
        """A step's log lines (kind, message): they go with its metrics, in the same batches."""
        lines = []
        if m.failures:
            lines.append(("recovered", f"step {m.step}: {m.failures} worker failure(s) recovered (the step's plans "
                                       f"recomputed; the weights are unchanged by it); "
                                       + _workers_line(self.stats(job_id, trainer).get("workers") or [])))
        for kind, what, loss, acc in (("validation", "validation", m.val_loss, m.val_accuracy),
                                      ("test", "test", m.test_loss, m.test_accuracy)):
            if loss is not None:
                lines.append((kind, f"step {m.step}: {what} loss {loss:.4f}"
                                    + (f", accuracy {acc:.4f}" if acc is not None else "")))
        if trainer.stopped and trainer.done:
            lines.append(("early_stop", trainer.stopped))
        return lines

    def settle_pending(self) -> None:
        """Retry final states the store could not write (e.g. while the disk was full)."""
        with self.lock:
            todo = dict(self.pending)
        for job_id, (state, error) in todo.items():
            try:
                if self.store.get(job_id).state != state:
                    self.store.transition(job_id, state, error=error)
            except StoreError as e:
                log.debug("job %s: %s still not recorded: %s", job_id, state, e)
                continue
            with self.lock:
                if self.pending.get(job_id) == (state, error):
                    del self.pending[job_id]
            log.info("job %s: %s recorded", job_id, state)

    def record(self, job_id: str) -> JobRecord:
        """The job's record, with a final state the store could not write yet."""
        rec = self.store.get(job_id)
        with self.lock:
            pending = self.pending.get(job_id)
        if pending is not None:
            rec.state, rec.error = pending[0], pending[1] or rec.error
        return rec

    @staticmethod
    def _quietly(fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - cleanup after a failure must not hide it
            log.exception("ignored during cleanup: %s", getattr(fn, "__name__", fn))

    def stats(self, job_id: str, trainer: Trainer | None = None) -> dict[str, Any]:
        """Failures (over all of the job's runs) and the epoch ledger: live while it runs,
        else as of its last checkpoint."""
        trainer = trainer or self.trainers.get(job_id)
        if trainer is None:
            return self.store.get(job_id).stats
        stats = trainer.stats()
        stats["failures"] += self.earlier_failures.get(job_id, 0)
        return stats


def _workers_line(workers: list[dict[str, Any]]) -> str:
    if not workers:
        return "workers: none reported"
    return f"{len(workers)} workers: " + ", ".join(
        f"#{w.get('worker', 0)} pid {w.get('pid')} ({w.get('transport') or '?'})" for w in workers)


def _describe(e: BaseException) -> str:
    """A job's error message: the exception's type and text, bounded."""
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 2000 else text[:2000] + "..."
