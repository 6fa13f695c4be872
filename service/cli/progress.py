"""Live progress of a job in the terminal (rich), and its final summary table."""
from __future__ import annotations

from typing import Iterator

from dptrain.rpc import convert, pb
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(soft_wrap=True)  # ids and paths stay on one line, for copying and scripts


def follow(client, job_id: str, from_step: int = 0) -> pb.Job:
    """Render WatchJob events as a progress bar until the job ends; returns the final Job."""
    job = client.get(job_id)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    last = None
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(job.name or job.id, total=job.total_steps or None, info="queued")
        for event in client.watch(job_id, from_step=from_step):
            kind = event.WhichOneof("event")
            if kind == "state":
                state = convert.state_from_pb(event.state.state)
                progress.update(bar, info=state.lower())
                if state in ("RUNNING",) and not progress.tasks[bar].total:
                    progress.update(bar, total=client.get(job_id).total_steps or None)
            elif kind == "metrics":
                last = event.metrics
                total = progress.tasks[bar].total or client.get(job_id).total_steps
                progress.update(bar, completed=last.step, total=total, info=_line(last))
    final = client.get(job_id)
    summary(final, last)
    return final


def _line(m: pb.StepMetrics) -> str:
    acc = f" acc {m.accuracy:.3f}" if m.HasField("accuracy") else ""
    return f"epoch {m.epoch + 1} loss {m.loss:.4f}{acc} {m.samples_per_s:,.0f} samples/s"


def summary(job: pb.Job, last: pb.StepMetrics | None = None) -> None:
    t = Table(title=f"job {job.id}", show_header=False)
    t.add_row("name", job.name or "-")
    t.add_row("state", convert.state_from_pb(job.state))
    t.add_row("steps", f"{job.step}/{job.total_steps}")
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
