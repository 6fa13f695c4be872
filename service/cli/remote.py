"""Commands that talk to a running server: submit, jobs, status, watch, cancel, weights,
predict, datasets."""
from __future__ import annotations

import argparse
import difflib
import os
import re
from pathlib import Path

import numpy as np
from dptrain.engine import SpecError
from dptrain.rpc.bounds import CSV_OPTIONS, UPLOAD_FORMATS
from dptrain.store.base import STATES

from .progress import console, follow, job_rows, summary
from .specfile import add_set_arg, load_spec

JOB_HELP = "job id, or a unique prefix of one"


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=os.environ.get("DPTRAIN_ADDRESS", "127.0.0.1:50051"),
                   help="server address (env DPTRAIN_ADDRESS)")
    p.add_argument("--token", default=os.environ.get("DPTRAIN_TOKEN"), help="bearer token (env DPTRAIN_TOKEN)")
    p.add_argument("--tls-ca", default=os.environ.get("DPTRAIN_TLS_CA"), help="CA certificate for TLS")


def client(args: argparse.Namespace):
    from dptrain.client import Client

    return Client(args.address, token=args.token, tls_ca=args.tls_ca)


def register(sub: argparse._SubParsersAction) -> None:
    def cmd(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        add_connection_args(p)
        p.set_defaults(func=func)
        return p

    p = cmd("submit", submit, "submit a job spec (YAML or JSON)")
    p.add_argument("spec", help="YAML or JSON job spec (docs/spec.md)")
    add_set_arg(p)
    p.add_argument("--name", help="label for the job (default: the spec's name or file name)")
    p.add_argument("--watch", action="store_true", help="follow the job with a progress bar")
    p = cmd("fork", fork, "submit a copy of a job's spec, with --set changes, optionally from its weights")
    p.add_argument("job", help=JOB_HELP)
    add_set_arg(p)
    p.add_argument("--name", help="label for the copy (default: the job's name + '-fork')")
    p.add_argument("--from-weights", nargs="?", type=int, const=-1, default=None, metavar="STEP",
                   help="start from the job's weights: its latest checkpoint, or the one at STEP (init_from)")
    p.add_argument("--optimizer-state", action="store_true",
                   help="with --from-weights: also take its optimizer state")
    p.add_argument("--watch", action="store_true", help="follow the copy with a progress bar")
    p = cmd("jobs", jobs, "list jobs")
    state = p.add_argument("--state", action="append", type=_state, metavar="STATE",
                           help="filter by state, repeatable: " + ", ".join(s.lower() for s in STATES))
    state.completer = lambda **_: [s.lower() for s in STATES]  # type: ignore[attr-defined]  # argcomplete
    add_json_arg(p)
    p = cmd("status", status, "show one job")
    p.add_argument("job", help=JOB_HELP)
    add_json_arg(p)
    p = cmd("logs", logs, "a job's log: submitted, started, workers, recoveries, checkpoints, validation, how it ended")
    p.add_argument("job", help=JOB_HELP)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the job ends")
    add_json_arg(p)
    p = cmd("watch", watch, "follow a job's progress")
    p.add_argument("job", help=JOB_HELP)
    p.add_argument("--from-step", type=int, default=0, help="replay metrics from this step (default 0: all)")
    cmd("cancel", cancel, "cancel a queued or running job").add_argument("job", help=JOB_HELP)
    cmd("resume", resume, "requeue a failed or cancelled job from its newest intact checkpoint").add_argument(
        "job", help=JOB_HELP)
    p = cmd("weights", weights, "download a job's weights (.npz, .safetensors or .pt)")
    p.add_argument("job", help=JOB_HELP)
    p.add_argument("-o", "--output", required=True, help="file to write: .npz, .safetensors or .pt (needs PyTorch)")
    p.add_argument("--layout", choices=["dptrain", "torch"], default="dptrain",
                   help="torch: PyTorch's module names and (out, in) weights, for load_state_dict "
                        "(docs/export.md); default: the engine's names (linear0.W)")
    p.add_argument("--step", type=int, help="a checkpointed step instead of the latest weights")
    p = cmd("export", export, "write a job's model as ONNX (needs the onnx package: pip install 'dptrain[onnx]')")
    p.add_argument("job", help=JOB_HELP)
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--step", type=int, help="a checkpointed step instead of the latest weights")
    p = cmd("predict", predict, "run a job's model on inputs from an .npz (array X)")
    p.add_argument("job", help=JOB_HELP)
    p.add_argument("inputs", help="the inputs: an .npz (array X, else its first array), .npy, or .csv of numbers")
    p.add_argument("-o", "--output", help="write outputs to this .npz instead of printing")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--labels", action="store_true", help="the predicted class of each input (argmax)")
    kind.add_argument("--proba", action="store_true",
                      help="class probabilities (softmax; sigmoid for binary_cross_entropy) instead of logits")
    ds = sub.add_parser("datasets", help="upload and list datasets").add_subparsers(dest="ds", required=True)
    p = ds.add_parser("upload", help="upload an .npz (X, y) or .csv file")
    add_connection_args(p)
    p.add_argument("file", help="the file: .npz (arrays X, y), .csv or .txt")
    p.add_argument("--label", help="csv: label column name or index (default: the last column)")
    p.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                   help="csv: whether the first row is a header (default: detected)")
    p.add_argument("--task", choices=["classification", "regression"], help="csv: default: from the labels")
    p.add_argument("--delimiter", help="csv: field separator (default: ',')")
    p.set_defaults(func=upload)
    p = ds.add_parser("ls", help="list uploaded datasets")
    add_connection_args(p)
    add_json_arg(p)
    p.set_defaults(func=datasets)


