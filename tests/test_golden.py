"""Golden final weights: the SHA-256 of the trained bytes for every example spec and a set
of library configs (each optimizer and schedule; 1, 2 and 3 Ray workers).

They were recorded before the restructure of issue 11 ("one obvious place for each
idea") and must never change: a refactor that moves one bit fails here. Record them
again only for a change that is meant to change the arithmetic, and say so in its commit:

    OPENBLAS_CORETYPE=Haswell python -m tests.test_golden --write

(the kernel tests/conftest.py pins, so that the bits do not depend on the CPU's).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from dptrain.core.config import TrainConfig
from dptrain.core.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).with_name("golden_weights.json")
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

BASE = {
    "model": {"input": 64, "layers": ["linear 24", "tanh", "linear 16", "relu", "linear 10"],
              "loss": "cross_entropy"},
    "dataset": {"name": "digits", "val_fraction": 0.2},
    "batch_size": 100, "chunk_size": 16, "steps": 40, "val_every": 15, "cpus_per_worker": 0.5,
}
OPTIMIZERS = {
    "sgd": {"name": "sgd", "lr": 0.1, "weight_decay": 1e-4},
    "momentum": {"name": "momentum", "lr": 0.05, "momentum": 0.9, "clip_norm": 1.0},
    "nesterov": {"name": "nesterov", "lr": 0.05, "momentum": 0.8,
                 "schedule": {"name": "step", "step_size": 10, "gamma": 0.5}},
    "rmsprop": {"name": "rmsprop", "lr": 0.003, "alpha": 0.9},
    "adam": {"name": "adam", "lr": 0.003, "schedule": {"name": "cosine", "warmup_steps": 5, "min_lr": 1e-4}},
    "adamw": {"name": "adamw", "lr": 0.003, "weight_decay": 0.01},
}


STEPS = {"lenet_mnist": 30, "resnet_shapes": 12, "char_gpt": 12}
"""The real-model examples are pinned over their first steps (their full runs, to an
accuracy target, are tests/test_examples.py's)."""


def configs() -> dict[str, dict]:
    """Every job whose final weights are pinned, by name."""
    out = {}
    for path in EXAMPLES:
        spec = yaml.safe_load(path.read_text())
        spec.pop("name", None)
        if path.stem in STEPS:
            spec.update(steps=STEPS[path.stem], val_every=STEPS[path.stem] // 2)
        out[f"example:{path.stem}"] = spec
    for name, opt in OPTIMIZERS.items():
        out[f"library:{name}"] = {**BASE, "optimizer": opt}
    out["library:adam-float64-seed7"] = {**BASE, "optimizer": OPTIMIZERS["adam"], "dtype": "float64", "seed": 7}
    return out


def weights_sha256(spec: dict, backend: str = "local", workers: int = 1) -> str:
    t = Trainer(TrainConfig.from_dict({**spec, "workers": workers}), backend=backend)
    try:
        for _ in t.run():
            pass
        return hashlib.sha256(t.theta.tobytes()).hexdigest()
    finally:
        t.close()


def golden() -> dict[str, str]:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("name", sorted(configs()))
def test_the_local_loop_gives_the_golden_weights(name):
    assert weights_sha256(configs()[name]) == golden()[name]


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_ray_workers_give_the_golden_weights(ray_session, optimizer, workers):
    name = f"library:{optimizer}"
    assert weights_sha256(configs()[name], backend="ray", workers=workers) == golden()[name]


def test_every_pinned_config_has_a_golden_hash_and_nothing_else_does():
    assert sorted(golden()) == sorted(configs())


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"] or os.environ.get("OPENBLAS_CORETYPE") != "Haswell":
        sys.exit(__doc__)
    GOLDEN.write_text(json.dumps({k: weights_sha256(v) for k, v in sorted(configs().items())}, indent=2) + "\n")
    print(f"wrote {GOLDEN}")
