"""Data sources: each source's parameters, loader and shapes, and the train/validation/test split.

Used by the trainer (which ships arrays to workers) and by the server (which checks a job's
dataset before accepting it); workers never load data themselves. May import
``dptrain.engine.errors`` and ``dptrain.engine.validation``; nothing else of dptrain.

Usage::

    from dptrain.data import DatasetSpec, load_dataset
    train, val = load_dataset(DatasetSpec.from_dict(cfg["dataset"]), dtype=np.float32)

Sources: digits, teacher, spirals, blobs, regression (built in or synthetic, seeded), mnist
and shapes (images), sequence (a synthetic sequence task), and npz, csv, text (user files).
``SOURCES`` holds each one's parameters (``PARAM_SCHEMAS``, pydantic models: types, defaults,
bounds), loader and shape; docs/spec.md lists them.
"""

from .dataset import CLASSIFICATION, REGRESSION, Dataset, Layout, Splits, split, train_val_split
from .files import from_arrays
from .limits import MAX_FILE_BYTES, MAX_VALUES, DataLimits
from .loader import LOADERS, MAX_EXAMPLES, MAX_FEATURES, SOURCES, Source, check_limits, load_dataset, load_splits
from .sequences import Text, read_text, text_layout
from .spec import MAX_CLASSES, MAX_VOCAB, PARAM_SCHEMAS, DatasetSpec, SpecError

__all__ = [
    "CLASSIFICATION",
    "REGRESSION",
    "Dataset",
    "Layout",
    "DatasetSpec",
    "SpecError",
    "load_dataset",
    "load_splits",
    "split",
    "Splits",
    "check_limits",
    "DataLimits",
    "train_val_split",
    "from_arrays",
    "LOADERS",
    "SOURCES",
    "Source",
    "PARAM_SCHEMAS",
    "MAX_EXAMPLES",
    "MAX_FEATURES",
    "MAX_VALUES",
    "MAX_FILE_BYTES",
    "MAX_CLASSES",
    "MAX_VOCAB",
    "Text",
    "read_text",
    "text_layout",
]
