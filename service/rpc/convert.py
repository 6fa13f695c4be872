"""Pure conversions between the wire messages and the service's dicts, arrays and records.

Kept outside the servicer so they can be tested without a server:

* job specs: ``pb.JobSpec`` <-> the dict that ``TrainConfig.from_dict`` validates. A
  request is read once, by protobuf's own ``MessageToDict``, then reshaped (attribute maps
  to plain values); validation (and its field-naming errors) stays in ``TrainConfig``.
  Unset ``optional`` fields are omitted so the server defaults apply.
* tensors: raw little-endian bytes + dtype + shape, decoded with ``np.frombuffer``
  (never pickle); every size is checked against the declared shape.
* weights: one version split into ``WeightsUpdate`` chunks under a byte budget, and
  reassembled (see :func:`weights_messages` for the rule).
* metrics, job records, job statistics and dataset infos to their messages.

Sizes are bounded before conversion (`dptrain.rpc.bounds`); `job_spec_to_dict` leaves out
what is not part of the training config (the name, the request id).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, is_dataclass
from typing import Any

import numpy as np
from dptrain.engine.errors import SpecError, show
from dptrain.engine.spec import parse_layer
from dptrain.rpc import bounds, pb
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

DTYPES = ("float32", "float64", "int64")
"""Element types a Tensor may carry."""
DEFAULT_CHUNK_BYTES = 1 << 20
"""Tensor bytes per WeightsUpdate: well under gRPC's 4 MiB default message limit."""

_RESERVED_LAYER = ("op",)
_RESERVED_NODE = ("name", "op", "inputs", "share")
_TOP_MESSAGES = ("name", "model", "dataset", "optimizer", "early_stopping", "init_from")
_NOT_CONFIG = ("request_id",)  # JobSpec fields that are not part of the training config

# --------------------------------------------------------------------------- attributes


def to_attr(value: Any, field: str) -> pb.AttrValue:
    """A Python scalar as an AttrValue; ``None`` becomes the empty (null) value."""
    if value is None:
        return pb.AttrValue()
    if isinstance(value, (bool, np.bool_)):
        return pb.AttrValue(flag=bool(value))
    if isinstance(value, (int, np.integer)):
        return pb.AttrValue(integer=int(value))
    if isinstance(value, (float, np.floating)):
        return pb.AttrValue(number=float(value))
    if isinstance(value, str):
        return pb.AttrValue(text=value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                                for v in value):
        return pb.AttrValue(ints=pb.IntList(values=[int(v) for v in value]))
    raise SpecError(field, f"must be a number, integer, boolean, string or list of integers, got "
                           f"{type(value).__name__} {value!r}")


def _fill_attrs(target: Any, attrs: Mapping[str, Any], path: str) -> None:
    for key, value in attrs.items():
        if not isinstance(key, str):
            raise SpecError(f"{path}.{key}", "attribute names must be strings")
        target[key].CopyFrom(to_attr(value, f"{path}.{key}"))


# --------------------------------------------------------------------------- scalar fields


