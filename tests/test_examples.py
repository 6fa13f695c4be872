"""The real-model examples (examples/lenet_mnist.yaml, resnet_shapes.yaml, char_gpt.yaml):
each trains to its stated target, and 1, 2 and 3 Ray workers give bitwise the in-process
loop's weights, dropout and chunk batch norm included, with a worker killed mid-step and
a resize."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from dptrain.core.config import TrainConfig
from dptrain.core.trainer import Trainer

from .test_core_exactness import same_bits

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MODELS = ["lenet_mnist", "resnet_shapes", "char_gpt"]
SHORT = {  # a few uneven steps: 40 examples in chunks of 16 (16, 16, 8) split over N workers
    "batch_size": 40, "chunk_size": 16, "steps": 7, "epochs": None, "val_every": 3, "cpus_per_worker": 0.5,
    "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.01},
}
SMALL_DATA = {"resnet_shapes": ({"n": 300, "size": 16}, [3, 16, 16])}  # the same network on smaller images


def example(name: str, **over) -> dict:
    spec = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    spec.pop("name")
    if over.pop("small", False):
        spec.update(SHORT)
        if name in SMALL_DATA:
            spec["dataset"]["params"].update(SMALL_DATA[name][0])
            spec["model"]["input"] = SMALL_DATA[name][1]
    return {**spec, **over}


def train(spec: dict, backend: str = "local") -> Trainer:
    t = Trainer(TrainConfig.from_dict(spec), backend=backend)
    try:
        for _ in t.run():
            pass
    finally:
        t.close()
    return t


@pytest.fixture(scope="module")
def references() -> dict:
    return {name: train(example(name, small=True)).theta.copy() for name in MODELS}


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("name", MODELS)
def test_any_worker_count_gives_the_local_loops_bits(ray_session, references, name, workers):
    t = train(example(name, small=True, workers=workers), backend="ray")
    assert same_bits(t.theta, references[name])


@pytest.mark.parametrize("name", MODELS)
def test_a_worker_killed_mid_step_then_a_resize_changes_nothing(ray_session, references, name):
    t = Trainer(TrainConfig.from_dict(example(name, small=True, workers=2)), backend="ray")
    try:
        t.step()
        t.step()
        victim = t.backend.nodes()[1]["pid"]
        ray_session.get(t.backend.pool.slots[1].actor.inject_delay.remote([2.0]))
        result: dict = {}
        stepper = threading.Thread(target=lambda: result.setdefault("m", t.step()))
        stepper.start()
        time.sleep(0.7)  # worker 1 is inside its call
        os.kill(victim, signal.SIGKILL)
        stepper.join(timeout=90)
        assert result["m"].failures == 1
        t.resize(3)
        for _ in t.run():
            pass
        assert t.backend.size == 3
    finally:
        t.close()
    assert same_bits(t.theta, references[name])


# --- each example trains to its target ------------------------------------------------------------

def final_validation(spec: dict) -> tuple[float, float]:
    t = Trainer(TrainConfig.from_dict(spec), backend="local")
    last = None
    try:
        for m in t.run():
            if m.val_loss is not None:
                last = m
    finally:
        t.close()
    return last.val_loss, last.val_accuracy


def test_lenet_reaches_97_percent_on_28x28_digits():
    _, acc = final_validation(example("lenet_mnist"))
    assert acc >= 0.97


def test_the_residual_cnn_learns_the_shapes():
    _, acc = final_validation(example("resnet_shapes"))
    assert acc >= 0.95


def test_the_char_gpt_learns_the_text():
    """200 of its steps (a fifth of the example's run): the validation loss falls from
    log(102) = 4.62 (uniform) past what the characters' frequencies alone give (3.3)."""
    loss, _ = final_validation(example("char_gpt", steps=200, epochs=None, val_every=100))
    assert loss <= 2.5
