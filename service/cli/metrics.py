"""`dptrain metrics` and `dptrain plot`: a job's learning curves, for terminals and notebooks.

    dptrain metrics JOB --csv > curves.csv      # or --json
    dptrain plot JOB [JOB ...] -o curves.png     # loss, accuracy and learning rate (matplotlib)
"""
from __future__ import annotations

import argparse
import csv
import json
import sys

from .progress import console
from .remote import JOB_HELP, add_connection_args, client

OPTIONAL = ("accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy")  # None where a step has none
COLUMNS = ("step", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "grad_norm", "batch",
           "samples_per_s", "step_s", "failures", "test_loss", "test_accuracy")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("metrics", help="a job's metrics history, as CSV or JSON")
    add_connection_args(p)
    p.add_argument("job", help=JOB_HELP)
    p.add_argument("--json", action="store_true", help="JSON lines, one step each (default: CSV)")
    p.add_argument("--csv", action="store_true", help="CSV with a header row (the default)")
    p.add_argument("--from-step", type=int, default=0, help="the first step (default 0: all)")
    p.set_defaults(func=metrics)
    p = sub.add_parser("plot", help="plot jobs' loss, accuracy and learning rate to an image (matplotlib)")
    add_connection_args(p)
    p.add_argument("jobs", nargs="+", metavar="JOB", help="jobs to overlay (ids or unique prefixes)")
    p.add_argument("-o", "--output", required=True, help="image to write: .png, .svg or .pdf")
    p.set_defaults(func=plot)


def rows(c, job_id: str, from_step: int = 0):
    """Each recorded step as a dict of COLUMNS (None where a step has no value)."""
    for m in c.metrics(job_id, from_step):
        row = {k: getattr(m, k) for k in COLUMNS}
        for k in OPTIONAL:
            if not m.HasField(k):
                row[k] = None
        yield row


def metrics(args: argparse.Namespace) -> int:
    with client(args) as c:
        data = list(rows(c, c.resolve(args.job), args.from_step))
    if args.json:
        for row in data:
            print(json.dumps(row))
    else:
        w = csv.DictWriter(sys.stdout, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(data)
    return 0


def plot(args: argparse.Namespace) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise OSError("plot needs matplotlib: pip install 'dptrain[plot]'") from None
    with client(args) as c:
        runs = [(c.get(j := c.resolve(job)), list(rows(c, j))) for job in args.jobs]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    for job, data in runs:
        label = job.name or job.id[:12]
        steps = [r["step"] for r in data]
        line, = ax_loss.plot(steps, [r["loss"] for r in data], label=f"{label} train", linewidth=1)
        val = [(r["step"], r["val_loss"]) for r in data if r["val_loss"] is not None]
        if val:
            ax_loss.plot(*zip(*val), "o--", color=line.get_color(), label=f"{label} validation", markersize=3)
        acc = [(r["step"], r["accuracy"]) for r in data if r["accuracy"] is not None]
        if acc:
            ax_acc.plot(*zip(*acc), color=line.get_color(), linewidth=1, label=f"{label} train")
        vacc = [(r["step"], r["val_accuracy"]) for r in data if r["val_accuracy"] is not None]
        if vacc:
            ax_acc.plot(*zip(*vacc), "o--", color=line.get_color(), markersize=3, label=f"{label} validation")
        ax_lr.plot(steps, [r["lr"] for r in data], color=line.get_color(), label=label)
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy"), (ax_lr, "learning rate")):
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    ax_lr.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    console.print(f"wrote {args.output} ({len(runs)} job(s))")
    return 0
