"""Every bound the API puts on what a client sends, in one place.

A request over a bound is refused with INVALID_ARGUMENT naming the field, before anything
else happens: before a job is stored, a tensor decoded or the store asked. Strings are
bounded so that a label, an id or an option can never make a record, a listing or an
error message huge (a 40 MiB job name once made every ListJobs fail); repeated fields so
that walking a request costs a bounded amount of work. Numbers are bounded where a huge
value would only fail later, at run time (``workers: 1000000000``, a timeout of 5e-324 s).

The wire checks (:func:`check_job_spec`, :func:`check_job_id`, ...) read the protobuf
messages; the numeric ranges are declared by the specs themselves with these constants
(``Int(1, bounds.WORKERS)`` in ``dptrain.core.config``, ``dptrain.core.schedules``), so a YAML
file run locally meets the same ones and the JSON Schema (``dptrain schema``) states them.
A client string shown in an error is clipped (``clip``: ``dptrain.engine.errors.show``). This module imports nothing
of the service, so the specs can use it.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from dptrain.engine.errors import SpecError
from dptrain.engine.errors import show as clip
from dptrain.engine.spec import Limits as _EngineLimits

# --- strings ----------------------------------------------------------------------------
NAME_CHARS = 256
"""JobSpec.name: a label shown in listings."""
WORD_CHARS = 64
"""Names: ops, losses, nodes, attribute and parameter keys, dataset/optimizer/schedule names, dtypes."""
TEXT_CHARS = 256
"""A text value: an op attribute, a dataset parameter, a tensor's name."""
JOB_ID = re.compile(r"[0-9a-f]{20}")
"""A job id as the server makes them: 20 lowercase hex digits."""
DATASET_ID = re.compile(r"[0-9a-f]{6,64}")  # an uploaded dataset's id, or a prefix (6+ digits) of one
"""An uploaded dataset's id: the file's sha256 in lowercase hex."""
REQUEST_ID_CHARS = 128
REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,%d}" % REQUEST_ID_CHARS)
"""JobSpec.request_id (idempotency key); empty means none."""
PAGE_TOKEN = re.compile(r"[0-9]{1,19}")
"""ListJobsRequest.page_token: ASCII digits of a number below 2**63 (the store's sequence)."""
ERROR_CHARS = 1000
"""A status message, at most (a last guard: every message is short by construction)."""
"""Characters of a client string quoted in an error message."""

UPLOAD_FORMATS = {"npz": "npz", "csv": "csv", "text": "txt"}
"""Each file source and the format (file extension) of its uploads: over the API, such a
source's params.path is an uploaded dataset's id, and an upload's format is one of these."""
CSV_OPTIONS = ("label", "header", "task", "delimiter")
"""How a csv upload is parsed: fixed when it is uploaded (the dataset's id covers them)."""

# --- repeated fields -------------------------------------------------------------------
NODES = _EngineLimits().max_nodes
"""ModelSpec.layers or ModelSpec.nodes entries (the engine's own limit)."""
INPUTS = NODES
"""Node.inputs entries."""
ATTRS = 16
"""Attributes of one layer or node (no op has more than a few)."""
DATASET_PARAMS = 16
"""DatasetSpec.params entries."""
STATES = 16
"""ListJobsRequest.states entries."""
TENSOR_DIMS = 32
"""Tensor.shape entries (numpy's own limit)."""

# --- numbers (applied by the specs) ----------------------------------------------------
INT64_MAX = 2**63 - 1
WORKERS = 256
"""JobSpec.workers, at most."""
CPUS_PER_WORKER = (0.01, 1024.0)
"""JobSpec.cpus_per_worker, inclusive (Ray keeps fractions to 1e-4)."""
WORKER_TIMEOUT_S = (0.1, 86400.0)
"""JobSpec.worker_timeout_s, inclusive: a step's answer deadline per worker."""
RECOVERY_BUDGET_S = (1.0, 86400.0)
"""JobSpec.recovery_budget_s, inclusive: starting a replacement worker takes about a second."""
BATCH_SIZE = 1 << 24
"""JobSpec.batch_size and chunk_size, at most (the largest dataset has far fewer examples)."""
EPOCHS = 1_000_000
"""JobSpec.epochs, at most."""
STEPS = 1_000_000_000
"""JobSpec.steps, val_every, checkpoint_every and the schedule's step counts, at most."""
SEED = INT64_MAX
"""JobSpec.seed, at most."""


def check_text(value: str, field: str, limit: int) -> None:
    if len(value) > limit:
        raise SpecError(field, f"must be at most {limit} characters, got {len(value)}")


def check_count(items: Any, field: str, limit: int) -> None:
    if len(items) > limit:
        raise SpecError(field, f"must have at most {limit} entries, got {len(items)}")


# --- ids and request fields ------------------------------------------------------------


def check_job_id(job_id: str, field: str = "job_id") -> str:
    """A well-formed job id (unknown ones are NOT_FOUND later, malformed ones never exist)."""
    if not job_id:
        raise SpecError(field, "required")
    if not JOB_ID.fullmatch(job_id):
        raise SpecError(field, f"must be a job id (20 lowercase hex digits), got {clip(job_id)}")
    return job_id


