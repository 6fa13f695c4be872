"""The contract every graph node follows.

An op maps input activations and its parameters to one output. An activation is a batch
of tensors, shape ``(batch, *shape)``; ``shape`` is the per-example shape the graph infers
(``(features,)`` for an MLP, ``(channels, height, width)`` for an image, ``(tokens,
features)`` for a sequence). ``forward`` caches what ``backward`` needs; ``backward(g_out)`` applies the
local chain rule, g_in = (d out / d in)^T g_out, and returns ``(g_ins, grads)``: one
gradient per input and one per parameter. It never changes a parameter: the optimizer
lives in the coordinator and the gradient of a shared parameter is the sum of the
contributions of every node that uses it (the executor adds them).

Buffers come from a per-op :class:`Workspace`, so the arrays an op returns stay valid
only until its next call; the executor copies whatever it hands out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from .workspace import Workspace

Array = np.ndarray
Shape = tuple[int, ...]
"""A per-example shape (no batch axis)."""


@dataclass(frozen=True)
class Context:
    """Where a forward pass sits in training, for the ops whose value depends on it (dropout).

    `index[i]` is example i's row in the dataset and `step` the optimizer step, so a random
    draw keyed on (seed, step, index, node) is the same whichever worker computes the
    example, in whatever chunk: any worker count gives the same bits.
    """

    seed: int
    step: int
    index: Array
    train: bool = True

ATTR_BOUND = 1e3
"""Largest |value| of a numeric op attribute unless the op's `attr_bounds` says otherwise.

Slopes and scales beyond it serve no model and only overflow at run time; the spec
rejects them (and any NaN or inf) at submit, naming the node and field.
"""


def has_nan(a: Array) -> bool:
    """Whether `a` holds a NaN: one max reduction (NaN propagates through max), ~3x cheaper than isnan.

    Backward passes use it to detect the rare inf * 0 from a mask and repair only then, so
    the common path keeps its arithmetic, and its bits, unchanged.
    """
    return a.size > 0 and bool(np.isnan(a.max()))


class Op:
    """Base class: subclasses set `arity`, `param_names` and implement the four methods."""

    arity: ClassVar[int | None] = 1  # None: two or more inputs
    param_names: ClassVar[tuple[str, ...]] = ()
    int_input: ClassVar[bool] = False  # reads integer ids (embedding); every other op reads floats
    uses_context: ClassVar[bool] = False  # reads `self.ctx` (dropout): the model sets it each pass
    buffer_names: ClassVar[tuple[str, ...]] = ()  # parameters not trained (batch norm's running statistics)
    attr_defaults: ClassVar[dict[str, Any]] = {}
    required_attrs: ClassVar[tuple[str, ...]] = ()
    attr_bounds: ClassVar[dict[str, float]] = {}  # numeric attribute -> largest |value| (default ATTR_BOUND)
    attr_kinds: ClassVar[dict[str, str]] = {}  # attribute -> kind (`dptrain.engine.attrs.KINDS`); else a number
    shares_with: ClassVar[tuple[str, ...]] = ()  # other ops whose parameters `share` may name (unembed: embedding)

    def __init__(self, **attrs: Any) -> None:
        self.attrs = {**self.attr_defaults, **attrs}
        self.ws = Workspace()
        self.dtype: np.dtype = np.dtype(np.float32)
        self.ctx: Context | None = None  # set by the model before each forward pass
        self.name = ""  # the node's name (the graph sets it); keys dropout's masks
        self.vocab: int | None = None  # the model input's token vocabulary (the graph sets it; embedding reads it)

    # --- shapes -----------------------------------------------------------------
    def out_shape(self, in_shapes: Sequence[Shape]) -> Shape:
        """The per-example output shape; raises ValueError with a reason for incompatible inputs."""
        return in_shapes[0]

    def param_shapes(self, in_shapes: Sequence[Shape]) -> dict[str, Shape]:
        return {}

    def init_params(self, shapes: dict[str, tuple[int, ...]], rng: np.random.Generator,
                    scheme: str) -> dict[str, Array]:
        return {}

    # --- computation --------------------------------------------------------------
    def forward(self, xs: Sequence[Array], p: dict[str, Array]) -> Array:
        raise NotImplementedError

    def backward(self, g_out: Array, need: Sequence[bool],
                 into: dict[str, Array] | None = None) -> tuple[list[Array | None], dict[str, Array]]:
        """Return (g_ins, grads). `need[i]` False: skip input i's gradient (return None).

        `into` optionally names destination arrays for the parameter gradients, so a
        gradient lands directly in the flat gradient buffer without a copy.
        """
        raise NotImplementedError

    def release(self) -> None:
        """Drop what forward cached and the workspace (activation recomputation frees a
        segment this way; the next forward allocates again)."""
        self.ws = Workspace()
        for key, value in list(vars(self).items()):
            if isinstance(value, np.ndarray):
                delattr(self, key)

    # --- helpers ------------------------------------------------------------------
    def buf(self, key: str, shape: tuple[int, ...]) -> Array:
        return self.ws.get(key, shape, self.dtype)

    def grad_dest(self, into: dict[str, Array] | None, name: str, shape: tuple[int, ...]) -> Array:
        if into is not None and name in into:
            return into[name]
        return self.buf("grad_" + name, shape)
