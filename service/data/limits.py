"""How big a dataset may get: the bounds every source is checked against before allocating.

Synthetic sources are sized from their params (``check_limits`` needs no data), files from
what they declare (an .npz's zip directory and array headers, a CSV's rows as they are read),
so a typo like ``n=10**9`` or a 1 MB zip bomb is refused before it costs memory.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_EXAMPLES", "MAX_FEATURES", "MAX_VALUES", "MAX_FILE_BYTES", "DataLimits"]

MAX_EXAMPLES = 1_000_000
"""Default cap on examples; guards coordinator and workers against typos like n=10**9."""
MAX_FEATURES = 100_000
"""Default cap on features per example."""
MAX_VALUES = 1 << 28
"""Default cap on the numbers a source builds (n x d for X, plus targets and generator weights):
1 GiB as float32, so a dataset within the other caps can still not exhaust memory (n x d)."""
MAX_FILE_BYTES = 1 << 31
"""Default cap on the bytes read from a dataset file after decompression (an .npz's arrays,
a CSV's text): room for MAX_VALUES float64 values."""


@dataclass(frozen=True)
class DataLimits:
    """The bounds one ``load_dataset`` call enforces (defaults: the module's constants)."""

    max_examples: int = MAX_EXAMPLES
    max_features: int = MAX_FEATURES
    max_values: int = MAX_VALUES
    max_file_bytes: int = MAX_FILE_BYTES