def submit(args: argparse.Namespace) -> int:
    from dptrain.core.config import TrainConfig

    spec = load_spec(args.spec, args.overrides)
    TrainConfig.from_dict(spec)  # every error of the spec at once, before anything is sent
    name = args.name or spec.pop("name", None) or Path(args.spec).stem
    spec.pop("name", None)
    with client(args) as c:
        upload_local_data(c, spec, Path(args.spec).parent)
        job = c.submit(spec, name=name)
        console.print(f"submitted job [bold]{job.id}[/bold] ({name})")
        if args.watch:
            try:
                final = follow(c, job.id)
            except KeyboardInterrupt:  # the job is the server's: it goes on without us
                console.print(f"\njob {job.id} is still running on the server: follow it with "
                              f"`dptrain watch {job.id}`, stop it with `dptrain cancel {job.id}`")
                return 130
            return 0 if final.state == 3 else 1  # SUCCEEDED
    return 0


def upload_local_data(c, spec: dict, spec_dir: Path) -> None:
    """A file source whose path is a file here (from the working directory, else the spec's
    folder) is uploaded, and the spec names the upload instead: the server reads uploads,
    never client paths. The same bytes and options give the same id, so a second submit
    stores nothing new."""
    ds = spec.get("dataset")
    if not isinstance(ds, dict) or ds.get("name") not in UPLOAD_FORMATS or not isinstance(ds.get("params"), dict):
        return
    raw = ds["params"].get("path")
    if not isinstance(raw, str):
        return
    path = next((p for p in (Path(raw).expanduser(), spec_dir / raw) if p.is_file()), None)
    if path is None:
        if not re.fullmatch(r"[0-9a-f]{6,64}", raw):
            raise SpecError("dataset.params.path", f"no file {raw!r} here or beside the spec, and not an uploaded "
                                                   f"dataset's id (`dptrain datasets ls`; `dptrain datasets upload "
                                                   f"FILE` uploads one)")
        return  # an uploaded dataset's id, or a prefix: the server resolves it
    opts = {k: ds["params"][k] for k in CSV_OPTIONS if ds["params"].get(k) not in (None, "auto")}
    info = c.upload_dataset(path, **opts)
    console.print(f"uploaded {path} as dataset [bold]{info.id}[/bold] ({info.n} examples)")
    ds["params"] = {**ds["params"], "path": info.id}


