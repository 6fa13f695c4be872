"""A training job as data: what to train, on what, how, and with how many workers.

Everything that changes the resulting weights (model, data, optimizer, batch size,
chunk size, seed, dtype) is separated from what must not (workers, CPUs, deadlines):
the second group can change mid-run without moving the trajectory by one bit.

Declared once, as a pydantic model (``dptrain.engine.validation``): the same declaration
validates a client's job (every error at once, each naming its field), gives the defaults,
and is the JSON Schema that ``dptrain schema`` prints and docs/spec.md shows.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from dptrain.core.early import EarlyStoppingSpec
from dptrain.core.optim import OptimizerSpec, drop_unused
from dptrain.data import DatasetSpec
from dptrain.engine import Model, ModelSpec, SpecError
from dptrain.engine.spec import json_schema as model_json_schema
from dptrain.engine.validation import Flag, Int, Num, Spec, fail, parse, several
from dptrain.rpc import bounds
from pydantic import Field, PlainValidator, WithJsonSchema, model_validator


class InitFromSpec(Spec):
    """Start from another job's weights (a server job: its checkpoints are in the server's store)."""

    job: str = Field(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$",
                     description="the other job's id (or a unique prefix)")
    step: Int(0, bounds.STEPS) | None = Field(None, description="one of its checkpoints' steps (default: its latest)")
    optimizer: Flag = Field(False, description="also take its optimizer state (an optimizer of the same kind)")

    def to_dict(self) -> dict:
        return self.model_dump()


def _standardized(model: ModelSpec) -> ModelSpec:
    """The model with a `standardize` node reading the input, and every reader of the input
    reading it instead (no change if it has one already: a stored spec, or a fork)."""
    if any(n.op == "standardize" for n in model.nodes):
        return model
    if model.input.dtype == "int":
        raise fail("token ids are not standardized: leave dataset.standardize unset for a token model",
                   "dataset.standardize")
    taken = {n.name for n in model.nodes}
    name = next(c for c in ("standardize", *(f"standardize{i}" for i in range(1, 1000))) if c not in taken)
    d = model.to_dict()
    d["nodes"] = [{"name": name, "op": "standardize", "inputs": ["x"]}] + [
        {**n, "inputs": [name if i == "x" else i for i in n["inputs"]]} for n in d["nodes"]]
    return ModelSpec.from_dict(d)


NESTED = ("model", "dataset", "optimizer")
"""Fields whose errors are named from the field itself (``optimizer.lr``); the others are ``job.<field>``."""


def _model(v: Any) -> ModelSpec:
    """The engine parses the model (its op registry knows each op's attributes)."""
    try:
        return ModelSpec.from_dict(v, path="model")
    except SpecError as e:
        raise several([(f.removeprefix("model"), m) for f, m in e.errors]) from None


ModelField = Annotated[ModelSpec, PlainValidator(_model), WithJsonSchema(model_json_schema())]


class TrainConfig(Spec):
    """A training job. ``from_dict`` validates a client's mapping; ``to_dict`` is its stored form."""

    spec_path: ClassVar[str] = "job"

    name: str | None = Field(None, max_length=bounds.NAME_CHARS,
                             description="a label for the job (shown in lists; changes nothing else)")
    model: ModelField = Field(description="the network: sequential `layers` or a DAG of `nodes` (see below)")
    dataset: DatasetSpec = Field(description="the data source and its train/validation split")
    optimizer: OptimizerSpec = Field(description="the update rule, its hyper-parameters and schedule")
    batch_size: Int(1, bounds.BATCH_SIZE) = Field(256, description="examples per update (the global batch)")
    epochs: Int(1, bounds.EPOCHS) | None = Field(1, description="the run's length in epochs, unless `steps` is given")
    steps: Int(1, bounds.STEPS) | None = Field(None, description="the run's length in updates (overrides `epochs`)")
    chunk_size: Int(1, bounds.BATCH_SIZE) = Field(
        256, description="micro-chunk: fixes the reduction tree, hence every bit of the result")
    drop_last: Flag = Field(False, description="skip each epoch's last partial batch")
    seed: Int(0, bounds.SEED) = Field(0, description="seeds the initial weights and the shuffling")
    dtype: Literal["float32", "float64"] = Field("float32", description="the parameters' and arithmetic's type")
    # --- execution only: never changes the weights --------------------------------
    workers: Int(1, bounds.WORKERS) = Field(2, description="data-parallel workers (never changes the weights)")
    cpus_per_worker: Num(*bounds.CPUS_PER_WORKER) = Field(1.0, description="Ray CPUs reserved per worker")
    val_every: Int(0, bounds.STEPS) = Field(0, description="updates between validation passes (0: only at the end)")
    checkpoint_every: Int(0, bounds.STEPS) = Field(0, description="updates between checkpoints (0: only at the end)")
    keep_checkpoints: Int(1, 1000) = Field(
        3, description="periodic checkpoints kept, newest first (the final one is always kept too)")
    worker_timeout_s: Num(*bounds.WORKER_TIMEOUT_S) = Field(60.0, description="a step's answer deadline per worker")
    recovery_budget_s: Num(*bounds.RECOVERY_BUDGET_S) = Field(
        120.0, description="time to bring workers back before the job fails")
    early_stopping: EarlyStoppingSpec | None = Field(
        None, description="stop when a metric stops improving: {metric, patience, min_delta}")
    init_from: InitFromSpec | None = Field(
        None, description="start from another job's weights: {job, step, optimizer} (server jobs)")

    @model_validator(mode="before")
    @classmethod
    def _length(cls, d: Any) -> Any:
        """Given `steps` and no `epochs`, the run's length is `steps` (`to_dict` says epochs: None)."""
        if isinstance(d, Mapping) and d.get("steps") is not None and d.get("epochs") is None:
            d = {**d, "epochs": None}
        return d

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        """A setting that would do nothing is an error."""
        if self.epochs is None and self.steps is None:
            raise fail("give epochs or steps", "epochs")
        if self.early_stopping and self.early_stopping.metric.startswith("val_") and not self.val_every:
            raise fail(f"{self.early_stopping.metric} is measured only with val_every > 0 (and a validation "
                       "split)", "early_stopping")
        if self.val_every and self.dataset.val_fraction == 0:
            raise fail("the dataset has no validation split: set dataset.val_fraction > 0, or leave val_every "
                       "unset", "val_every")
        if self.dataset.standardize:  # frozen: set once, here, as the validated value
            object.__setattr__(self, "model", _standardized(self.model))
        return self

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Validate every field and report every error at once, each naming its field
        (``job.batch_size: must be ...``, ``optimizer.lr: ...``, ``model.layers[1].op: ...``).

        Numbers are bounded (`dptrain.rpc.bounds`), and a setting that would do nothing
        (``val_every`` without a validation split, ``momentum`` for adam, ...) is an error.
        """
        return parse(cls, d, "job", roots=NESTED)

    @classmethod
    def from_stored(cls, d: Mapping[str, Any]) -> TrainConfig:
        """A config this service stored (`to_dict`), possibly by an older version whose
        `to_dict` kept every optimizer and schedule field: those the optimizer does not use
        are dropped here rather than refused (`from_dict` refuses them from clients)."""
        d = dict(d)
        if isinstance(d.get("optimizer"), Mapping):
            d["optimizer"] = drop_unused(d["optimizer"])
        dataset = d.get("dataset")
        if isinstance(dataset, Mapping) and not dataset.get("val_fraction") and d.get("val_every"):
            d["val_every"] = 0
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in type(self).model_fields}
        if d["name"] is None:
            del d["name"]
        d["model"] = self.model.to_dict()
        d["dataset"] = self.dataset.to_dict()
        d["optimizer"] = self.optimizer.to_dict()
        for key in ("early_stopping", "init_from"):  # absent unless set: older stored specs keep their form
            if d[key] is None:
                del d[key]
            else:
                d[key] = getattr(self, key).to_dict()
        return d

    def build_model(self) -> Model:
        return Model(self.model, dtype=self.dtype)
