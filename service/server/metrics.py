"""Prometheus metrics: jobs by state, steps, step time, throughput, worker failures, and
each running job's loss, accuracy, validation figures and step (labelled by job id; a
job's series go when it ends, so their number stays that of the running jobs)."""
from __future__ import annotations

from dptrain.core.telemetry import StepMetrics
from prometheus_client import Counter, Gauge, Histogram

JOBS_SUBMITTED = Counter("dptrain_jobs_submitted_total", "Jobs accepted by SubmitJob")
JOBS_FINISHED = Counter("dptrain_jobs_finished_total", "Jobs that reached a final state", ["state"])
JOBS = Gauge("dptrain_jobs", "Jobs in the registry by state", ["state"])
STEPS = Counter("dptrain_steps_total", "Training steps (updates) applied")
STEP_SECONDS = Histogram("dptrain_step_seconds", "Wall time of one training step",
                         buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30))
SAMPLES_PER_SECOND = Gauge("dptrain_samples_per_second", "Throughput of the latest step")
WORKER_FAILURES = Counter("dptrain_worker_failures_total", "Worker failures recovered within a step")
JOB_GAUGES = {name: Gauge(f"dptrain_job_{name}", text, ["job"]) for name, text in (
    ("step", "Updates applied so far"),
    ("loss", "Training loss of the latest step"),
    ("accuracy", "Training accuracy of the latest step (classification)"),
    ("val_loss", "Validation loss of the latest validation pass"),
    ("val_accuracy", "Validation accuracy of the latest validation pass (classification)"),
)}


def observe_step(m: StepMetrics, job_id: str = "") -> None:
    if job_id:
        for name, gauge in JOB_GAUGES.items():
            value = getattr(m, name)
            if value is not None:
                gauge.labels(job=job_id).set(value)
    STEPS.inc()
    STEP_SECONDS.observe(m.step_s)
    SAMPLES_PER_SECOND.set(m.samples_per_s)
    if m.failures:
        WORKER_FAILURES.inc(m.failures)


def forget_job(job_id: str) -> None:
    """Drop an ended job's series."""
    for gauge in JOB_GAUGES.values():
        try:
            gauge.remove(job_id)
        except KeyError:
            pass
