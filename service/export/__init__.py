"""Taking a trained model elsewhere: weight files (.npz, .safetensors, .pt) and PyTorch's
parameter names and layouts (`torch_layout`)."""
from .files import read_inputs, save_weights
from .torch_layout import torch_state_dict

__all__ = ["read_inputs", "save_weights", "torch_state_dict"]
