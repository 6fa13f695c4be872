"""Live progress of a job in the terminal (rich), and its final summary table."""
from __future__ import annotations

import datetime
from typing import Iterator

from dptrain.rpc import convert, pb
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

console = Console(soft_wrap=True)  # ids and paths stay on one line, for copying and scripts


def follow(client, job_id: str, from_step: int = 0) -> pb.Job:
    """Render WatchJob events as a progress bar until the job ends; returns the final Job.

    The bar is short (it stays visible in 80 columns); its line shows the epoch's running
    means of loss and accuracy (one batch's accuracy says little) and the latest validation."""
    job = client.get(job_id)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(bar_width=12), TextColumn("{task.fields[steps]}"),
               TextColumn("{task.fields[info]}"), TextColumn("eta"), TimeRemainingColumn())
    last, epoch = None, _EpochMeans()
    with Progress(*columns, console=console, transient=False) as progress:
        total = job.total_steps or None
        bar = progress.add_task(job.name or job.id, total=total, info="queued", steps=_steps(0, total))
        for event in client.watch(job_id, from_step=from_step):
            kind = event.WhichOneof("event")
            if kind == "state":
                state = convert.state_from_pb(event.state.state)
                if state == "RUNNING" and not total:
                    total = client.get(job_id).total_steps or None
                info = "starting workers" if state == "RUNNING" and last is None else state.lower()
                progress.update(bar, total=total, info=info, steps=_steps(last.step if last else 0, total))
            elif kind == "metrics":
                last = event.metrics
                total = total or client.get(job_id).total_steps or None
                progress.update(bar, completed=last.step, total=total, info=epoch.line(last),
                                steps=_steps(last.step, total))
    final = client.get(job_id)
    summary(final, last)
    return final


def _steps(done: int, total: int | None) -> str:
    return f"{done}/{total}" if total else f"{done}/?"


class _EpochMeans:
    """Running means over the current epoch (weighted by batch size), and the latest validation."""

    def __init__(self) -> None:
        self.epoch, self.n, self.loss, self.correct, self.val = -1, 0, 0.0, 0.0, ""

    def line(self, m: pb.StepMetrics) -> str:
        if m.epoch != self.epoch:
            self.epoch, self.n, self.loss, self.correct = m.epoch, 0, 0.0, 0.0
        self.n += m.batch
        self.loss += m.loss * m.batch
        self.correct += (m.accuracy if m.HasField("accuracy") else 0.0) * m.batch
        if m.HasField("val_loss"):
            acc = f"/{m.val_accuracy:.3f}" if m.HasField("val_accuracy") else ""
            self.val = f" val {m.val_loss:.3f}{acc}"
        acc = f" acc {self.correct / self.n:.3f}" if m.HasField("accuracy") else ""
        return f"ep {m.epoch + 1} loss {self.loss / self.n:.3f}{acc}{self.val}"


def spec_rows(job: pb.Job) -> list[tuple[str, str]]:
    """The job's model, data, optimizer and run, then when it started, ended and took."""
    s, rows = job.spec, []
    if s.HasField("model"):
        ops = [n.op for n in s.model.nodes] or [layer.op for layer in s.model.layers]
        rows.append(("model", f"{len(ops)} nodes: " + " ".join(ops[:8]) + (" ..." if len(ops) > 8 else "")))
    if s.HasField("dataset"):
        split = f", {s.dataset.val_fraction:g} validation" if s.dataset.val_fraction else ""
        split += f", {s.dataset.test_fraction:g} test" if s.dataset.test_fraction else ""
        rows.append(("data", f"{s.dataset.name}{split}"))
    if s.HasField("optimizer"):
        sched = f", {s.optimizer.schedule.name} schedule" if s.optimizer.schedule.name else ""
        rows.append(("optimizer", f"{s.optimizer.name} lr {s.optimizer.lr:g}{sched}"))
    run = f"batch {s.batch_size}, chunk {s.chunk_size}, {s.workers} workers"  # the stored spec has every field
    rows.append(("run", run + (f", seed {s.seed}" if s.seed else "")))
    stamps = {k: getattr(job, k).ToDatetime() for k in ("created", "started", "finished") if job.HasField(k)}
    for k, when in stamps.items():
        rows.append((k, f"{when.replace(tzinfo=datetime.timezone.utc).astimezone():%Y-%m-%d %H:%M:%S}"))
    if "started" in stamps and "finished" in stamps:
        rows.append(("duration", f"{(stamps['finished'] - stamps['started']).total_seconds():.1f} s"))
    return rows


def summary(job: pb.Job, last: pb.StepMetrics | None = None) -> None:
    t = Table(title=f"job {job.id}", show_header=False)
    t.add_row("name", job.name or "-")
    t.add_row("state", convert.state_from_pb(job.state))
    t.add_row("steps", f"{job.step}/{job.total_steps}")
    for key, value in spec_rows(job):
        t.add_row(key, value)
    m = last if last is not None else (job.latest_metrics if job.HasField("latest_metrics") else None)
    if m is not None:
        t.add_row("train loss (last batch)", f"{m.loss:.4f}")
        if m.HasField("val_loss"):
            t.add_row("validation loss", f"{m.val_loss:.4f}")
        if m.HasField("val_accuracy"):
            t.add_row("validation accuracy", f"{m.val_accuracy:.4f}")
        if m.HasField("test_loss"):
            t.add_row("test loss (held out, final weights)", f"{m.test_loss:.4f}")
        if m.HasField("test_accuracy"):
            t.add_row("test accuracy", f"{m.test_accuracy:.4f}")
    if job.error:
        t.add_row("error", f"[red]{job.error}")
    console.print(t)


def job_rows(jobs: Iterator[pb.Job]) -> Table:
    t = Table("name", "state", "step", "created")
    t.add_column("id", no_wrap=True)
    for j in jobs:
        t.add_row(j.name, convert.state_from_pb(j.state), f"{j.step}/{j.total_steps}",
                  j.created.ToDatetime().strftime("%m-%d %H:%M:%S"), j.id)
    return t