def fork(args: argparse.Namespace) -> int:
    """The job's spec as the server stored it (normalized), changed by --set, submitted anew."""
    from dptrain.core.config import TrainConfig
    from dptrain.rpc import convert

    from .specfile import apply_override

    with client(args) as c:
        source = c.get(c.resolve(args.job))
        spec = convert.job_spec_to_dict(source.spec)
        spec.pop("init_from", None)
        if args.from_weights is not None:
            spec["init_from"] = {"job": source.id, "optimizer": args.optimizer_state,
                                 **({"step": args.from_weights} if args.from_weights >= 0 else {})}
        elif args.optimizer_state:
            raise SpecError("--optimizer-state", "goes with --from-weights")
        for item in args.overrides:
            apply_override(spec, item)
        TrainConfig.from_dict(spec)  # every error at once, before anything is sent
        name = args.name or f"{source.name or source.id[:12]}-fork"
        job = c.submit(spec, name=name)
        start = " from its weights" if args.from_weights is not None else ""
        console.print(f"submitted job [bold]{job.id}[/bold] ({name}), a fork of {source.id}{start}")
        if args.watch:
            return 0 if follow(c, job.id).state == 3 else 1  # SUCCEEDED
    return 0


def _state(text: str) -> str:
    """A job state, any case; an unknown one is refused with the list (and a near miss)."""
    state = text.upper()
    if state not in STATES:
        near = difflib.get_close_matches(state, STATES, n=1)
        hint = f" (did you mean {near[0].lower()!r}?)" if near else ""
        raise argparse.ArgumentTypeError(f"unknown state {text!r}{hint}; states: "
                                         + ", ".join(s.lower() for s in STATES))
    return state


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON (the API's messages) instead of a table")


def print_json(messages) -> None:
    """Protobuf messages as JSON with the proto's field names, one document."""
    import json

    from google.protobuf import json_format

    def one(m):
        return json_format.MessageToDict(m, preserving_proto_field_name=True)

    print(json.dumps([one(m) for m in messages] if isinstance(messages, list) else one(messages), indent=2))


def jobs(args: argparse.Namespace) -> int:
    with client(args) as c:
        listed = c.list(args.state or [])
    if args.json:
        print_json(listed)
    else:
        console.print(job_rows(listed))
    return 0


def status(args: argparse.Namespace) -> int:
    with client(args) as c:
        job = c.get(c.resolve(args.job))
    if args.json:
        print_json(job)
    else:
        summary(job)
    return 0


def logs(args: argparse.Namespace) -> int:
    """Print the job's log; with --follow, poll for new lines until the job has ended."""
    import time

    from dptrain.rpc import convert
    from dptrain.store.base import TERMINAL
    from google.protobuf import json_format

    with client(args) as c:
        job_id, after, ended = c.resolve(args.job), 0, False
        while True:
            ended = ended or convert.state_from_pb(c.get(job_id).state) in TERMINAL  # before reading: no line lost
            for line in c.log(job_id, after):
                after = line.seq
                if args.json:  # JSON lines
                    print(json_format.MessageToJson(line, preserving_proto_field_name=True, indent=None), flush=True)
                else:
                    print(f"{line.time.ToDatetime().astimezone():%Y-%m-%d %H:%M:%S}  {line.kind:<10}  {line.message}",
                          flush=True)
            if not args.follow or ended:
                return 0
            time.sleep(0.5)


def watch(args: argparse.Namespace) -> int:
    with client(args) as c:
        final = follow(c, c.resolve(args.job), from_step=args.from_step)
    return 0 if final.state == 3 else 1


def cancel(args: argparse.Namespace) -> int:
    with client(args) as c:
        job = c.cancel(c.resolve(args.job))
    console.print(f"cancelling job {job.id}")
    return 0


def resume(args: argparse.Namespace) -> int:
    with client(args) as c:
        job = c.resume(c.resolve(args.job))
    console.print(f"resumed job {job.id}: queued, continues from step {job.checkpoint_step or 0}")
    return 0


def weights(args: argparse.Namespace) -> int:
    from dptrain.export import save_weights, torch_state_dict

    if not Path(args.output).parent.is_dir():  # before the download, not after
        raise SpecError("output", f"no directory {str(Path(args.output).parent)!r} to write into")
    with client(args) as c:
        job_id = c.resolve(args.job)
        version, step, arrays = c.weights(job_id, args.step)
        if args.layout == "torch":
            from dptrain.rpc import convert

            arrays = torch_state_dict(convert.job_spec_to_dict(c.get(job_id).spec), arrays)
    save_weights(args.output, arrays)
    layout = " in PyTorch's layout (load_state_dict)" if args.layout == "torch" else ""
    console.print(f"wrote {len(arrays)} tensors (version {version}, step {step}){layout} to {args.output}")
    return 0


def export(args: argparse.Namespace) -> int:
    from dptrain.export.to_onnx import OPSET, to_onnx
    from dptrain.rpc import convert

    if not args.output.endswith(".onnx"):
        raise SpecError("output", f"use a .onnx file name, got {args.output!r}")
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise SpecError("export", "needs the onnx package: pip install 'dptrain[onnx]'") from None
    with client(args) as c:
        job_id = c.resolve(args.job)
        version, step, arrays = c.weights(job_id, args.step)
        proto = to_onnx(convert.job_spec_to_dict(c.get(job_id).spec), arrays, name=job_id)
    Path(args.output).write_bytes(proto.SerializeToString())
    console.print(f"wrote {args.output}: ONNX opset {OPSET}, weights of step {step} (version {version}); "
                  f"input 'x' [batch, ...], output 'y' (what predict returns)")
    return 0


def predict(args: argparse.Namespace) -> int:
    from dptrain.export import read_inputs

    X = read_inputs(args.inputs)
    with client(args) as c:
        job_id = c.resolve(args.job)
        out = c.predict(job_id, X)
        if args.labels or args.proba:
            out = _as_classes(out, c.get(job_id).spec.model.loss, args.labels)
    if args.output:
        np.savez(args.output, outputs=out)
        console.print(f"wrote outputs {out.shape} to {args.output}")
    else:
        np.set_printoptions(precision=4, suppress=True)
        print(out)
    return 0


def _as_classes(logits: np.ndarray, loss: str, labels: bool) -> np.ndarray:
    """Logits as probabilities (softmax over the last axis, or a sigmoid per output for
    binary_cross_entropy) or as the predicted class."""
    if loss in ("binary_cross_entropy", "bce", "bce_with_logits"):
        proba = 1.0 / (1.0 + np.exp(-logits))
        return (proba > 0.5).astype(np.int64) if labels else proba
    if labels:
        return logits.argmax(axis=-1)
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def upload(args: argparse.Namespace) -> int:
    opts = {key: getattr(args, key) for key in ("header", "task", "delimiter") if getattr(args, key) is not None}
    if args.label is not None:
        opts["label"] = int(args.label) if args.label.removeprefix("-").isdigit() else args.label
    with client(args) as c:
        info = c.upload_dataset(args.file, **opts)
    console.print(f"dataset [bold]{info.id}[/bold]: {info.n} examples, {info.n_features} features, {info.task}")
    console.print(f"use it as: dataset: {{name: {info.format}, params: {{path: {info.id}}}}}")
    return 0


def datasets(args: argparse.Namespace) -> int:
    from rich.table import Table

    t = Table("id", "file", "format", "n", "features", "task")
    with client(args) as c:
        listed = list(c.datasets())
    if args.json:
        print_json(listed)
        return 0
    for d in listed:
        t.add_row(d.id[:16], d.filename, d.format, str(d.n), str(d.n_features), d.task)
    console.print(t)
    return 0
