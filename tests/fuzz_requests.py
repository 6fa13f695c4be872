"""Malformed and hostile requests for every RPC of the service, generated deterministically.

Each :class:`Case` is one call: which method, how it is sent, the request, and what a
correct server must answer (:class:`Expect`). ``tests/test_hardening_fuzz.py`` sends them
to a real server. The cases come from a seeded ``random.Random``, so a failure seen once
is seen on every run, with the same label.

Families: mutations of a valid job spec (wrong types, huge / negative / NaN / infinite
numbers, huge strings, huge or deep layer lists, unknown ops and attributes, unicode),
pairs of them, bad job ids for every method taking one, bad page tokens / page sizes /
states, bad stream parameters, bad Predict tensors, hostile uploads (no header, two
headers, no end marker, wrong sizes, a zip bomb, garbage archives, odd CSV options) and
raw bytes that may not even decode, sent to every method, health and reflection.
"""
from __future__ import annotations

import io
import math
import random
import re
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import grpc
import numpy as np
from dptrain.rpc import convert, pb
from google.protobuf import message_factory

C = grpc.StatusCode
REFUSALS = frozenset({C.INVALID_ARGUMENT, C.NOT_FOUND, C.FAILED_PRECONDITION, C.RESOURCE_EXHAUSTED,
                      C.OUT_OF_RANGE})
"""Codes that refuse a bad request properly; anything else (INTERNAL, UNKNOWN, UNAVAILABLE, a
deadline) means the request broke or hung the server."""
BIG = 4 << 20
"""Characters of the largest strings sent (a few of them: total traffic stays modest)."""
LONG = 100_000
"""Characters of a long string: far over any sane bound, cheap to send many times."""
PAIR_BYTES = 16 << 10
"""Only mutations smaller than this are paired (the huge ones are sent once each)."""
I64 = 2**63 - 1
NAN, INF = math.nan, math.inf
FLOATS_BAD = (0.0, -1.0, NAN, INF, -INF, 5e-324, 1e308)
"""Values no duration or CPU count may take."""


# --------------------------------------------------------------------------- expectations


def field_re(path: str) -> str:
    """A regex finding ``path`` in a status message. An index may carry the node's name
    ("model.nodes[0] (a).inputs"), and a JobSpec field may go without its "job." ("workers")."""
    rx = re.escape(path).replace(r"\]", r"\](?: \([^)]*\))?")
    if path.startswith("job."):
        rx = rf"(?:job\.)?{re.escape(path[4:])}"
    return rf"(?<![\w]){rx}(?![\w])"


def attr_res(where: str, key: str) -> tuple[str, ...]:
    return field_re(f"{where}.{key}"), field_re(f"{where}.attrs.{key}")


@dataclass(frozen=True)
class Expect:
    """What a correct server answers.

    ``fields``: regexes; a refusal (INVALID_ARGUMENT or RESOURCE_EXHAUSTED) must match one,
    i.e. name the field the case made bad. Empty: the message must at least start with a
    field path (``"job_id: ..."``). ``reject``: the request is bad, so OK is a failure.
    ``codes``: acceptable refusal codes. ``not_found``: a regex a NOT_FOUND message must match.
    """

    fields: tuple[str, ...] = ()
    reject: bool = False
    codes: frozenset = REFUSALS
    not_found: str | None = None


def bad(*paths: str, codes: frozenset = REFUSALS) -> Expect:
    """A request the server must refuse, naming one of ``paths``."""
    return Expect(tuple(field_re(p) for p in paths), True, codes)


def either(*paths: str) -> Expect:
    """A request the server may accept; if it refuses, the message names one of ``paths``."""
    return Expect(tuple(field_re(p) for p in paths), False)


@dataclass
class Case:
    """One call. ``request``: a message, a list of messages (client streams), or bytes /
    a list of bytes when ``raw``. ``check``: an extra test of a successful response (returns
    why it is wrong, or None)."""

    label: str
    method: str
    request: Any
    expect: Expect
    raw: bool = False
    check: Callable[[Any], str | None] | None = None
    family: str = ""

    def __post_init__(self) -> None:
        self.family = self.family or self.label.split(":")[0]


# --------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    path: str
    client_streaming: bool
    server_streaming: bool
    response_type: Any = None  # None: the response is read as bytes


def _trainer_methods() -> dict[str, Method]:
    service = pb.DESCRIPTOR.services_by_name["Trainer"]
    return {m.name: Method(f"/{service.full_name}/{m.name}", m.client_streaming, m.server_streaming,
                           message_factory.GetMessageClass(m.output_type))
            for m in service.methods}


