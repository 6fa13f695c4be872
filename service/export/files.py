"""Writing weights to .npz, .safetensors or .pt."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def save_weights(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """.npz, .safetensors, or .pt (a state dict of tensors for torch.load; needs PyTorch)."""
    path = Path(path)
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