def _scalars_to_dict(msg: Message, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Scalar fields of ``msg`` as a dict; ``optional`` ones only when set."""
    out: dict[str, Any] = {}
    for f in msg.DESCRIPTOR.fields:
        if f.name in skip or f.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            continue
        if f.has_presence and not msg.HasField(f.name):
            continue
        out[f.name] = getattr(msg, f.name)
    return out


_KINDS = {
    FieldDescriptor.CPPTYPE_INT32: ("an integer", lambda v: isinstance(v, (int, np.integer)), int),
    FieldDescriptor.CPPTYPE_INT64: ("an integer", lambda v: isinstance(v, (int, np.integer)), int),
    FieldDescriptor.CPPTYPE_DOUBLE: ("a number", lambda v: isinstance(v, (int, float, str, np.integer, np.floating)),
                                     float),  # a str: YAML 1.1 reads `lr: 3e-3` as one
    FieldDescriptor.CPPTYPE_BOOL: ("true or false", lambda v: isinstance(v, (bool, np.bool_)), bool),
    FieldDescriptor.CPPTYPE_STRING: ("a string", lambda v: isinstance(v, str), str),
}


def _set_scalars(msg: Message, d: Mapping[str, Any], path: str, skip: tuple[str, ...] = ()) -> None:
    """Copy ``d``'s scalar entries into ``msg``; ``None`` leaves a field unset (server default)."""
    fields = msg.DESCRIPTOR.fields_by_name
    allowed = sorted(n for n in fields if n not in skip)
    for key, value in d.items():
        if key in skip:
            continue
        f = fields.get(key)
        if f is None or f.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            raise SpecError(f"{path}.{key}", f"unknown field; allowed: {allowed}")
        if value is None:
            continue
        what, ok, cast = _KINDS[f.cpp_type]
        is_bool = isinstance(value, (bool, np.bool_))
        if not ok(value) or (is_bool and f.cpp_type != FieldDescriptor.CPPTYPE_BOOL):
            raise SpecError(f"{path}.{key}", f"must be {what}, got {type(value).__name__} {value!r}")
        try:
            setattr(msg, key, cast(value))
        except (TypeError, ValueError) as exc:  # e.g. an integer beyond int64
            raise SpecError(f"{path}.{key}", str(exc)) from None


def _mapping(d: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise SpecError(path, f"must be a mapping, got {type(d).__name__}")
    return d


# --------------------------------------------------------------------------- job specs


def job_spec_to_dict(spec: pb.JobSpec) -> dict[str, Any]:
    """The ``TrainConfig.from_dict`` form of ``spec`` (without the ``name`` label and the
    ``request_id``). Only what the client set: unset fields take the server's defaults."""
    d = json_format.MessageToDict(spec, preserving_proto_field_name=True)
    _int64s(d, spec.DESCRIPTOR)
    for key in ("name", *_NOT_CONFIG):
        d.pop(key, None)
    if "model" in d:
        d["model"] = _model_to_dict(d["model"])
    if "dataset" in d:
        d["dataset"]["params"] = _attrs(d["dataset"].get("params", {}), ())
    schedule = d.get("optimizer", {}).get("schedule")
    if schedule is not None:
        schedule.setdefault("name", "constant")
    return d


def _int64s(d: dict[str, Any], desc: Any) -> None:
    """Proto3 JSON writes 64-bit integers as strings: make them integers again, in place."""
    for f in desc.fields:
        if f.name not in d:
            continue
        value = d[f.name]
        if f.message_type is not None:
            if f.message_type.GetOptions().map_entry:
                inner = f.message_type.fields_by_name["value"].message_type
                items = value.values() if inner is not None else ()
            else:
                inner, items = f.message_type, value if f.is_repeated else (value,)
            for item in items:
                _int64s(item, inner)
        elif f.cpp_type in (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64):
            d[f.name] = [int(v) for v in value] if f.is_repeated else int(value)


def _attrs(attrs: Mapping[str, Any], reserved: tuple[str, ...], path: str = "") -> dict[str, Any]:
    """An AttrValue map (``{"units": {"integer": 3}}``) as plain values; null is None."""
    for key in reserved:
        if key in attrs:
            raise SpecError(f"{path}.attrs.{key}", f"{key!r} is a field of the layer/node, not an attribute")
    return {k: _attr_value(attrs[k]) for k in sorted(attrs)}


def _attr_value(a: Mapping[str, Any]) -> Any:
    """One AttrValue's JSON form as a plain value: {"integer": 3} -> 3, {"ints": {...}} -> a list."""
    kind, value = next(iter(a.items()), (None, None))
    return list(value.get("values", [])) if kind == "ints" else value


def _model_to_dict(m: dict[str, Any]) -> dict[str, Any]:
    d = {"input": _input_to_dict(m), **{k: m[k] for k in ("loss", "output") if k in m}}
    if "label_smoothing" in m:
        d["loss"] = {"name": m.get("loss", ""), "label_smoothing": m["label_smoothing"]}
    if m.get("recompute_ranges"):
        d["recompute"] = [[r.get("first", ""), r.get("last", "")] for r in m["recompute_ranges"]]
    elif m.get("recompute_every"):
        d["recompute"] = m["recompute_every"]
    if "layers" in m:
        d["layers"] = [{"op": layer.get("op", ""), **_attrs(layer.get("attrs", {}), _RESERVED_LAYER,
                                                             f"model.layers[{i}]")}
                       for i, layer in enumerate(m["layers"])]
    if "nodes" in m:
        d["nodes"] = []
        for i, n in enumerate(m["nodes"]):
            node = {"name": n.get("name", ""), "op": n.get("op", ""), "inputs": n.get("inputs", []),
                    **_attrs(n.get("attrs", {}), _RESERVED_NODE, f"model.nodes[{i}]")}
            if n.get("share"):
                node["share"] = n["share"]
            d["nodes"].append(node)
    return d


def _input_to_dict(m: dict[str, Any]) -> Any:
    """ModelSpec's input fields as the spec's `input`: a width, a shape, or token ids."""
    if not m.get("input_shape"):
        return m.get("input", 0)
    if m.get("input") or (not m.get("input_tokens") and m.get("vocab")):
        raise SpecError("model.input", "give either input (features) or input_shape (with input_tokens, vocab)")
    if m.get("input_tokens"):
        return {"shape": m["input_shape"], "dtype": "int", "vocab": m.get("vocab", 0)}
    return m["input_shape"]


def dict_to_job_spec(d: Mapping[str, Any], name: str | None = None) -> pb.JobSpec:
    """The inverse of :func:`job_spec_to_dict`, e.g. for a YAML job file.

    ``d`` may also hold the ``name`` label (or pass ``name``). Sequential layers may use
    the shorthand strings (``"linear 64"``); they are sent as ``{op, attrs}``.
    """
    d = _mapping(d, "job")
    spec = pb.JobSpec()
    label = d.get("name") if name is None else name
    if label is not None:
        if not isinstance(label, str):
            raise SpecError("job.name", f"must be a string, got {label!r}")
        spec.name = label
    _set_scalars(spec, d, "job", skip=_TOP_MESSAGES)
    if d.get("model") is not None:
        _fill_model(spec.model, _mapping(d["model"], "model"))
    if d.get("dataset") is not None:
        ds = _mapping(d["dataset"], "dataset")
        spec.dataset.SetInParent()
        _set_scalars(spec.dataset, ds, "dataset", skip=("params",))
        if ds.get("params") is not None:
            _fill_attrs(spec.dataset.params, _mapping(ds["params"], "dataset.params"), "dataset.params")
    if d.get("optimizer") is not None:
        opt = _mapping(d["optimizer"], "optimizer")
        spec.optimizer.SetInParent()
        _set_scalars(spec.optimizer, opt, "optimizer", skip=("schedule",))
        if opt.get("schedule") is not None:
            sched = _mapping(opt["schedule"], "optimizer.schedule")
            spec.optimizer.schedule.SetInParent()
            _set_scalars(spec.optimizer.schedule, sched, "optimizer.schedule")
    for key in ("early_stopping", "init_from"):
        if d.get(key) is not None:
            getattr(spec, key).SetInParent()
            _set_scalars(getattr(spec, key), _mapping(d[key], key), key)
    return spec


def _fill_model(m: pb.ModelSpec, d: Mapping[str, Any]) -> None:
    _set_scalars(m, d, "model", skip=("layers", "nodes", "input", "loss", "recompute"))
    m.SetInParent()
    _fill_input(m, d.get("input"))
    loss = d.get("loss")
    if isinstance(loss, Mapping):
        extra = sorted(set(loss) - {"name", "label_smoothing"})
        if extra:
            raise SpecError(f"model.loss.{extra[0]}", "unknown field; allowed: ['label_smoothing', 'name']")
        _set_scalars(m, {"loss": loss.get("name"), "label_smoothing": loss.get("label_smoothing")}, "model.loss")
    else:
        _set_scalars(m, {"loss": loss}, "model")
    recompute = d.get("recompute")
    if isinstance(recompute, list):
        for i, r in enumerate(recompute):
            if not (isinstance(r, list) and len(r) == 2 and all(isinstance(s, str) for s in r)):
                raise SpecError(f"model.recompute[{i}]", f"must be a [first, last] pair of node names, got {r!r}")
            m.recompute_ranges.add(first=r[0], last=r[1])
    elif recompute is not None:
        _set_scalars(m, {"recompute_every": recompute}, "model.recompute")
    layers = d.get("layers")
    if layers is not None:
        if not isinstance(layers, list):
            raise SpecError("model.layers", f"must be a list, got {type(layers).__name__}")
        for i, layer in enumerate(layers):
            path = f"model.layers[{i}]"
            op, attrs = parse_layer(layer, path)  # "linear 64": the engine's one parser of the shorthand
            if not isinstance(op, str):
                raise SpecError(f"{path}.op", f"must be an op name, got {show(op)}")
            _fill_attrs(m.layers.add(op=op).attrs, attrs, path)
    nodes = d.get("nodes")
    if nodes is not None:
        if not isinstance(nodes, list):
            raise SpecError("model.nodes", f"must be a list, got {type(nodes).__name__}")
        for i, raw in enumerate(nodes):
            path = f"model.nodes[{i}]"
            raw = _mapping(raw, path)
            inputs = raw.get("inputs", [])
            inputs = [inputs] if isinstance(inputs, str) else inputs
            if not isinstance(inputs, list) or not all(isinstance(s, str) for s in inputs):
                raise SpecError(f"{path}.inputs", f"must be a list of node names, got {inputs!r}")
            node = m.nodes.add(inputs=inputs)
            _set_scalars(node, {k: raw.get(k) for k in ("name", "op", "share")}, path)
            attrs = {k: v for k, v in raw.items() if k not in _RESERVED_NODE}
            _fill_attrs(node.attrs, attrs, path)


def _fill_input(m: pb.ModelSpec, value: Any) -> None:
    """The spec's `input` (a width, a shape, or {shape, dtype, vocab}) as ModelSpec fields."""
    if value is None or (isinstance(value, (int, np.integer)) and not isinstance(value, bool)):
        _set_scalars(m, {"input": value}, "model")
        return
    if isinstance(value, Mapping):
        extra = sorted(set(value) - {"shape", "dtype", "vocab"})
        if extra:
            raise SpecError(f"model.input.{extra[0]}", "unknown field; allowed: ['dtype', 'shape', 'vocab']")
        shape, tokens = value.get("shape"), value.get("dtype", "float") == "int"
        _set_scalars(m, {"input_tokens": tokens, "vocab": value.get("vocab")}, "model.input")
    else:
        shape = value
    shape = [shape] if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool) else shape
    if not isinstance(shape, list) or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool)
                                              for s in shape):
        raise SpecError("model.input", f"must be an integer, a list of integers or {{shape, dtype, vocab}}, "
                                       f"got {show(value)}")
    m.input_shape.extend(int(s) for s in shape)