TRAINER = _trainer_methods()
OTHER = {
    "Health.Check": Method("/grpc.health.v1.Health/Check", False, False),
    "Health.Watch": Method("/grpc.health.v1.Health/Watch", False, True),
    "Reflection": Method("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True, True),
    "Reflection.v1": Method("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", True, True),
    "Unknown": Method("/dptrain.v1.Trainer/DropTables", False, False),
}
METHODS = {**TRAINER, **OTHER}


@dataclass
class Context:
    """What the cases refer to: a finished job (SUCCEEDED, with checkpoints), a cancelled one,
    an uploaded npz dataset (5 features, 2 classes) and the job every spec mutation starts from."""

    done_id: str
    cancelled_id: str
    dataset_id: str
    base: dict[str, Any]


# --------------------------------------------------------------------------- job specs

Mutation = tuple[str, Callable[[pb.JobSpec], None], Expect]


def _set(path: str, value: Any) -> Callable[[pb.JobSpec], None]:
    """Sets a scalar at a dotted path ("optimizer.schedule.gamma")."""
    *parents, leaf = path.split(".")

    def mutate(s: pb.JobSpec) -> None:
        msg = s
        for p in parents:
            msg = getattr(msg, p)
        setattr(msg, leaf, value)

    return mutate


def _attr(value: Any) -> pb.AttrValue:
    if isinstance(value, pb.AttrValue):
        return value
    return convert.to_attr(value, "attr")


def _layer(i: int, op: str, **attrs: Any) -> Callable[[pb.JobSpec], None]:
    def mutate(s: pb.JobSpec) -> None:
        layer = s.model.layers[i]
        layer.op = op
        layer.attrs.clear()
        for k, v in attrs.items():
            layer.attrs[k].CopyFrom(_attr(v))

    return mutate


def _layer_attr(i: int, key: str, value: Any) -> Callable[[pb.JobSpec], None]:
    def mutate(s: pb.JobSpec) -> None:
        s.model.layers[i].attrs[key].CopyFrom(_attr(value))

    return mutate


def _steps(*fns: Callable[[pb.JobSpec], None]) -> Callable[[pb.JobSpec], None]:
    def mutate(s: pb.JobSpec) -> None:
        for fn in fns:
            fn(s)

    return mutate


def _dataset(name: str, params: dict[str, Any], n_in: int, n_out: int, loss: str = "cross_entropy",
             **extra: Any) -> Callable[[pb.JobSpec], None]:
    """Switches the job to another dataset, with a model that fits it (so only the mutated
    parameter is wrong)."""

    def mutate(s: pb.JobSpec) -> None:
        s.dataset.Clear()
        s.dataset.name = name
        for k, v in params.items():
            s.dataset.params[k].CopyFrom(_attr(v))
        for k, v in extra.items():
            setattr(s.dataset, k, v)
        s.model.input = n_in
        s.model.loss = loss
        s.model.layers[-1].attrs["units"].CopyFrom(_attr(n_out))

    return mutate


def _dag(nodes: list[dict[str, Any]], output: str = "") -> Callable[[pb.JobSpec], None]:
    def mutate(s: pb.JobSpec) -> None:
        s.model.ClearField("layers")
        s.model.ClearField("nodes")
        for d in nodes:
            node = s.model.nodes.add(name=d["name"], op=d["op"], inputs=d["inputs"], share=d.get("share", ""))
            for k, v in d.items():
                if k not in ("name", "op", "inputs", "share"):
                    node.attrs[k].CopyFrom(_attr(v))
        s.model.output = output

    return mutate


DAG = [{"name": "h", "op": "linear", "inputs": ["x"], "units": 8},
       {"name": "a", "op": "tanh", "inputs": ["h"]},
       {"name": "out", "op": "linear", "inputs": ["a"], "units": 10}]


def _dag_with(i: int, **changes: Any) -> list[dict[str, Any]]:
    nodes = [dict(n) for n in DAG]
    nodes[i].update(changes)
    return nodes


def job_mutations(dataset_id: str) -> list[Mutation]:
    """Single mutations of the base job; each names the field it breaks. ``dataset_id``: an
    uploaded npz of 5 features and 2 classes."""
    muts: list[Mutation] = []

    def add(label: str, fn: Callable[[pb.JobSpec], None], expect: Expect) -> None:
        muts.append((label, fn, expect))

    # --- top-level integers and numbers
    for name, lo, huge_ok in (("batch_size", 1, True), ("chunk_size", 1, True), ("epochs", 1, True),
                              ("steps", 1, True), ("seed", 0, True), ("val_every", 0, True),
                              ("checkpoint_every", 0, True)):
        for v in (-1, -I64 - 1) + ((0,) if lo else ()):
            add(f"job.{name} = {v}", _set(name, v), bad(f"job.{name}"))
        for v in (I64, 10**18):
            add(f"job.{name} = {v}", _set(name, v), either(f"job.{name}"))
    for v in (0, -1, 9, 16, 1000, 10**9, I64):  # 9 workers x 0.25 CPU > the cluster's 2
        add(f"job.workers = {v}", _set("workers", v), bad("job.workers", "job.cpus_per_worker"))
    for name in ("cpus_per_worker", "worker_timeout_s", "recovery_budget_s"):
        for v in FLOATS_BAD:
            add(f"job.{name} = {v!r}", _set(name, v), bad(f"job.{name}"))
    add("job.cpus_per_worker = 3.0 (over the cluster)", _set("cpus_per_worker", 3.0),
        bad("job.cpus_per_worker", "job.workers"))
    for v in ("float16", "", "FLOAT32", "float32\x00", "ž" * 10, "d" * LONG):
        add(f"job.dtype = {v[:20]!r}", _set("dtype", v), bad("job.dtype"))
    for v in ("x" * BIG, "x" * LONG):
        add(f"job.name = {len(v)} chars", _set("name", v), bad("job.name"))
    for v in ("名前 🚀", "\x00\n\t\r", "'; DROP TABLE jobs; --", "%s%n%x"):
        add(f"job.name = {v!r}", _set("name", v), either("job.name"))
    for v in ("r" * 1000, "bad id!", "ü", "\x00", "a/b"):
        add(f"job.request_id = {v[:20]!r}", _set("request_id", v), bad("job.request_id"))

    # --- model: scalars
    for v in (0, -1, -I64 - 1, 10, 10**7, I64):
        add(f"model.input = {v}", _set("model.input", v), bad("model.input"))
    for v in ("hinge", "", "交叉熵", "l" * LONG):
        add(f"model.loss = {v[:20]!r}", _set("model.loss", v), bad("model.loss"))
    for v in ("nope", "o" * LONG):
        add(f"model.output = {v[:20]!r} (layers form)", _set("model.output", v), bad("model.output"))
    add("model: no layers, no nodes", lambda s: s.model.ClearField("layers"), bad("model"))
    add("model: both layers and nodes", lambda s: s.model.nodes.add(name="n", op="relu", inputs=["x"]),
        bad("model", "model.nodes", "model.layers"))

    # --- model: layers
    for op in ("swish", "", "RELU", "relu\x00", "relu " * 3, "ŕelu", "o" * LONG, "o" * BIG):
        add(f"model.layers[1].op = {op[:20]!r}", _layer(1, op), bad("model.layers[1].op", "model.layers[1]"))
    add("model.layers[1] = linear without units", _layer(1, "linear"),
        Expect(attr_res("model.layers[1]", "units"), True))
    for v in (0, -1, -I64 - 1, 10**6, 2**62, 16385, "64", 8.5, True, pb.AttrValue()):
        shown = "null" if isinstance(v, pb.AttrValue) else repr(v)
        add(f"model.layers[0].units = {shown}", _layer_attr(0, "units", v),
            Expect(attr_res("model.layers[0]", "units"), True))
    for v in (1, "yes", 0.5):
        add(f"model.layers[0].bias = {v!r}", _layer_attr(0, "bias", v),
            Expect(attr_res("model.layers[0]", "bias"), True))
    add("model.layers[1].foo = 1 (unknown attribute)", _layer_attr(1, "foo", 1),
        Expect(attr_res("model.layers[1]", "foo") + (field_re("model.layers[1]"),), True))
    for key in ("k" * 1000, "", "ключ", "op"):
        add(f"model.layers[1] attribute key {key[:10]!r} ({len(key)} chars)", _layer_attr(1, key, 1),
            bad("model.layers[1]"))
    add("model.layers[1]: 1000 attributes",
        _steps(*(_layer_attr(1, f"a{i}", i) for i in range(1000))), bad("model.layers[1]"))
    for op, key, values in (("leaky_relu", "alpha", (NAN, INF, -INF, "0.1")),
                            ("elu", "alpha", (NAN, INF)),
                            ("pow", "exponent", (1e308, NAN, INF, -INF, -1e308)),
                            ("prelu", "init", (NAN, INF))):
        for v in values:
            add(f"model.layers[1] = {op} {key}={v!r}", _layer(1, op, **{key: v}),
                Expect(attr_res("model.layers[1]", key), True))
    for v in (0.0, 0.5, 1e-300, 1e6):
        add(f"model.layers[1] = leaky_relu alpha={v!r}", _layer(1, "leaky_relu", alpha=v),
            Expect(attr_res("model.layers[1]", "alpha")))
    for start, stop in ((5, 2), (0, 10**12), (0, 0), (-I64 - 1, I64), (-1, 5)):
        add(f"model.layers[1] = slice {start}:{stop}", _layer(1, "slice", start=start, stop=stop),
            Expect((field_re("model.layers[1]"),), start >= 0 or stop == I64))
    add("model.layers[1] = slice without stop", _layer(1, "slice", start=0), bad("model.layers[1]"))
    add("model.layers: 513 relu", lambda s: s.model.layers.extend([pb.Layer(op="relu")] * 513), bad("model.layers"))
    add("model.layers: 100000 relu", lambda s: s.model.layers.extend([pb.Layer(op="relu")] * 100_000),
        bad("model.layers"))
    add("model.layers: 200 tanh (deep)", lambda s: s.model.layers.extend([pb.Layer(op="tanh")] * 200),
        either("model.layers"))
    wide = [pb.Layer(op="linear", attrs={"units": _attr(16384)}), pb.Layer(op="relu")] * 3
    add("model.layers: 3 x linear 16384 (too many parameters)",
        lambda s: _insert(s, 1, wide), bad("model", "model.layers"))

    # --- model: nodes (the DAG form)
    add("model.nodes: valid DAG", _dag(DAG), either("model"))
    for i, changes, path in ((0, {"inputs": ["a"]}, "model.nodes[0].inputs"),
                             (1, {"inputs": ["zzz"]}, "model.nodes[1].inputs"),
                             (1, {"inputs": []}, "model.nodes[1].inputs"),
                             (1, {"inputs": ["h", "h"]}, "model.nodes[1].inputs"),
                             (1, {"inputs": ["x"] * 100_000}, "model.nodes[1].inputs"),
                             (1, {"inputs": ["y" * LONG]}, "model.nodes[1].inputs"),
                             (1, {"name": "h"}, "model.nodes[1].name"),
                             (0, {"name": "x"}, "model.nodes[0].name"),
                             (0, {"name": ""}, "model.nodes[0].name"),
                             (0, {"name": "名"}, "model.nodes[0].name"),
                             (0, {"name": "n" * LONG}, "model.nodes[0].name"),
                             (1, {"op": "nope"}, "model.nodes[1].op"),
                             (2, {"share": "zzz"}, "model.nodes[2].share"),
                             (2, {"share": "h"}, "model.nodes[2].share"),
                             (2, {"share": "s" * LONG}, "model.nodes[2].share"),
                             (1, {"foo": 1}, "model.nodes[1]")):
        shown = {k: (v[:3] + ["..."] if isinstance(v, list) and len(v) > 3 else
                     v[:12] if isinstance(v, str) else v) for k, v in changes.items()}
        add(f"model.nodes[{i}] {shown}", _dag(_dag_with(i, **changes)), bad(path, f"model.nodes[{i}]"))
    for out in ("nope", "o" * LONG, "x"):
        add(f"model.output = {out[:10]!r} (DAG)", _dag(DAG, output=out), bad("model.output"))
    add("model.nodes: 600 nodes", _dag([DAG[0]] + [{"name": f"t{i}", "op": "tanh",
                                                    "inputs": ["h" if i == 0 else f"t{i - 1}"]}
                                                   for i in range(599)]), bad("model.nodes"))

    # --- dataset
    for v in ("imagenet", "", "DIGITS", "数字", "d" * LONG, "npz\x00"):
        add(f"dataset.name = {v[:12]!r}", _set("dataset.name", v), bad("dataset.name"))
    for v in (1.0, 1.5, -0.1, NAN, INF, -INF):
        add(f"dataset.val_fraction = {v!r}", _set("dataset.val_fraction", v), bad("dataset.val_fraction"))
    add("dataset.seed = -1", _set("dataset.seed", -1), bad("dataset.seed"))
    add("dataset.params.n = 5 (digits takes none)", _dataset("digits", {"n": 5}, 64, 10), bad("dataset.params.n"))
    teacher = {"n": 256, "d": 64, "classes": 10}
    for key, values in (("n", (-3, 0, 10**9, 10**18, I64, "100", 100.5, True)),
                        ("classes", (0, 1, 10**6, -1)), ("hidden", (0, -1, 10**9)), ("seed", (-1,))):
        for v in values:
            out = v if key == "classes" and isinstance(v, int) and 0 < v < 10**5 else 10
            add(f"dataset teacher params.{key} = {v!r}", _dataset("teacher", {**teacher, key: v}, 64, out),
                bad(f"dataset.params.{key}"))
    for d in (0, 100_001, 10**9):
        add(f"dataset teacher params.d = {d}", _dataset("teacher", {**teacher, "d": d}, max(d, 1), 10),
            bad("dataset.params.d", "model.input"))
    add("dataset teacher n=10**6, d=10**5 (800 GB)",
        _dataset("teacher", {"n": 10**6, "d": 10**5, "classes": 10}, 10**5, 10),
        bad("dataset.params.n", "dataset.params.d", "dataset.params", "model.input"))
    add("dataset teacher params.foo = 1", _dataset("teacher", {**teacher, "foo": 1}, 64, 10),
        bad("dataset.params.foo"))
    add("dataset teacher: 1000 params", _dataset("teacher", {f"p{i}": i for i in range(1000)}, 64, 10),
        bad("dataset.params"))
    add("dataset teacher param key of 1000 chars", _dataset("teacher", {**teacher, "k" * 1000: 1}, 64, 10),
        bad("dataset.params"))
    for v in (NAN, INF, -1.0):
        add(f"dataset spirals params.noise = {v!r}", _dataset("spirals", {"noise": v}, 2, 3),
            bad("dataset.params.noise"))
        add(f"dataset blobs params.spread = {v!r}", _dataset("blobs", {"spread": v}, 2, 3),
            bad("dataset.params.spread"))
    add("dataset regression params.outputs = 0", _dataset("regression", {"outputs": 0}, 16, 1, "mse"),
        bad("dataset.params.outputs"))
    for path in ("/etc/passwd", "../../jobs.sqlite", "a" * 64, "0" * 64, "", "p" * LONG, 5, None):
        params = {} if path is None else {"path": path}
        add(f"dataset npz params.path = {str(path)[:16]!r}", _dataset("npz", params, 5, 2),
            bad("dataset.params.path"))
    add("dataset npz (uploaded), model.input = 6", _dataset("npz", {"path": dataset_id}, 6, 2), bad("model.input"))
    add("dataset csv naming an npz upload", _dataset("csv", {"path": dataset_id}, 5, 2),
        bad("dataset.name", "dataset.params.path"))
    add("dataset npz (uploaded) params.label = 0", _dataset("npz", {"path": dataset_id, "label": 0}, 5, 2),
        bad("dataset.params.label"))
    add("dataset npz (uploaded), a valid job", _dataset("npz", {"path": dataset_id}, 5, 2), either("dataset"))

    # --- optimizer and schedule (the base is adam)
    for v in ("lion", "", "ADAM", "адам", "o" * LONG):
        add(f"optimizer.name = {v[:12]!r}", _set("optimizer.name", v), bad("optimizer.name"))
    for v in (0.0, -1.0, NAN, INF, -INF):
        add(f"optimizer.lr = {v!r}", _set("optimizer.lr", v), bad("optimizer.lr"))
    for v in (5e-324, 1e308):
        add(f"optimizer.lr = {v!r}", _set("optimizer.lr", v), either("optimizer.lr"))
    for key, values in (("beta1", (1.0, -0.1, NAN, INF, 2.0)), ("beta2", (1.0, -0.1, NAN, INF)),
                        ("eps", (0.0, -1.0, NAN, INF)), ("weight_decay", (-1.0, NAN, INF)),
                        ("clip_norm", (0.0, -1.0, NAN, INF, -INF))):
        for v in values:
            add(f"optimizer.{key} = {v!r}", _set(f"optimizer.{key}", v), bad(f"optimizer.{key}"))
    add("optimizer.momentum on adam (does nothing)", _set("optimizer.momentum", 0.9), bad("optimizer.momentum"))
    add("optimizer.alpha on adam (does nothing)", _set("optimizer.alpha", 0.99), bad("optimizer.alpha"))
    add("optimizer.momentum on sgd", _steps(_set("optimizer.name", "sgd"), _set("optimizer.momentum", 0.5)),
        bad("optimizer.momentum"))
    for v in (-0.1, 1.0, 1.5, NAN, INF):
        add(f"optimizer momentum.momentum = {v!r}",
            _steps(_set("optimizer.name", "momentum"), _set("optimizer.momentum", v)), bad("optimizer.momentum"))
    for v in (-1.0, 1.0, NAN, INF):
        add(f"optimizer rmsprop.alpha = {v!r}",
            _steps(_set("optimizer.name", "rmsprop"), _set("optimizer.alpha", v)), bad("optimizer.alpha"))
    for v in ("linear", "s" * LONG, "CONSTANT"):
        add(f"optimizer.schedule.name = {v[:12]!r}", _set("optimizer.schedule.name", v),
            bad("optimizer.schedule.name"))
    for v in (-1, -I64 - 1):
        add(f"optimizer.schedule.warmup_steps = {v}", _set("optimizer.schedule.warmup_steps", v),
            bad("optimizer.schedule.warmup_steps"))
    step = _set("optimizer.schedule.name", "step")
    for v in (0, -1):
        add(f"optimizer.schedule step.step_size = {v}", _steps(step, _set("optimizer.schedule.step_size", v)),
            bad("optimizer.schedule.step_size"))
    for v in (0.0, 1.5, NAN, INF, -1.0):
        add(f"optimizer.schedule step.gamma = {v!r}", _steps(step, _set("optimizer.schedule.gamma", v)),
            bad("optimizer.schedule.gamma"))
    add("optimizer.schedule.gamma on constant (does nothing)", _set("optimizer.schedule.gamma", 0.5),
        bad("optimizer.schedule.gamma"))
    cosine = _set("optimizer.schedule.name", "cosine")
    add("optimizer.schedule.step_size on cosine (does nothing)",
        _steps(cosine, _set("optimizer.schedule.step_size", 10)), bad("optimizer.schedule.step_size"))
    for v in (0, -1):
        add(f"optimizer.schedule cosine.total_steps = {v}", _steps(cosine, _set("optimizer.schedule.total_steps", v)),
            bad("optimizer.schedule.total_steps"))
    for v in (-1.0, NAN, INF, 1.0):  # 1.0 > lr
        add(f"optimizer.schedule cosine.min_lr = {v!r}", _steps(cosine, _set("optimizer.schedule.min_lr", v)),
            bad("optimizer.schedule.min_lr"))
    return muts


def _insert(s: pb.JobSpec, i: int, layers: list[pb.Layer]) -> None:
    kept = list(s.model.layers)
    del s.model.layers[:]
    s.model.layers.extend(kept[:i] + layers + kept[i:])


def submit_cases(ctx: Context, rng: random.Random, pairs: int) -> list[Case]:
    """Every single mutation, then `pairs` random pairs of mutations that must each be refused."""
    base = convert.dict_to_job_spec(ctx.base)
    muts = job_mutations(ctx.dataset_id)

    def spec(*fns: Callable[[pb.JobSpec], None]) -> pb.JobSpec:
        s = pb.JobSpec()
        s.CopyFrom(base)
        for fn in fns:
            fn(s)
        return s

    out = [Case(f"SubmitJob: {label}", "SubmitJob", spec(fn), expect) for label, fn, expect in muts]
    refused = [m for m, case in zip(muts, out) if m[2].reject and case.request.ByteSize() < PAIR_BYTES]
    while len(out) < len(muts) + pairs:
        (la, fa, ea), (lb, fb, eb) = rng.sample(refused, 2)
        try:
            both = spec(fa, fb)
        except IndexError:  # the first took away what the second changes (the layers, say)
            continue
        out.append(Case(f"SubmitJob pair: {la} + {lb}", "SubmitJob", both,
                        Expect(ea.fields + eb.fields, True, ea.codes | eb.codes), family="SubmitJob pair"))
    return out


# --------------------------------------------------------------------------- ids and listings

NO_JOB = r"no job"
"""A NOT_FOUND for a job id says so ("no job with id X")."""


def bad_ids(ctx: Context) -> list[tuple[str, Expect]]:
    refuse = Expect((field_re("job_id"),), True, REFUSALS, NO_JOB)
    maybe = Expect((field_re("job_id"),), False, REFUSALS, NO_JOB)
    return [("", refuse), ("nope", refuse), ("x" * LONG, refuse), ("ジョブ", refuse), ("\x00", refuse),
            ("../../etc/passwd", refuse), ("' OR '1'='1", refuse), ("%s%s%n", refuse),
            ("0" * 20, refuse), ("f" * 20, refuse), ("0" * 40, refuse), (" " + ctx.done_id, refuse),
            (ctx.done_id + "\n", refuse), (ctx.done_id + "0", refuse),
            (ctx.done_id.upper(), maybe), (ctx.done_id[:6], maybe)]


def id_cases(ctx: Context) -> list[Case]:
    inputs = convert.to_tensor("inputs", np.zeros((1, 64), np.float32))
    makers = {
        "GetJob": lambda i: pb.GetJobRequest(job_id=i),
        "CancelJob": lambda i: pb.CancelJobRequest(job_id=i),
        "ResumeJob": lambda i: pb.ResumeJobRequest(job_id=i),
        "WatchJob": lambda i: pb.WatchJobRequest(job_id=i),
        "StreamWeights": lambda i: pb.StreamWeightsRequest(job_id=i),
        "GetWeights": lambda i: pb.GetWeightsRequest(job_id=i),
        "Predict": lambda i: pb.PredictRequest(job_id=i, inputs=inputs),
    }
    return [Case(f"{m}: job_id = {i[:24]!r}{'...' if len(i) > 24 else ''}", m, make(i), expect)
            for i, expect in bad_ids(ctx) for m, make in makers.items()]


def list_cases() -> list[Case]:
    out = []
    token_only = frozenset({C.INVALID_ARGUMENT})
    for t in ("²", "9" * 20, "-1", "garbage", "1" * 10_000, "٣", " 1", "1e3", "\x00", "0x10",
              "18446744073709551616", "9223372036854775808", "1.0", "+1"):
        out.append(Case(f"ListJobs: page_token = {t[:24]!r}", "ListJobs", pb.ListJobsRequest(page_token=t),
                        Expect((field_re("page_token"),), True, token_only)))
    for t in ("0", "1", str(I64)):
        out.append(Case(f"ListJobs: page_token = {t!r}", "ListJobs", pb.ListJobsRequest(page_token=t),
                        either("page_token")))
    for n in (-1, -2**31):
        out.append(Case(f"ListJobs: page_size = {n}", "ListJobs", pb.ListJobsRequest(page_size=n),
                        bad("page_size")))
    for n in (2**31 - 1, 1_000_000):
        out.append(Case(f"ListJobs: page_size = {n}", "ListJobs", pb.ListJobsRequest(page_size=n),
                        either("page_size")))
    states_re = (r"(?<![\w])states(?:\[\d+\])?(?![\w])",)
    for states in ([99], [-1], [2**31 - 1], [1, 99], [-2**31]):
        out.append(Case(f"ListJobs: states = {states}", "ListJobs", pb.ListJobsRequest(states=states),
                        Expect(states_re, True, token_only)))
    for states in ([1] * 17, [1] * 100_000, [0], [0, 1, 2, 3, 4, 5]):
        shown = states if len(states) < 10 else f"[1] * {len(states)}"
        out.append(Case(f"ListJobs: states = {shown}", "ListJobs", pb.ListJobsRequest(states=states),
                        Expect(states_re)))
    out.append(Case("ListJobs: states = [99], page_token = '²'", "ListJobs",
                    pb.ListJobsRequest(states=[99], page_token="²"),
                    Expect(states_re + (field_re("page_token"),), True, token_only)))
    out.append(Case("ListDatasets: empty request", "ListDatasets", pb.ListDatasetsRequest(), Expect()))
    return out


def stream_cases(ctx: Context) -> list[Case]:
    done = ctx.done_id
    out = []
    for n in (-1, 4097, 2**31 - 1, -2**31):
        out.append(Case(f"WatchJob: max_batch = {n}", "WatchJob", pb.WatchJobRequest(job_id=done, max_batch=n),
                        bad("max_batch")))
    for n in (0, 1, 4096):
        out.append(Case(f"WatchJob: max_batch = {n}", "WatchJob", pb.WatchJobRequest(job_id=done, max_batch=n),
                        Expect()))
    for s in (-1, -I64 - 1):
        out.append(Case(f"WatchJob: from_step = {s}", "WatchJob", pb.WatchJobRequest(job_id=done, from_step=s),
                        bad("from_step")))
    out.append(Case(f"WatchJob: from_step = {I64}", "WatchJob", pb.WatchJobRequest(job_id=done, from_step=I64),
                    Expect()))
    out.append(Case("WatchJob: a cancelled job", "WatchJob", pb.WatchJobRequest(job_id=ctx.cancelled_id), Expect()))
    for n in (-1, -2**31, 2**31 - 1, 0):
        for job, what in ((done, "finished"), (ctx.cancelled_id, "cancelled")):
            out.append(Case(f"StreamWeights: every_n_steps = {n} ({what} job)", "StreamWeights",
                            pb.StreamWeightsRequest(job_id=job, every_n_steps=n),
                            Expect((field_re("every_n_steps"), field_re("job_id")), n < 0)))
    for s in (-1, -I64 - 1):
        out.append(Case(f"GetWeights: step = {s}", "GetWeights", pb.GetWeightsRequest(job_id=done, step=s),
                        bad("step")))
    for s in (I64, 999, 0):
        out.append(Case(f"GetWeights: step = {s}", "GetWeights", pb.GetWeightsRequest(job_id=done, step=s),
                        Expect((field_re("step"),))))
    out.append(Case("GetWeights: a cancelled job without weights", "GetWeights",
                    pb.GetWeightsRequest(job_id=ctx.cancelled_id), Expect()))
    out.append(Case("CancelJob: a finished job", "CancelJob", pb.CancelJobRequest(job_id=done), Expect(reject=True)))
    out.append(Case("CancelJob: a cancelled job", "CancelJob", pb.CancelJobRequest(job_id=ctx.cancelled_id),
                    Expect(reject=True)))
    out.append(Case("ResumeJob: a finished job", "ResumeJob", pb.ResumeJobRequest(job_id=done), Expect(reject=True)))
    return out


# --------------------------------------------------------------------------- predict


def predict_cases(ctx: Context) -> list[Case]:
    def t(shape: list[int], dtype: str = "float32", data: bytes | None = None, name: str = "inputs") -> pb.Tensor:
        if data is None:
            n = math.prod(shape) if all(0 <= s < 2**20 for s in shape) else 0
            data = b"\0" * (n * 4 if n < 2**22 else 0)
        return pb.Tensor(name=name, dtype=dtype, shape=shape, data=data)

    tensors = [
        ("shape [2, 64], 12 bytes", t([2, 64], data=b"\0" * 12), True),
        ("shape [2**40, 2**40]", t([2**40, 2**40]), True),
        ("shape [2**62, 2**62, 2**62]", t([2**62] * 3), True),
        ("shape [-1, 64]", t([-1, 64], data=b"\0" * 256), True),
        ("shape [1, -64]", t([1, -64]), True),
        ("shape [] (a scalar)", t([], data=b"\0" * 4), True),
        ("shape [64] (1-D)", t([64]), True),
        ("shape [1] * 40", t([1] * 40, data=b"\0" * 4), True),
        ("shape [1] * 100000", t([1] * 100_000, data=b"\0" * 4), True),
        ("shape [2, 3] (wrong width)", t([2, 3]), True),
        ("shape [100001, 64], no data", t([100_001, 64], data=b""), True),
        ("shape [1, 64], 3 MB of data", t([1, 64], data=b"\1" * (3 << 20)), True),
        ("shape [0, 64] (empty batch)", t([0, 64]), False),
        ("dtype float64", t([1, 64], "float64", b"\0" * 512), False),
        ("NaN and inf inputs", pb.Tensor(name="inputs", dtype="float32", shape=[2, 64],
                                         data=np.array([np.nan, np.inf] * 64, np.float32).tobytes()), False),
        ("name of 100000 chars", t([1, 64], name="n" * LONG), True),
        ("no inputs tensor", None, True),
    ]
    for dtype in ("object", "float16", "", "<f4", "f" * LONG, "float32\x00", "int8", "bool", "complex128", "V4"):
        tensors.append((f"dtype {dtype[:12]!r}", t([1, 64], dtype), True))
    out = []
    for label, tensor, reject in tensors:
        req = pb.PredictRequest(job_id=ctx.done_id)
        if tensor is not None:
            req.inputs.CopyFrom(tensor)
        out.append(Case(f"Predict: inputs {label}", "Predict", req,
                        Expect((field_re("inputs"), r"(?<![\w])inputs\.\w+"), reject)))
    return out


# --------------------------------------------------------------------------- uploads

CONTENT = (r"(?<![\w])(X|y)(?![\w])", r"'X'|'y'", r"\bline \d+", r"\bcolumn\b", r"(?<![\w])data(?![\w])",
           r"(?<![\w])dataset(?![\w])", r"\bpath\b", r"\bnpz\b", r"\bcsv\b", r"\bzip\b", r"\barchive\b")
"""What a refused file's message may name: the array, the line or column, or the file itself."""
END = (field_re("end"), field_re("end.size_bytes"), field_re("size_bytes"), field_re("header.size_bytes"))


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def valid_npz() -> bytes:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 5)).astype(np.float32)
    return _npz(X=X, y=(X[:, 0] > 0).astype(np.int64))


