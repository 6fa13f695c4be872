"""Every CLI command against a live server, and every example spec run to completion."""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from dptrain.cli import main
from dptrain.rpc import pb

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.fixture
def cli(server, capsys):
    def run(*args: str, ok: bool = True) -> str:
        """`dptrain ARGS`, pointed at the test server; returns what it printed."""
        capsys.readouterr()
        head = 2 if args[0] == "datasets" else 1
        address = [] if args[0] == "gradcheck" else ["--address", server.address]
        code = main([*args[:head], *address, *args[head:]])
        out = capsys.readouterr()
        assert (code == 0) == ok, out
        return out.out + out.err
    return run


SHORTENED = {"lenet_mnist", "resnet_shapes", "char_gpt"}  # trained to their targets in test_examples.py


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_specs_train_to_completion(cli, example):
    short = ["--set", "steps=6", "--set", "val_every=3"] if example.stem in SHORTENED else []
    out = cli("submit", str(example), *short, "--watch")
    assert "SUCCEEDED" in out
    if example.stem == "char_gpt":  # its text is a local file: submit uploaded it
        assert "uploaded examples/data/python_topics.txt as dataset" in out


def test_submit_uploads_a_local_data_file_once_and_prefixes_name_uploads(cli, server, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "img.npz", X=rng.random((40, 1, 6, 6)), y=rng.integers(0, 3, 40))
    spec = tmp_path / "job.yaml"
    spec.write_text("model: {input: [1, 6, 6], layers: [flatten, linear 3], loss: cross_entropy}\n"
                    "dataset: {name: npz, params: {path: img.npz}}\n"  # beside the spec
                    "optimizer: {name: sgd, lr: 0.1}\nbatch_size: 8\nsteps: 3\nworkers: 1\n")
    stored = len(server.manager.store.list_datasets())
    first = cli("submit", str(spec), "--watch")
    dataset_id = re.search(r"as dataset (\w+)", first).group(1)
    assert "SUCCEEDED" in first and len(server.manager.store.list_datasets()) == stored + 1
    assert "SUCCEEDED" in cli("submit", str(spec), "--watch")  # the same bytes: the same dataset
    assert len(server.manager.store.list_datasets()) == stored + 1
    assert "SUCCEEDED" in cli("submit", str(spec), "--set", f"dataset.params.path={dataset_id[:8]}", "--watch")
    out = cli("submit", str(spec), "--set", "dataset.params.path=nothere.npz", ok=False)
    assert "dataset.params.path: no file 'nothere.npz' here" in out and "dptrain datasets upload" in out
    out = cli("submit", str(spec), "--set", "dataset.params.path=abcdef12", ok=False)  # id-like: the server's word
    assert "dataset.params.path" in out and "unique prefix" in out
    listed = {d["id"]: d for d in json.loads(cli("datasets", "ls", "--json"))}
    assert listed[dataset_id]["x_shape"] == ["1", "6", "6"] and listed[dataset_id]["n_outputs"] == "3"


def test_job_commands(cli, tmp_path):
    out = cli("submit", str(ROOT / "examples" / "regression_mse.yaml"))
    job = re.search(r"submitted job (\w+)", out).group(1)
    assert "SUCCEEDED" in cli("watch", job)
    assert job in cli("jobs") and job in cli("jobs", "--state", "succeeded")
    assert "validation loss" in cli("status", job)
    cli("weights", job, "-o", str(tmp_path / "w.npz"))
    with np.load(tmp_path / "w.npz", allow_pickle=False) as w:
        assert sorted(w.files) == ["linear0.W", "linear0.b", "linear2.W", "linear2.b"]
    cli("weights", job, "-o", str(tmp_path / "w.safetensors"))
    from safetensors.numpy import load_file

    assert load_file(str(tmp_path / "w.safetensors"))["linear2.W"].shape == (32, 2)
    np.savez(tmp_path / "in.npz", X=np.ones((3, 8), np.float32))
    cli("predict", job, str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz"))
    with np.load(tmp_path / "out.npz", allow_pickle=False) as o:
        assert o["outputs"].shape == (3, 2)
    assert "already SUCCEEDED" in cli("cancel", job, ok=False)
    assert "no job with an id starting with 'nope'" in cli("status", "nope", ok=False)
    assert "NOT_FOUND: no job with id '0000000000000000000f'" in cli("status", "0000000000000000000f", ok=False)
    assert f"job {job}" in cli("status", job[:16])  # a unique prefix (the first 12 digits are the time in ms)


def test_resume_a_cancelled_job_by_prefix(cli):
    spec = ROOT / "examples" / "digits_mlp.yaml"
    job = re.search(r"submitted job (\w+)", cli("submit", str(spec))).group(1)
    cli("cancel", job[:12])
    assert "CANCELLED" in cli("watch", job, ok=False)
    assert f"resumed job {job}" in cli("resume", job[:12])
    assert "SUCCEEDED" in cli("watch", job)


def test_cancel_a_running_job(cli):
    spec = ROOT / "examples" / "digits_mlp.yaml"
    job = re.search(r"submitted job (\w+)", cli("submit", str(spec))).group(1)
    cli("cancel", job)
    assert "CANCELLED" in cli("watch", job, ok=False)


def test_dataset_commands(cli, tmp_path):
    (tmp_path / "d.csv").write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(40)))
    out = cli("datasets", "upload", str(tmp_path / "d.csv"), "--label", "label")
    assert "40 examples, 2 features, classification" in out
    assert "d.csv" in cli("datasets", "ls")


