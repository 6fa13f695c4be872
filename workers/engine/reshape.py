"""Shape ops: flatten, reshape, transpose. Each example's values are rearranged, never changed.

flatten and reshape return a view of their input (activations are C-contiguous) and
g_in is g_out viewed back in the input's shape; transpose copies into its buffer, and
its backward applies the inverse permutation.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .op import Op, Shape


class Flatten(Op):
    """(...) -> (prod,): an example's values in C order, e.g. (16, 5, 5) -> (400,) before a linear layer.

    No attributes. PyTorch's ``torch.flatten(x, 1)`` (the batch axis stays).
    """

    def out_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        return (math.prod(in_shapes[0]),)

    def forward(self, xs, p):
        self.shape = xs[0].shape
        return xs[0].reshape(self.shape[0], -1)

    def backward(self, g_out, need, into=None):
        return [g_out.reshape(self.shape) if need[0] else None], {}


def target_shape(shape: list[int], n: int) -> Shape:
    """`shape` with its one -1 resolved so that it holds `n` values; ValueError with the reason otherwise."""
    if shape.count(-1) > 1:
        raise ValueError(f"shape {shape} has more than one -1")
    if 0 in shape:
        raise ValueError(f"shape {shape}: each entry must be positive, or -1 for the rest")
    known = math.prod(tuple(s for s in shape if s != -1))
    if -1 in shape:
        if n % known:
            raise ValueError(f"shape {shape} cannot hold the input's {n} values ({n} is not a multiple of {known})")
        return tuple(n // known if s == -1 else s for s in shape)
    if known != n:
        raise ValueError(f"shape {shape} holds {known} values, the input {n}")
    return tuple(shape)


class Reshape(Op):
    """An example's values in C order under a new shape, e.g. (784,) -> [1, 28, 28]; as ``x.reshape(B, *shape)``.

    Attributes: `shape` (required): a list of positive integers, one of which may be -1
    (the rest of the values); its product must equal the example's size.
    """

    required_attrs = ("shape",)
    attr_kinds = {"shape": "shape"}

    def out_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        return target_shape(list(self.attrs["shape"]), math.prod(in_shapes[0]))

    def forward(self, xs, p):
        self.shape = xs[0].shape
        return xs[0].reshape(self.shape[0], *target_shape(list(self.attrs["shape"]), math.prod(self.shape[1:])))

    def backward(self, g_out, need, into=None):
        return [g_out.reshape(self.shape) if need[0] else None], {}


class Transpose(Op):
    """Permute an example's axes: `axes` [1, 0] turns (T, D) into (D, T); as ``x.permute(0, *(a + 1 for a in axes))``.

    Attributes: `axes` (required): a permutation of 0 .. rank - 1 of the example's axes
    (the batch axis is not counted); output axis i is input axis axes[i].
    """

    required_attrs = ("axes",)
    attr_kinds = {"axes": "axes"}

    def out_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        axes, shape = list(self.attrs["axes"]), in_shapes[0]
        if sorted(axes) != list(range(len(shape))):
            raise ValueError(f"axes {axes} must be a permutation of the example's {len(shape)} axes "
                             f"{list(range(len(shape)))} (input {list(shape)})")
        return tuple(shape[a] for a in axes)

    def forward(self, xs, p):
        x = xs[0]
        self.perm = (0, *(a + 1 for a in self.attrs["axes"]))
        view = x.transpose(self.perm)
        out = self.buf("out", view.shape)
        np.copyto(out, view)
        self.shape = x.shape
        return out

    def backward(self, g_out, need, into=None):
        if not need[0]:
            return [None], {}
        g_in = self.buf("g_in", self.shape)
        np.copyto(g_in, g_out.transpose(np.argsort(self.perm)))
        return [g_in], {}