@lru_cache(maxsize=None)
def zip_bomb(rows: int = 1_000_000, cols: int = 256) -> bytes:
    """An .npz of zeros that inflates to ~rows*cols*4 bytes (1 GiB) from about 1 MB, built
    without ever holding the arrays."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for name, shape, dtype in (("X.npy", (rows, cols), "<f4"), ("y.npy", (rows,), "<i8")):
            with z.open(name, "w", force_zip64=True) as f:
                np.lib.format.write_array_header_2_0(f, {"descr": dtype, "fortran_order": False, "shape": shape})
                left, chunk = math.prod(shape) * np.dtype(dtype).itemsize, bytes(4 << 20)
                while left > 0:
                    f.write(chunk[:left])
                    left -= len(chunk)
    return buf.getvalue()


def _zip(**files: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def _upload(header: pb.DatasetHeader | None, data: bytes, end: bool = True, declared: int | None = None,
            chunk: int = 1 << 20) -> list[pb.DatasetChunk]:
    msgs = [] if header is None else [pb.DatasetChunk(header=header)]
    msgs += [pb.DatasetChunk(data=data[i:i + chunk]) for i in range(0, len(data), chunk)]
    if end:
        msgs.append(pb.DatasetChunk(end=pb.DatasetEnd(size_bytes=len(data) if declared is None else declared)))
    return msgs


def _hdr(fmt: str, data: bytes, **kw: Any) -> pb.DatasetHeader:
    kw.setdefault("filename", f"f.{fmt}")
    kw.setdefault("size_bytes", len(data))
    return pb.DatasetHeader(format=fmt, **kw)


CSV = b"a,b,c\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n"


def upload_cases() -> list[Case]:
    good = valid_npz()
    npz = _hdr("npz", good)
    out: list[Case] = []

    def add(label: str, msgs: list[pb.DatasetChunk], expect: Expect, check: Any = None) -> None:
        out.append(Case(f"UploadDataset: {label}", "UploadDataset", msgs, expect, check=check))

    head = (field_re("header"), r"\bheader\b")
    add("no messages", [], Expect(head, True))
    add("data before the header", [pb.DatasetChunk(data=good)] + _upload(npz, good)[1:], Expect(head, True))
    add("only an end marker", [pb.DatasetChunk(end=pb.DatasetEnd(size_bytes=0))], Expect(head, True))
    add("two headers", [pb.DatasetChunk(header=npz)] + _upload(npz, good),
        Expect(head + (field_re("chunk"),), True))
    add("header after data", _upload(npz, good, end=False) + [pb.DatasetChunk(header=npz)],
        Expect(head + (field_re("chunk"),) + END, True))
    add("no end marker", _upload(npz, good, end=False), Expect(END, True))
    add("end marker 1 byte short", _upload(npz, good, declared=len(good) - 1), Expect(END, True))
    add("end marker of -1 bytes", _upload(npz, good, declared=-1), Expect(END, True))
    add("header size 5 bytes over", _upload(_hdr("npz", good, size_bytes=len(good) + 5), good), Expect(END, True))
    add("data after the end marker", _upload(npz, good) + [pb.DatasetChunk(data=b"tail")],
        Expect(END + (field_re("chunk"),), True))
    add("two end markers", _upload(npz, good) + [pb.DatasetChunk(end=pb.DatasetEnd(size_bytes=len(good)))],
        Expect(END + (field_re("chunk"),), True))
    add("truncated file, sizes agreeing", _upload(_hdr("npz", good[:-100]), good[:-100]), Expect(CONTENT, True))
    add("an empty file", _upload(_hdr("npz", b""), b""), Expect(CONTENT + END, True))
    fmt = (field_re("header.format"), field_re("format"))
    for f in ("exe", "", "NPZ", "f" * LONG, "npz\x00"):
        add(f"header.format = {f[:12]!r}", _upload(_hdr(f, good), good), Expect(fmt, True))
    for n in (-1, I64):
        add(f"header.size_bytes = {n}", _upload(_hdr("npz", good, size_bytes=n), good),
            Expect((field_re("header.size_bytes"), field_re("size_bytes")), True))
    for name in ("f" * LONG, "f" * BIG):
        add(f"header.filename of {len(name)} chars", _upload(_hdr("npz", good, filename=name), good),
            Expect((field_re("header.filename"), field_re("filename")), True))
    add("header.filename = '../../../etc/passwd'", _upload(_hdr("npz", good, filename="../../../etc/passwd"), good),
        Expect((field_re("header.filename"),)))
    add("a zip bomb: 1 MB inflating to 1 GiB", _upload(_hdr("npz", zip_bomb()), zip_bomb()), Expect(CONTENT, True))
    add("a zip bomb of 2M rows", _upload(_hdr("npz", zip_bomb(2_000_000, 1)), zip_bomb(2_000_000, 1)),
        Expect(CONTENT, True))
    rng = random.Random(7)
    garbage = bytes(rng.randrange(256) for _ in range(4096))
    rx = np.random.default_rng(1).standard_normal((10, 3))
    for label, data in (("random bytes", garbage), ("a zip of a text file", _zip(**{"hello.txt": b"hi"})),
                        ("object arrays (a pickle)", _npz(X=np.array([{"a": 1}] * 3, dtype=object), y=np.zeros(3))),
                        ("no y", _npz(X=rx)), ("X and y of different lengths", _npz(X=rx, y=np.zeros(7))),
                        ("5-D X (examples have 1 to 4 axes)", _npz(X=np.zeros((4, 2, 2, 2, 2)), y=np.zeros(4))),
                        ("NaN in X", _npz(X=np.full((4, 2), np.nan), y=np.zeros(4))),
                        ("a string X", _npz(X=np.array([["a", "b"]] * 4), y=np.zeros(4))),
                        ("npy header claiming 2**40 rows",
                         _zip(**{"X.npy": _npy_header("<f4", (2**40, 4)), "y.npy": _npy_header("<i8", (2**40,))})),
                        ("a zip with 10000 members", _zip(**{f"m{i}.npy": b"" for i in range(10_000)}))):
        add(f"npz: {label}", _upload(_hdr("npz", data), data), Expect(CONTENT, True))
    add("npz: a CSV option (delimiter) on an npz upload", _upload(_hdr("npz", good, delimiter=";"), good),
        bad("header.delimiter", "delimiter"))
    add("npz: a CSV option (task) on an npz upload", _upload(_hdr("npz", good, task="regression"), good),
        bad("header.task", "task"))
    add("npz: a CSV option (label) on an npz upload", _upload(_hdr("npz", good, label_index=0), good),
        bad("header.label_index", "label", "header.label"))
    for label, data in (("ragged rows", b"1,2,3\n4,5\n6,7,8\n"), ("non-numeric", b"1,2,0\n3,oops,1\n"),
                        ("only a header", b"a,b,c\n"), ("a 1e400", b"1,2,0\n1e400,1,1\n"),
                        ("invalid UTF-8", b"1,2,0\n\xff\xfe,1,1\n"), ("a NUL byte", b"1,2,0\n\x00,1,1\n"),
                        ("a line of 2 MB", b"1," * (1 << 20) + b"0\n")):
        add(f"csv: {label}", _upload(_hdr("csv", data), data), Expect(CONTENT, True))
    for d in (",,", "\n", "\r", '"', "d" * LONG, "ab"):
        add(f"csv: delimiter = {d[:8]!r}", _upload(_hdr("csv", CSV, delimiter=d), CSV),
            bad("header.delimiter", "delimiter"))
    add("csv: delimiter = '\\x00'", _upload(_hdr("csv", CSV, delimiter="\x00"), CSV),
        Expect((field_re("header.delimiter"), field_re("delimiter")) + CONTENT))
    label = (field_re("header.label_name"), field_re("header.label_index"), field_re("label"), field_re("params.label"))
    for kw, reject in (({"label_name": "zzz"}, True), ({"label_name": "l" * LONG}, True),
                       ({"label_index": 2**62}, True), ({"label_index": -I64 - 1}, True), ({"label_index": 3}, True),
                       ({"label_index": -1}, False), ({"label_name": ""}, False)):  # the last column; unset
        add(f"csv: {list(kw)[0]} = {str(list(kw.values())[0])[:12]!r}", _upload(_hdr("csv", CSV, **kw), CSV),
            Expect(label, reject))
    for task in ("clustering", "t" * LONG, "REGRESSION"):
        add(f"csv: task = {task[:12]!r}", _upload(_hdr("csv", CSV, task=task), CSV), bad("header.task", "task"))
    add("csv: header = false on a file with a header row", _upload(_hdr("csv", CSV, header=False), CSV),
        Expect(CONTENT))

    def must_be_regression(info: pb.DatasetInfo) -> str | None:
        return None if info.task == "regression" else f"returned task {info.task!r}: the first upload's parse"

    add("csv: the same bytes again, first as classification", _upload(_hdr("csv", CSV), CSV), Expect())
    add("csv: the same bytes again with task = 'regression'", _upload(_hdr("csv", CSV, task="regression"), CSV),
        Expect((field_re("header.task"), field_re("task"))), check=must_be_regression)
    return out


def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


# --------------------------------------------------------------------------- raw bytes


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def garbage(rng: random.Random, valid: bytes) -> list[tuple[str, bytes]]:
    """Byte strings that a method's request type may or may not decode."""
    field1_bad_utf8 = b"\x0a\x04\xff\xfe\xfd\xfc"
    deep_groups = _varint((1000 << 3) | 3) * 200
    out = [("empty", b""), ("one 0xff", b"\xff"), ("64 x 0xff", b"\xff" * 64),
           ("field 1 holding invalid UTF-8", field1_bad_utf8),
           ("a varint of 11 bytes", b"\x08" + b"\xff" * 10 + b"\x01"),
           ("a length of 2**31 with 3 bytes", b"\x0a" + _varint(2**31) + b"abc"),
           ("200 nested groups", deep_groups),
           ("unknown field 99999", _varint((99999 << 3) | 2) + _varint(5) + b"hello"),
           ("wrong wire type for field 1", b"\x0d\x01\x02\x03\x04"),
           ("an end-group tag alone", b"\x0c"),
           ("field number 0", b"\x00\x01"),
           ("the valid request truncated", valid[:max(0, len(valid) - 3)]),
           ("the valid request + junk", valid + b"\xff\x01"),
           ("64 KiB of zeros", bytes(64 << 10))]
    for i in range(12):
        n = rng.choice((1, 2, 3, 5, 8, 17, 100, 1000, 4096))
        out.append((f"{n} random bytes #{i}", bytes(rng.randrange(256) for _ in range(n))))
    return out