def check_request_id(request_id: str) -> None:
    if request_id and not REQUEST_ID.fullmatch(request_id):
        raise SpecError("job.request_id", f"must be at most {REQUEST_ID_CHARS} characters of "
                                          f"[A-Za-z0-9_.:-], got {clip(request_id)}")


def page_token(token: str) -> str:
    """``token`` if the store could have issued it (ASCII digits below 2**63)."""
    if token and not (PAGE_TOKEN.fullmatch(token) and int(token) <= INT64_MAX):
        raise SpecError("page_token", f"must be a next_page_token from an earlier ListJobs, got {clip(token)}")
    return token


def check_states(states: Any, known: Any) -> None:
    """ListJobsRequest.states: at most :data:`STATES` entries, each a JobState value."""
    check_count(states, "states", STATES)
    for i, s in enumerate(states):
        if s not in known:
            raise SpecError(f"states[{i}]", f"must be a JobState value {sorted(known)}, got {s}")


def check_tensor(t: Any, field: str) -> None:
    """A Tensor's strings and shape, before any byte of it is decoded."""
    check_text(t.name, f"{field}.name", TEXT_CHARS)
    check_text(t.dtype, f"{field}.dtype", WORD_CHARS)
    check_count(t.shape, f"{field}.shape", TENSOR_DIMS)


# --- job specs -------------------------------------------------------------------------


def check_job_spec(spec: Any) -> None:
    """Every string and repeated field of a ``pb.JobSpec`` within its bound."""
    check_text(spec.name, "job.name", NAME_CHARS)
    check_request_id(spec.request_id)
    if spec.HasField("dtype"):
        check_text(spec.dtype, "job.dtype", WORD_CHARS)
    if spec.HasField("model"):
        _check_model(spec.model)
    if spec.HasField("dataset"):
        _check_dataset(spec.dataset)
    if spec.HasField("optimizer"):
        check_text(spec.optimizer.name, "optimizer.name", WORD_CHARS)
        check_text(spec.optimizer.schedule.name, "optimizer.schedule.name", WORD_CHARS)
    check_text(spec.early_stopping.metric, "early_stopping.metric", WORD_CHARS)
    check_text(spec.init_from.job, "init_from.job", WORD_CHARS)


def _check_model(m: Any) -> None:
    check_text(m.loss, "model.loss", WORD_CHARS)
    check_text(m.output, "model.output", WORD_CHARS)
    check_count(m.input_shape, "model.input_shape", 4)
    check_count(m.recompute_ranges, "model.recompute_ranges", NODES)
    for i, r in enumerate(m.recompute_ranges):
        check_text(r.first, f"model.recompute_ranges[{i}].first", WORD_CHARS)
        check_text(r.last, f"model.recompute_ranges[{i}].last", WORD_CHARS)
    check_count(m.layers, "model.layers", NODES)
    check_count(m.nodes, "model.nodes", NODES)
    for i, layer in enumerate(m.layers):
        where = f"model.layers[{i}]"
        check_text(layer.op, f"{where}.op", WORD_CHARS)
        _check_attrs(layer.attrs, f"{where}.attrs", ATTRS)
    for i, node in enumerate(m.nodes):
        where = f"model.nodes[{i}]"
        for key in ("name", "op", "share"):
            check_text(getattr(node, key), f"{where}.{key}", WORD_CHARS)
        check_count(node.inputs, f"{where}.inputs", INPUTS)
        for j, name in enumerate(node.inputs):
            check_text(name, f"{where}.inputs[{j}]", WORD_CHARS)
        _check_attrs(node.attrs, f"{where}.attrs", ATTRS)


def _check_dataset(ds: Any) -> None:
    check_text(ds.name, "dataset.name", WORD_CHARS)
    _check_attrs(ds.params, "dataset.params", DATASET_PARAMS)
    if ds.name in UPLOAD_FORMATS and "path" in ds.params:
        ref = ds.params["path"]
        if ref.WhichOneof("value") != "text" or not DATASET_ID.fullmatch(ref.text):
            shown = clip(ref.text) if ref.WhichOneof("value") == "text" else "a non-string"
            raise SpecError("dataset.params.path", f"must be the id of an uploaded dataset (64 hex digits, or a "
                                                   f"unique prefix of 6 or more; see ListDatasets), got {shown}")


def _check_attrs(attrs: Mapping[str, Any], field: str, limit: int) -> None:
    """A map of AttrValues: its size, its keys' and its text values' lengths."""
    check_count(attrs, field, limit)
    for key, value in attrs.items():
        if len(key) > WORD_CHARS:
            raise SpecError(field, f"keys must be at most {WORD_CHARS} characters, got one of {len(key)}")
        if value.WhichOneof("value") == "text":
            check_text(value.text, f"{field}.{key}", TEXT_CHARS)
        elif value.WhichOneof("value") == "ints":
            check_count(value.ints.values, f"{field}.{key}", 4)