def test_gradcheck_command(cli):
    assert "ok: max relative error" in cli("gradcheck", str(ROOT / "examples" / "residual_teacher.yaml"))


@pytest.mark.timeout(300)
def test_demo_runs_end_to_end(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dptrain.cli", "demo", "--epochs", "3",
                          "--output", str(tmp_path / "w.npz")], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "validation accuracy" in out.stdout and (tmp_path / "w.npz").exists()


def test_an_unknown_state_is_refused_with_the_list(capsys):
    with pytest.raises(SystemExit) as e:
        main(["jobs", "--state", "faild"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown state 'faild' (did you mean 'failed'?)" in err and "succeeded" in err
    assert "JOB_STATE" not in err


def test_no_server_says_how_to_start_one(capsys):
    assert main(["jobs", "--address", "127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "no dptrain server answers at 127.0.0.1:9" in err and "dptrain serve" in err


def test_ctrl_c_while_watching_says_the_job_goes_on(server, tmp_path):
    import signal
    import time

    from dptrain.client import Client

    spec = tmp_path / "slow.yaml"
    spec.write_text("model: {input: 64, layers: [linear 32, tanh, linear 10], loss: cross_entropy}\n"
                    "dataset: {name: digits}\noptimizer: {name: sgd, lr: 0.01}\nbatch_size: 32\nepochs: 400\n"
                    "workers: 1\ncpus_per_worker: 0.25\n")
    proc = subprocess.Popen([sys.executable, "-m", "dptrain.cli", "submit", str(spec), "--watch",
                             "--address", server.address], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # wait until it is watching
        lines.append(line)
        if "submitted job" in line:
            break
    job_id = re.search(r"submitted job (\w+)", "".join(lines)).group(1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert f"job {job_id} is still running" in out and f"dptrain cancel {job_id}" in out
    with Client(server.address) as c:
        assert c.get(job_id).state in (1, 2)  # QUEUED or RUNNING: the server goes on
        c.cancel(job_id)


def test_every_option_says_what_it_is_for():
    from dptrain.cli.main import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if action.help is None and not isinstance(action, argparse._SubParsersAction):
                yield f"{path} {'/'.join(action.option_strings) or action.dest}"
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}")

    assert list(walk(build_parser(), "dptrain")) == []


def test_unknown_names_get_a_near_miss():
    from dptrain.engine import Model, SpecError

    with pytest.raises(SpecError, match=r"unknown loss 'cross_entropi' \(did you mean 'cross_entropy'\?\)"):
        Model({"input": 4, "layers": ["linear 2"], "loss": "cross_entropi"})
    with pytest.raises(SpecError, match=r"unknown op 'lienar' \(did you mean 'linear'\?\)"):
        Model({"input": 4, "layers": ["lienar"]})


@pytest.mark.parametrize("line, want", [("dptrain sub", "submit"), ("dptrain jobs --state f", "failed")])
def test_shell_completion(tmp_path, line, want):
    import os

    out = tmp_path / "completions"
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_STDOUT_FILENAME": str(out), "_ARGCOMPLETE_IFS": "\n"}
    subprocess.run([sys.executable, "-m", "dptrain.cli"], env=env, check=True, timeout=60)
    assert want in out.read_text().split()
    script = subprocess.run([sys.executable, "-m", "dptrain.cli", "completion", "bash"], capture_output=True,
                            text=True, check=True, timeout=60).stdout
    assert "dptrain" in script and "complete" in script


def test_read_commands_speak_json(cli, tmp_path):
    import json

    out = cli("submit", str(ROOT / "examples" / "regression_mse.yaml"))
    job = re.search(r"submitted job (\w+)", out).group(1)
    listed = json.loads(cli("jobs", "--json"))
    assert job in [j["id"] for j in listed] and all("state" in j for j in listed)
    one = json.loads(cli("status", job, "--json"))
    assert one["id"] == job and one["name"] == "regression-mse"
    np.savez(tmp_path / "d.npz", X=np.zeros((20, 3), np.float32), y=np.arange(20) % 2)
    cli("datasets", "upload", str(tmp_path / "d.npz"))
    sets = json.loads(cli("datasets", "ls", "--json"))
    assert any(int(d["n"]) == 20 and int(d["n_features"]) == 3 for d in sets)  # proto3 JSON: int64 as text
    cli("cancel", job)


def test_set_overrides_fields_and_validates_them(cli, tmp_path):
    import json

    base = str(ROOT / "examples" / "regression_mse.yaml")
    out = cli("submit", base, "--set", "optimizer.lr=3e-3", "--set", "epochs=2", "--set", "dataset.params.n=500")
    job = re.search(r"submitted job (\w+)", out).group(1)
    spec = json.loads(cli("status", job, "--json"))["spec"]
    assert spec["optimizer"]["lr"] == 0.003 and int(spec["epochs"]) == 2  # proto3 JSON: int64 as text
    bad = cli("submit", base, "--set", "optimizer.lr=-1", "--set", "batch_size=big", ok=False)
    assert "optimizer.lr" in bad and "batch_size" in bad
    assert "expected key.path=value" in cli("submit", base, "--set", "lr", ok=False)
    cli("cancel", job)


def test_predict_labels_and_probabilities(cli, server, tmp_path):
    from dptrain.client import Client

    out = cli("submit", str(ROOT / "examples" / "digits_mlp.yaml"), "--set", "epochs=1")
    job = re.search(r"submitted job (\w+)", out).group(1)
    with Client(server.address) as c:
        c.wait(job)
        X = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
        logits = c.predict(job, X)
    np.savez(tmp_path / "in.npz", X=X)
    cli("predict", job, str(tmp_path / "in.npz"), "--labels", "-o", str(tmp_path / "labels.npz"))
    cli("predict", job, str(tmp_path / "in.npz"), "--proba", "-o", str(tmp_path / "proba.npz"))
    with np.load(tmp_path / "labels.npz") as f:
        np.testing.assert_array_equal(f["outputs"], logits.argmax(axis=1))
    with np.load(tmp_path / "proba.npz") as f:
        p = f["outputs"]
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(p.argmax(axis=1), logits.argmax(axis=1))


def test_metrics_history_as_csv_json_and_a_plot(cli, server, tmp_path):
    import csv
    import io
    import json

    from dptrain.client import Client

    out = cli("submit", str(ROOT / "examples" / "digits_mlp.yaml"), "--set", "epochs=2", "--set", "val_every=5")
    job = re.search(r"submitted job (\w+)", out).group(1)
    with Client(server.address) as c:
        final = c.wait(job)
        paged = list(c.metrics(job))
        steps, start = [], 0
        while True:  # small pages: each continues where the last stopped
            page = c.stub.GetMetrics(pb.GetMetricsRequest(job_id=job, from_step=start, page_size=7))
            steps += [m.step for m in page.metrics]
            if not page.next_step:
                break
            start = page.next_step
        with pytest.raises(grpc.RpcError, match="page_size"):
            c.stub.GetMetrics(pb.GetMetricsRequest(job_id=job, page_size=10_001))
    assert [m.step for m in paged] == list(range(1, final.total_steps + 1)) == steps  # every step, in order
    table = list(csv.DictReader(io.StringIO(cli("metrics", job, "--csv"))))
    assert len(table) == final.total_steps and float(table[0]["loss"]) == pytest.approx(paged[0].loss)
    assert table[4]["val_loss"] and not table[3]["val_loss"]  # validation every 5 steps
    lines = [json.loads(x) for x in cli("metrics", job, "--json", "--from-step", "10").splitlines()]
    assert lines[0]["step"] == 10
    cli("plot", job, "-o", str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_prometheus_has_each_running_jobs_loss_and_accuracy(server):
    """The same registry the metrics port serves: a running job's series, gone when it ends."""
    import time

    from dptrain.client import Client
    from prometheus_client import REGISTRY, generate_latest

    with Client(server.address) as c:
        job = c.submit({"model": {"input": 64, "layers": ["linear 32", "tanh", "linear 10"], "loss": "cross_entropy"},
                        "dataset": {"name": "digits", "val_fraction": 0.2}, "optimizer": {"name": "sgd", "lr": 0.01},
                        "batch_size": 32, "epochs": 400, "val_every": 5, "workers": 1, "cpus_per_worker": 0.25}).id
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline and f'dptrain_job_val_accuracy{{job="{job}"}}' not in text:
            time.sleep(0.2)
            text = generate_latest(REGISTRY).decode()
        for name in ("step", "loss", "accuracy", "val_loss", "val_accuracy"):
            assert f'dptrain_job_{name}{{job="{job}"}}' in text, name
        c.cancel(job)
        c.wait(job)
    time.sleep(0.5)
    assert f'job="{job}"' not in generate_latest(REGISTRY).decode()


def test_weights_in_torch_layout_load_into_the_same_pytorch_model(cli, tmp_path):
    import torch
    from safetensors.torch import load_file

    out = cli("submit", str(ROOT / "examples" / "digits_mlp.yaml"), "--set", "steps=5", "--set", "val_every=0",
              "--watch")
    job = re.search(r"submitted job (\w+)", out).group(1)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    for name, read in (("m.pt", torch.load), ("m.safetensors", load_file)):
        assert "in PyTorch's layout" in cli("weights", job, "-o", str(tmp_path / name), "--layout", "torch")
        net.load_state_dict(read(str(tmp_path / name)), strict=True)
    X = np.random.default_rng(0).random((4, 64)).astype(np.float32)
    np.savez(tmp_path / "x.npz", X=X)
    cli("predict", job, str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz"))
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(X)).numpy(), np.load(tmp_path / "y.npz")["outputs"],
                                   rtol=1e-5, atol=1e-6)
    cli("weights", job, "-o", str(tmp_path / "engine.pt"))  # the engine's own names and layout
    assert torch.load(str(tmp_path / "engine.pt"))["linear0.W"].shape == (64, 128)


def test_a_test_split_is_reported_by_status_and_metrics(cli):
    out = cli("submit", str(ROOT / "examples" / "digits_mlp.yaml"), "--set", "dataset.test_fraction=0.1",
              "--set", "epochs=2", "--watch")
    job = re.search(r"submitted job (\w+)", out).group(1)
    assert "test accuracy" in out and "test accuracy" in cli("status", job)
    lines = cli("metrics", job, "--csv").splitlines()
    header, last = lines[0].split(","), dict(zip(lines[0].split(","), lines[-1].split(",")))
    assert {"test_loss", "test_accuracy"} <= set(header) and 0.5 < float(last["test_accuracy"]) <= 1
    assert lines[1].split(",")[header.index("test_loss")] == ""  # only the last step has it


def test_export_onnx_predicts_what_the_server_predicts(cli, tmp_path):
    import onnxruntime as ort

    out = cli("submit", str(ROOT / "examples" / "lenet_mnist.yaml"), "--set", "steps=4", "--set", "val_every=0",
              "--watch")
    job = re.search(r"submitted job (\w+)", out).group(1)
    assert "ONNX opset 21" in cli("export", job, "-o", str(tmp_path / "lenet.onnx"))
    X = np.random.default_rng(0).random((3, 1, 28, 28)).astype(np.float32)
    np.savez(tmp_path / "x.npz", X=X)
    cli("predict", job, str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz"))
    (got,) = ort.InferenceSession(str(tmp_path / "lenet.onnx")).run(None, {"x": X})
    np.testing.assert_allclose(got, np.load(tmp_path / "y.npz")["outputs"], rtol=1e-4, atol=1e-5)
    assert "use a .onnx file name" in cli("export", job, "-o", str(tmp_path / "m.pt"), ok=False)


def test_sweep_submits_a_group_and_compares_it(cli):
    import json

    out = cli("sweep", str(ROOT / "examples" / "digits_mlp.yaml"), "--grid", "optimizer.lr=1e-3,1e-2",
              "--grid", "batch_size=32,64", "--set", "epochs=1", "--name", "grid-test", "--watch", "--json")
    assert "submitted 4 trials of grid-test" in out
    table = json.loads(out[out.index("["):])
    assert sorted((t["trial"]["optimizer.lr"], t["trial"]["batch_size"]) for t in table) == [
        ("1e-2", "32"), ("1e-2", "64"), ("1e-3", "32"), ("1e-3", "64")]
    assert all(t["state"] == "SUCCEEDED" for t in table)
    losses = [t["val_loss"] for t in table]
    assert losses == sorted(losses)  # best first
    listed = json.loads(cli("jobs", "--json"))
    names = sorted(j["name"] for j in listed if j.get("name", "").startswith("grid-test/"))
    assert names == [f"grid-test/{k}" for k in range(4)]
    out = cli("sweep", str(ROOT / "examples" / "digits_mlp.yaml"), "--random", "3", "--range",
              "optimizer.lr=1e-4:1e-2:log", "--name", "rnd", "--set", "steps=3", "--no-watch")
    assert "submitted 3 trials of rnd" in out
    bad = cli("sweep", str(ROOT / "examples" / "digits_mlp.yaml"), "--grid", "optimizer.lr=1e-3,-1", ok=False)
    assert "trial 1 (optimizer.lr=-1)" in bad and "optimizer.lr" in bad  # checked before anything is sent
    assert "lo < hi" in cli("sweep", str(ROOT / "examples" / "digits_mlp.yaml"), "--random", "2", "--range",
                            "optimizer.lr=1:0", ok=False)