def raw_cases(ctx: Context, rng: random.Random) -> list[Case]:
    valid = {
        "SubmitJob": convert.dict_to_job_spec(ctx.base).SerializeToString(),
        "GetJob": pb.GetJobRequest(job_id=ctx.done_id).SerializeToString(),
        "WatchJob": pb.WatchJobRequest(job_id=ctx.done_id, max_batch=8).SerializeToString(),
        "Predict": pb.PredictRequest(job_id=ctx.done_id, inputs=convert.to_tensor(
            "inputs", np.zeros((1, 64), np.float32))).SerializeToString(),
    }
    out = []
    for name in METHODS:
        for label, data in garbage(rng, valid.get(name, b"\x0a\x02ab")):
            request: Any = [data, data] if METHODS[name].client_streaming else data
            out.append(Case(f"{name} raw: {label}", name, request, Expect(), raw=True, family=f"{name} raw"))
    return out


# --------------------------------------------------------------------------- all


def all_cases(ctx: Context, seed: int = 0, pairs: int = 300) -> list[Case]:
    """Every case, in a fixed order (same seed, same cases)."""
    rng = random.Random(seed)
    return (submit_cases(ctx, rng, pairs) + id_cases(ctx) + list_cases() + stream_cases(ctx)
            + predict_cases(ctx) + upload_cases() + raw_cases(ctx, rng))


