"""Commands that need no server: `demo` and `gradcheck`."""
from __future__ import annotations

import argparse
import sys
import time

from workers.engine import SpecError, gradcheck

from .specfile import load_spec

DEMO_JOB = {
    "name": "digits-mlp",
    "model": {"input": 64, "layers": ["linear 128", "relu", "linear 10"], "loss": "cross_entropy"},
    "dataset": {"name": "digits", "val_fraction": 0.2},
    "optimizer": {"name": "adam", "lr": 0.003},
    "batch_size": 64, "chunk_size": 32, "epochs": 20, "workers": 2, "cpus_per_worker": 0.5,
}


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="train an MLP on the digits dataset, end to end")
    demo.add_argument("--epochs", type=int, default=DEMO_JOB["epochs"])
    demo.add_argument("--local", action="store_true", help="in this process, without Ray")
    demo.set_defaults(func=run_demo)
    gc = sub.add_parser("gradcheck", help="check a model spec's backprop against finite differences")
    gc.add_argument("spec", help="YAML or JSON job or model spec")
    gc.add_argument("--tol", type=float, default=1e-6)
    gc.add_argument("--seed", type=int, default=0)
    gc.set_defaults(func=run_gradcheck)


def run_demo(args: argparse.Namespace) -> int:
    from service.config import TrainConfig
    from service.trainer import Trainer

    cfg = TrainConfig.from_dict({**{k: v for k, v in DEMO_JOB.items() if k != "name"}, "epochs": args.epochs})
    started = time.monotonic()
    print(f"dptrain demo: MLP 64-128-10 on digits, {args.epochs} epochs, "
          f"{'in-process' if args.local else f'{cfg.workers} Ray workers'}")
    trainer = Trainer(cfg, backend="local" if args.local else "ray")
    try:
        for m in trainer.run():
            if m.step % trainer.steps_per_epoch == 0:
                print(f"  epoch {m.epoch + 1:3d}  step {m.step:5d}  loss {m.loss:.4f}  "
                      f"accuracy {m.accuracy:.3f}  {m.samples_per_s:,.0f} samples/s")
    finally:
        trainer.close()
    print(f"validation loss {m.val_loss:.4f}, accuracy {m.val_accuracy:.4f} "
          f"({time.monotonic() - started:.1f}s)")
    return 0


def run_gradcheck(args: argparse.Namespace) -> int:
    try:
        spec = load_spec(args.spec)
        report = gradcheck(spec.get("model", spec), seed=args.seed)
    except (SpecError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, err in report.per_tensor.items():
        print(f"  {name:30s} max rel. error {err:.2e}")
    verdict = "ok" if report.ok(args.tol) else "FAILED"
    print(f"{verdict}: max relative error {report.max_rel_error:.2e} at {report.worst} "
          f"({report.checked} coordinates, tolerance {args.tol:g})")
    return 0 if report.ok(args.tol) else 1
