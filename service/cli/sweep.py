"""`dptrain sweep`: one spec, many hyperparameter settings, submitted as one group.

    dptrain sweep spec.yaml --grid optimizer.lr=1e-3,3e-3,1e-2 --grid batch_size=64,128
    dptrain sweep spec.yaml --random 8 --range optimizer.lr=1e-4:1e-1:log --range epochs=5:20

A grid is the product of its value lists; --random N draws N settings from the ranges
(uniform, or log-uniform with ":log"; integers stay integers), seeded by --seed. Every
trial is validated before any is submitted. The server runs them as its CPUs allow (its
queue and max_running_jobs: the same scheduler as any job, so trials keep everything a
job has: checkpoints, resume, exact weights, logs). Trials are named "<group>/<k>", which
the dashboard offers as a group to overlay. With --watch (the default on a terminal) it
waits and prints a comparison table, best validation loss first.

Why not Ray Tune: its trials run in Tune's own actors and loop, outside the server's job
store, so a trial would have none of the above, and its schedulers (ASHA, PBT) stop and
restart trials in ways our bitwise guarantee does not describe. Grid and random search
over server jobs is what this gives; early stopping per trial is `early_stopping`.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

from dptrain.engine import SpecError

from .progress import console
from .remote import add_connection_args, add_json_arg, client
from .specfile import add_set_arg, apply_override, load_spec

MAX_TRIALS = 256


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="submit a spec over a grid or random draws of hyperparameters, as one group")
    add_connection_args(p)
    p.add_argument("spec", help="YAML or JSON job spec (the base of every trial)")
    add_set_arg(p)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a field and its values, repeatable: the trials are the product of all grids")
    p.add_argument("--random", type=int, metavar="N", help="draw N trials from the --range fields")
    p.add_argument("--range", action="append", default=[], metavar="KEY=LO:HI[:log]", dest="ranges",
                   help="a field's range for --random: uniform, or log-uniform with :log; integers stay integers")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
    p.add_argument("--name", help="the group's name (default: the spec's name or file name)")
    p.add_argument("--watch", action=argparse.BooleanOptionalAction, default=None,
                   help="wait for every trial and print the comparison (default: when on a terminal)")
    add_json_arg(p)
    p.set_defaults(func=sweep)


def _grid(items: list[str]) -> list[dict[str, str]]:
    axes = []
    for item in items:
        key, sep, values = item.partition("=")
        parts = [v.strip() for v in values.split(",")] if sep else []
        if not key or not parts or any(not v for v in parts):
            raise SpecError("--grid", f"expected key=v1,v2,... (e.g. optimizer.lr=1e-3,3e-3), got {item!r}")
        axes.append([(key, v) for v in parts])
    return [dict(combo) for combo in itertools.product(*axes)] if axes else [{}]


def _draw(ranges: list[str], n: int, seed: int) -> list[dict[str, str]]:
    if not ranges:
        raise SpecError("--random", "needs at least one --range key=lo:hi")
    parsed = []
    for item in ranges:
        key, sep, spec = item.partition("=")
        bits = spec.split(":")
        try:
            lo, hi = (float(b) for b in bits[:2])
        except ValueError:
            lo = hi = math.nan
        log_scale = bits[2:] == ["log"]
        if not key or len(bits) not in (2, 3) or (len(bits) == 3 and not log_scale) or not lo < hi or (
                log_scale and lo <= 0):
            raise SpecError("--range", f"expected key=lo:hi or key=lo:hi:log with lo < hi (and lo > 0 for log), "
                                       f"got {item!r}")
        ints = all(b.lstrip("-").isdigit() for b in bits[:2])
        parsed.append((key, lo, hi, log_scale, ints))
    rng = random.Random(seed)
    trials = []
    for _ in range(n):
        trial = {}
        for key, lo, hi, log_scale, ints in parsed:
            u = rng.random()
            v = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if log_scale else lo + u * (hi - lo)
            trial[key] = str(round(v)) if ints else f"{v:.4g}"
        trials.append(trial)
    return trials


def trials_of(args: argparse.Namespace) -> list[dict[str, str]]:
    """The settings to try, each a {field: value text} of overrides."""
    if args.random is not None:
        if args.grid:
            raise SpecError("--random", "use --grid or --random, not both")
        if not 1 <= args.random <= MAX_TRIALS:
            raise SpecError("--random", f"must be in [1, {MAX_TRIALS}], got {args.random}")
        return _draw(args.ranges, args.random, args.seed)
    if args.ranges:
        raise SpecError("--range", "goes with --random N")
    if not args.grid:
        raise SpecError("--grid", "give at least one --grid key=v1,v2 (or --random N with --range)")
    trials = _grid(args.grid)
    if len(trials) > MAX_TRIALS:
        raise SpecError("--grid", f"{len(trials)} trials exceed the limit of {MAX_TRIALS}")
    return trials


def sweep(args: argparse.Namespace) -> int:
    from dptrain.core.config import TrainConfig

    from .remote import upload_local_data

    base = load_spec(args.spec, args.overrides)
    group = args.name or base.pop("name", None) or Path(args.spec).stem
    base.pop("name", None)
    trials, specs = trials_of(args), []
    for k, trial in enumerate(trials):  # every trial is checked before any is submitted
        spec = copy.deepcopy(base)
        for key, value in trial.items():
            apply_override(spec, f"{key}={value}")
        try:
            TrainConfig.from_dict(spec)
        except SpecError as e:
            raise SpecError(f"trial {k} ({_label(trial)})", str(e)) from None
        specs.append(spec)
    with client(args) as c:
        local = copy.deepcopy(base)
        upload_local_data(c, local, Path(args.spec).parent)  # once for the group: trials share the data
        if local != base:  # a local file became an upload: the trials name it too
            for spec in specs:
                if spec["dataset"]["params"].get("path") == base["dataset"]["params"]["path"]:
                    spec["dataset"]["params"]["path"] = local["dataset"]["params"]["path"]
        jobs = [c.submit(spec, name=f"{group}/{k}") for k, spec in enumerate(specs)]
        console.print(f"submitted {len(jobs)} trials of [bold]{group}[/bold]: "
                      + ", ".join(f"{j.id[:12]} ({_label(t)})" for j, t in zip(jobs, trials)))
        watch = sys.stdout.isatty() if args.watch is None else args.watch
        if not watch:
            return 0
        finals = [_wait(c, j.id) for j in jobs]
    rows = sorted(zip(trials, finals), key=lambda r: _score(r[1]))
    if args.json:
        import json

        print(json.dumps([{"job": f.id, "trial": t, "state": _state(f), **_metrics(f)} for t, f in rows], indent=2))
    else:
        _table(group, rows)
    return 0 if all(f.state == 3 for f in finals) else 1


def _label(trial: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in trial.items())


def _wait(c, job_id: str):
    while True:
        job = c.get(job_id)
        if job.state in (3, 4, 5):  # SUCCEEDED, FAILED, CANCELLED
            return job
        time.sleep(0.5)


def _state(job) -> str:
    from dptrain.rpc import convert

    return convert.state_from_pb(job.state)


def _metrics(job) -> dict[str, Any]:
    m = job.latest_metrics
    out = {"loss": m.loss if job.HasField("latest_metrics") else None}
    for k in ("val_loss", "val_accuracy", "test_accuracy"):
        out[k] = getattr(m, k) if m.HasField(k) else None
    out["steps"] = job.step
    return out


def _score(job) -> tuple[int, float]:
    """Best first: succeeded before the rest, then by validation loss (else training loss)."""
    m = _metrics(job)
    value = m["val_loss"] if m["val_loss"] is not None else m["loss"]
    return (job.state != 3, value if value is not None and math.isfinite(value) else math.inf)


def _table(group: str, rows: list) -> None:
    from rich.console import Console
    from rich.table import Table

    metrics = [_metrics(job) for _, job in rows]
    cols = ["loss", "val_loss", "val_accuracy", "test_accuracy"]
    cols = [k for k in cols if any(m[k] is not None for m in metrics)]  # no empty columns
    t = Table(title=f"sweep {group}: best validation loss first")
    t.add_column("job", no_wrap=True)
    t.add_column("setting", no_wrap=True)
    t.add_column("state")
    for col in ["steps", *cols]:
        t.add_column(col.replace("_accuracy", " acc").replace("_", " "), justify="right")
    for (trial, job), m in zip(rows, metrics):
        setting = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in trial.items())
        t.add_row(job.id, setting, _state(job), str(m["steps"]), *("" if m[k] is None else f"{m[k]:.4f}" for k in cols))
    # piped: as wide as the table needs, so no id or setting is cut
    (console if sys.stdout.isatty() else Console(width=400, soft_wrap=True)).print(t)
