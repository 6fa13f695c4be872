"""Writing weights to .npz or .safetensors (loadable by PyTorch by parameter name)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def save_weights(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
    elif path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        raise ValueError(f"output: use a .npz or .safetensors file name, got {path.name!r}")
