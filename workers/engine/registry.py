"""Op names as they appear in specs, and the one positional argument of the shorthand."""
from __future__ import annotations

from . import activations as act
from . import elementwise as ew
from .attention import Attention
from .batchnorm import BatchNorm
from .conv import Conv1d, Conv2d
from .dropout import Dropout
from .layers import Linear, PReLU
from .norm import GroupNorm, LayerNorm
from .op import Op
from .pooling import AvgPool2d, GlobalAvgPool, MaxPool2d
from .reshape import Flatten, Reshape, Transpose
from .sequence import Embedding, MatMul, PosEmbedding, Softmax, Unembed
from .standardize import Standardize

OPS: dict[str, type[Op]] = {
    "linear": Linear, "prelu": PReLU,
    "sigmoid": act.Sigmoid, "tanh": act.Tanh, "relu": act.ReLU, "leaky_relu": act.LeakyReLU,
    "elu": act.ELU, "gelu": act.GELU, "softplus": act.Softplus,
    "add": ew.Add, "sub": ew.Sub, "mul": ew.Mul, "div": ew.Div, "concat": ew.Concat,
    "exp": ew.Exp, "log": ew.Log, "sin": ew.Sin, "cos": ew.Cos, "pow": ew.Pow, "slice": ew.Slice,
    "dropout": Dropout, "batch_norm": BatchNorm,
    "layer_norm": LayerNorm, "group_norm": GroupNorm,
    "embedding": Embedding, "unembed": Unembed, "pos_embedding": PosEmbedding, "matmul": MatMul, "softmax": Softmax,
    "attention": Attention,
    "conv2d": Conv2d, "conv1d": Conv1d, "max_pool2d": MaxPool2d, "avg_pool2d": AvgPool2d,
    "global_avg_pool": GlobalAvgPool, "flatten": Flatten, "reshape": Reshape, "transpose": Transpose,
    "standardize": Standardize,
}

# "linear 512", "leaky_relu 0.1", "conv2d 16 5": the attributes bare arguments set, in order
# (an op may be given fewer: "conv2d 16" still needs its kernel beside it, in the mapping form).
POSITIONAL: dict[str, tuple[str, ...]] = {
    "linear": ("units",), "leaky_relu": ("alpha",), "elu": ("alpha",), "pow": ("exponent",), "prelu": ("init",),
    "dropout": ("p",), "conv2d": ("out", "kernel"), "conv1d": ("out", "kernel"), "max_pool2d": ("kernel",),
    "avg_pool2d": ("kernel",), "attention": ("heads",), "embedding": ("dim",), "group_norm": ("groups",),
}

# Activations after which a linear layer is initialised with He's scheme.
RELU_LIKE = {"relu", "leaky_relu", "elu", "gelu", "prelu", "softplus"}
