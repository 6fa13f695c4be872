"""Work with runs: init_from starts a job from another job's weights (and optimizer state),
bitwise; `dptrain fork` submits a changed copy; early stopping reaches the server over gRPC."""
from __future__ import annotations

import re

import grpc
import numpy as np
import pytest
from dptrain.cli import main
from dptrain.client import Client
from dptrain.core.config import TrainConfig
from dptrain.core.trainer import Trainer, TrainState

JOB = {"model": {"input": 64, "layers": ["linear 32", "tanh", "linear 10"], "loss": "cross_entropy"},
       "dataset": {"name": "digits", "val_fraction": 0.2}, "optimizer": {"name": "adam", "lr": 0.003},
       "batch_size": 64, "chunk_size": 16, "workers": 2, "cpus_per_worker": 0.5}


def finished(c: Client, spec: dict, name: str) -> str:
    job = c.submit(spec, name=name)
    final = c.wait(job.id)
    assert final.state == 3, final.error  # SUCCEEDED
    return job.id


def test_init_from_starts_from_the_other_jobs_checkpoint_bitwise(server):
    with Client(server.address) as c:
        source = finished(c, {**JOB, "steps": 40, "checkpoint_every": 20}, "source")
        spec = {**JOB, "steps": 15, "optimizer": {"name": "adam", "lr": 0.001},
                "init_from": {"job": source[:16], "step": 20, "optimizer": True}}
        child = finished(c, spec, "child")
        stored = c.get(child).spec
        assert stored.init_from.job == source and stored.init_from.step == 20  # the full id is kept
        assert [line.kind for line in c.log(child)][:3] == ["submitted", "started", "init_from"]
        _, _, got = c.weights(child)
    start = server.manager.checkpoints.load(source, 20)
    local = {k: v for k, v in spec.items() if k != "init_from"}
    t = Trainer(TrainConfig.from_dict(local), backend="local",
                state=TrainState(theta=start.theta.copy(), optimizer=dict(start.optimizer)))
    for _ in t.run():
        pass
    want = t.model.views(t.theta)
    assert all(want[k].tobytes() == got[k].tobytes() for k in want)


@pytest.mark.parametrize("change, field, words", [
    ({"init_from": {"job": "0123456789abcdef"}}, "init_from.job", "no job"),
    ({"init_from": {"job": "SOURCE", "step": 7}}, "init_from.step", "no checkpoint at step 7"),
    ({"model": {"input": 64, "layers": ["linear 16", "tanh", "linear 10"], "loss": "cross_entropy"},
      "init_from": {"job": "SOURCE"}}, "init_from.job", "other parameters"),
    ({"optimizer": {"name": "sgd", "lr": 0.1}, "init_from": {"job": "SOURCE", "optimizer": True}},
     "init_from.optimizer", "optimizer is 'adam'"),
    ({"init_from": {"job": "not hex"}}, "init_from.job", "pattern"),
])
def test_init_from_is_checked_at_submit(server, change, field, words):
    with Client(server.address) as c:
        source = finished(c, {**JOB, "steps": 5}, "src")
        spec = {**JOB, "steps": 5, **change}
        if "init_from" in spec:
            spec["init_from"] = {**spec["init_from"], "job": spec["init_from"]["job"].replace("SOURCE", source)}
        with pytest.raises(grpc.RpcError) as e:
            c.submit(spec)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in e.value.details() and words in e.value.details()


def test_fork_submits_a_changed_copy_from_the_weights(server, capsys):
    with Client(server.address) as c:
        source = finished(c, {**JOB, "steps": 10}, "base")
    assert main(["fork", source, "--address", server.address, "--set", "optimizer.lr=0.0005",
                 "--from-weights", "--optimizer-state", "--watch"]) == 0
    out = capsys.readouterr().out
    fork_id = re.search(r"submitted job (\w+) \(base-fork\), a fork of", out).group(1)
    with Client(server.address) as c:
        spec = c.get(fork_id).spec
    assert spec.optimizer.lr == 0.0005 and spec.init_from.job == source and spec.init_from.optimizer
    assert spec.model.layers or spec.model.nodes  # the rest is the source's spec
    assert main(["fork", source, "--address", server.address, "--optimizer-state"]) == 2  # needs --from-weights


def test_early_stopping_over_grpc(server):
    with Client(server.address) as c:
        job = c.submit({**JOB, "steps": 3000, "val_every": 5,
                        "early_stopping": {"metric": "val_loss", "patience": 2, "min_delta": 10.0}}, name="stopper")
        final = c.wait(job.id)
        assert final.state == 3 and final.step < 3000  # SUCCEEDED, early
        assert c.get(job.id).spec.early_stopping.patience == 2
        assert "early_stop" in [line.kind for line in c.log(job.id)]
    assert np.isfinite(final.latest_metrics.loss)


@pytest.mark.parametrize("keep, kept", [(1, [30]), (2, [25, 30]), (None, [20, 25, 30])])
def test_keep_checkpoints_is_a_setting(server, keep, kept):
    spec = {**JOB, "steps": 30, "checkpoint_every": 5, **({"keep_checkpoints": keep} if keep else {})}
    with Client(server.address) as c:
        job = finished(c, spec, "retention")
    assert server.manager.checkpoints.steps(job) == kept
