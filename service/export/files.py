"""Weights out to .npz, .safetensors or .pt, and arrays in from the files users pass."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def save_weights(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """.npz, .safetensors, or .pt (a state dict of tensors for torch.load; needs PyTorch)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"output: no directory {str(path.parent)!r} to write {path.name!r} in")
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
    elif path.suffix == ".npz":
        np.savez(path, **arrays)
    elif path.suffix == ".pt":
        try:
            import torch
        except ImportError:
            raise ValueError("output: a .pt file needs PyTorch (pip install torch); .safetensors needs "
                             "nothing more and loads in PyTorch with safetensors.torch.load_file") from None
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, path)
    else:
        raise ValueError(f"output: use a .npz, .safetensors or .pt file name, got {path.name!r}")


def read_inputs(path: str | Path) -> np.ndarray:
    """Inputs for predict and saliency: an .npz (array X, else its first array), an .npy, or a
    .csv of numbers (one example per row, no header). Never unpickles; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"inputs: no file {str(path)!r}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                if not f.files:
                    raise ValueError("it holds no arrays")
                return f["X"] if "X" in f.files else f[f.files[0]]
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix == ".csv":
            return np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    except ValueError as e:  # an object array, or a cell that is not a number
        raise ValueError(f"inputs: cannot read {path.name}: {e}") from None
    raise ValueError(f"inputs: use an .npz (array X), .npy or .csv file, got {path.name!r}")