# --------------------------------------------------------------------------- tensors


def to_tensor(name: str, array: Any) -> pb.Tensor:
    """``array`` as a Tensor (C order, little-endian); the dtype must be in :data:`DTYPES`."""
    a = np.asarray(array)
    if a.dtype.name not in DTYPES:
        raise SpecError(f"{name}.dtype", f"must be one of {list(DTYPES)}, got {a.dtype.name}")
    return pb.Tensor(name=name, dtype=a.dtype.name, shape=a.shape, data=_le_bytes(a))


def from_tensor(t: pb.Tensor, field: str | None = None) -> np.ndarray:
    """Decode a Tensor; errors name ``field`` (default: the tensor's name).

    The result is a read-only view of the message's bytes; copy it to modify it.
    """
    return _decode(t.dtype, t.shape, t.data, field or t.name or "tensor")


def _le_bytes(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()


def _decode(dtype: str, shape: Iterable[int], data: bytes | bytearray, field: str) -> np.ndarray:
    if dtype not in DTYPES:
        raise SpecError(f"{field}.dtype", f"must be one of {list(DTYPES)}, got {bounds.clip(dtype)}")
    shape = tuple(int(s) for s in shape)
    if len(shape) > bounds.TENSOR_DIMS or any(s < 0 for s in shape):
        raise SpecError(f"{field}.shape", f"must be at most {bounds.TENSOR_DIMS} non-negative sizes, "
                                          f"got {list(shape[:bounds.TENSOR_DIMS + 1])}")
    wire = np.dtype(dtype).newbyteorder("<")
    expected = math.prod(shape) * wire.itemsize
    if len(data) != expected:
        raise SpecError(f"{field}.data", f"has {len(data)} bytes; shape {list(shape)} of {dtype} needs {expected}")
    return np.frombuffer(data, dtype=wire).reshape(shape).astype(np.dtype(dtype), copy=False)


# --------------------------------------------------------------------------- weights


def weights_messages(version: int, step: int, arrays: Mapping[str, np.ndarray],
                     max_bytes: int = DEFAULT_CHUNK_BYTES, job_id: str = "") -> list[pb.WeightsUpdate]:
    """Split one weights version into chunks carrying at most ``max_bytes`` of tensor data.

    Tensors are packed in order; one that does not fit is cut, its remaining bytes
    continuing as the first entry of the next chunk, with the same name, dtype and
    shape. Reassembly (:func:`assemble_weights`): in chunk_index order, concatenate the
    data of consecutive entries with the same name. Leave headroom below the transport
    limit: each entry adds its name, dtype and shape to the ``max_bytes`` of data.
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    chunks = [pb.WeightsUpdate(job_id=job_id, version=version, step=step)]
    used = 0
    for name, array in arrays.items():
        a = np.asarray(array)
        if a.dtype.name not in DTYPES:
            raise SpecError(f"weights.{name}.dtype", f"must be one of {list(DTYPES)}, got {a.dtype.name}")
        data = memoryview(_le_bytes(a))
        offset = 0
        while True:
            if used >= max_bytes and chunks[-1].tensors:
                chunks.append(pb.WeightsUpdate(job_id=job_id, version=version, step=step))
                used = 0
            take = min(max_bytes - used, len(data) - offset)
            chunks[-1].tensors.add(name=name, dtype=a.dtype.name, shape=a.shape,
                                   data=bytes(data[offset:offset + take]))
            used, offset = used + take, offset + take
            if offset >= len(data):
                break
    for i, chunk in enumerate(chunks):
        chunk.chunk_index, chunk.chunk_count = i, len(chunks)
    return chunks


def assemble_weights(messages: Iterable[pb.WeightsUpdate]) -> dict[str, np.ndarray]:
    """Reassemble one version from its chunks (see :func:`weights_messages`).

    Checks that the chunks are complete, of one version, and that every tensor has
    exactly the bytes its shape needs. The arrays are writable and own their memory.
    """
    chunks = sorted(messages, key=lambda m: m.chunk_index)
    if not chunks:
        raise SpecError("weights", "no chunks")
    first = chunks[0]
    if [m.chunk_index for m in chunks] != list(range(first.chunk_count)):
        got = [m.chunk_index for m in chunks]
        raise SpecError("weights.chunk_index", f"expected chunks 0..{first.chunk_count - 1}, got {got}")
    for m in chunks:
        if (m.version, m.step, m.job_id, m.chunk_count) != (first.version, first.step, first.job_id, first.chunk_count):
            raise SpecError("weights.version", f"chunk {m.chunk_index} belongs to version {m.version} "
                            f"(step {m.step}), chunk 0 to version {first.version} (step {first.step})")
    out: dict[str, np.ndarray] = {}
    name, meta, buf = None, None, bytearray()

    def finish() -> None:
        if name is not None:
            out[name] = _decode(meta[0], meta[1], buf, f"weights.{name}")

    for m in chunks:
        for t in m.tensors:
            if t.name == name:
                if (t.dtype, tuple(t.shape)) != meta:
                    raise SpecError(f"weights.{name}", "pieces disagree on dtype or shape")
                buf += t.data
                continue
            finish()
            if t.name in out:
                raise SpecError(f"weights.{t.name}", "appears twice in one version")
            name, meta, buf = t.name, (t.dtype, tuple(t.shape)), bytearray(t.data)
    finish()
    return out


# --------------------------------------------------------------------------- metrics, records


def metrics_to_pb(m: Any) -> pb.StepMetrics:
    """A ``dptrain.core.telemetry.StepMetrics`` (or its ``as_dict()`` form) as a message."""
    d = asdict(m) if is_dataclass(m) else dict(m)
    workers = d.pop("workers", None) or []
    msg = pb.StepMetrics(**{k: v for k, v in d.items() if v is not None})
    for w in workers:
        msg.workers.add(**(asdict(w) if is_dataclass(w) else w))
    return msg


def metrics_from_pb(msg: pb.StepMetrics) -> dict[str, Any]:
    """The ``StepMetrics.as_dict()`` form; unset optional values are ``None``."""
    d: dict[str, Any] = {}
    for f in msg.DESCRIPTOR.fields:
        if f.name == "workers":
            d["workers"] = [_scalars_to_dict(w) for w in msg.workers]
        else:
            d[f.name] = getattr(msg, f.name) if not f.has_presence or msg.HasField(f.name) else None
    return d


def state_to_pb(state: str) -> int:
    """``"RUNNING"`` -> ``pb.JOB_STATE_RUNNING``."""
    return pb.JobState.Value(f"JOB_STATE_{state}")


def state_from_pb(state: int) -> str:
    """``pb.JOB_STATE_RUNNING`` -> ``"RUNNING"``."""
    return pb.JobState.Name(state).removeprefix("JOB_STATE_")


def _stamp(target: Any, seconds: float) -> None:
    """Unix seconds into a Timestamp, exact for the float's fractional part."""
    whole = math.floor(seconds)
    nanos = round((seconds - whole) * 1e9)
    target.seconds, target.nanos = (whole + 1, 0) if nanos >= 1_000_000_000 else (whole, nanos)


def record_to_job(rec: Any) -> pb.Job:
    """A ``dptrain.store.JobRecord`` as a Job message."""
    job = pb.Job(id=rec.id, name=rec.name, state=state_to_pb(rec.state), step=rec.step,
                 total_steps=rec.total_steps, epoch=rec.epoch, error=rec.error or "")
    job.spec.CopyFrom(dict_to_job_spec(rec.spec, name=rec.name))
    _stamp(job.created, rec.created)
    if rec.started is not None:
        _stamp(job.started, rec.started)
    if rec.finished is not None:
        _stamp(job.finished, rec.finished)
    if rec.last_metrics:
        job.latest_metrics.CopyFrom(metrics_to_pb(rec.last_metrics))
    if rec.checkpoint_step is not None:
        job.checkpoint_step = rec.checkpoint_step
    return job


def stats_to_pb(stats: Mapping[str, Any]) -> pb.JobStats:
    """``Trainer.stats()`` as a JobStats message.

    ``epochs`` are the ledger's reports (``dptrain.core.ledger.EpochReport``: sealed epochs,
    hence complete unless an entry says ``complete: False``); ``workers`` the pool's
    worker infos (``node_id``, ``pid``, ``transport``).
    """
    msg = pb.JobStats(failures=int(stats.get("failures") or 0))
    for r in stats.get("epochs") or ():
        msg.epochs.add(epoch=r["epoch"], used_once=r["used_once"], duplicated=r["duplicated"],
                       unused=r["unused"], complete=r.get("complete", True))
    for w in stats.get("workers") or ():
        msg.workers.add(worker=w.get("worker", 0), node=str(w.get("node_id") or ""), pid=int(w.get("pid") or 0),
                        transport=str(w.get("transport") or ""))
    return msg


def dataset_info_to_pb(info: Mapping[str, Any]) -> pb.DatasetInfo:
    """A dataset registry entry (``JobStore.get_dataset``) as a DatasetInfo message."""
    msg = pb.DatasetInfo()
    lists = {"x_shape", "y_shape"}
    known = set(msg.DESCRIPTOR.fields_by_name) - {"created"} - lists  # the registry may keep more (csv options)
    _set_scalars(msg, {k: v for k, v in info.items() if k in known}, "dataset_info")
    for key in lists:
        getattr(msg, key).extend(int(d) for d in info.get(key) or ())
    if info.get("created") is not None:
        _stamp(msg.created, info["created"])
    return msg
