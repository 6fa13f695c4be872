"""Commands that need no running server: `demo` and `gradcheck`."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from dptrain.engine import SpecError, gradcheck

from .specfile import load_spec

DEMO_JOB = {
    "model": {"input": 64, "layers": ["linear 128", "relu", "linear 10"], "loss": "cross_entropy"},
    "dataset": {"name": "digits", "val_fraction": 0.2},
    "optimizer": {"name": "adam", "lr": 0.003},
    "batch_size": 64, "chunk_size": 32, "epochs": 20, "workers": 2, "cpus_per_worker": 0.5,
    "val_every": 23,
}


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="start everything embedded and train an MLP on digits over gRPC")
    demo.add_argument("--epochs", type=int, default=DEMO_JOB["epochs"],
                      help=f"epochs to train (default {DEMO_JOB['epochs']})")
    demo.add_argument("--output", default="dptrain-demo-weights.npz", help="where to write the weights")
    demo.set_defaults(func=run_demo)
    gc = sub.add_parser("gradcheck", help="check a spec's backprop against finite differences")
    gc.add_argument("spec", help="YAML or JSON job or model spec")
    gc.add_argument("--tol", type=float, default=1e-6, help="largest relative error accepted (default 1e-6)")
    gc.add_argument("--seed", type=int, default=0, help="seed of the weights and the random batch (default 0)")
    gc.set_defaults(func=run_gradcheck)


def run_demo(args: argparse.Namespace) -> int:
    """Embedded Ray + server on a free loopback port; the job goes through the real gRPC path."""
    import logging

    from dptrain.client import Client
    from dptrain.export import save_weights
    from dptrain.server import ServerConfig, serve

    from .progress import console, follow

    logging.getLogger("dptrain").setLevel(logging.WARNING)
    started = time.monotonic()
    console.print("[bold]dptrain demo[/bold]: MLP 64-128-10 on the digits dataset, 2 Ray workers, via gRPC")
    with tempfile.TemporaryDirectory(prefix="dptrain-demo-") as state:
        server = serve(ServerConfig(port=0, state_dir=Path(state)))
        console.print(f"server up on {server.address} ({time.monotonic() - started:.1f}s, Ray included)")
        try:
            with Client(server.address) as c:
                job = c.submit({**DEMO_JOB, "epochs": args.epochs}, name="digits-mlp")
                final = follow(c, job.id)
                if final.state != 3:  # SUCCEEDED
                    return 1
                _, _, weights = c.weights(job.id)
        finally:
            server.stop()
    save_weights(args.output, weights)
    m = final.latest_metrics
    console.print(f"validation accuracy [bold]{m.val_accuracy:.4f}[/bold]; weights in {Path(args.output).resolve()} "
                  f"({time.monotonic() - started:.1f}s in all)")
    return 0


def run_gradcheck(args: argparse.Namespace) -> int:
    """Exit 0 if backprop matches (kinks at sampled points are reported, not failures), 1 if not, 2 on a bad spec."""
    if not 0 < args.tol < 1:
        print(f"error: --tol must be in (0, 1), got {args.tol:g}", file=sys.stderr)
        return 2
    try:
        spec = load_spec(args.spec)
        report = gradcheck(spec.get("model", spec), seed=args.seed, tol=args.tol)
    except (SpecError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return 0 if report.ok() else 1
