"""Sequence ops: token embeddings (and the tied output projection), learned positions,
matmul between two nodes, and softmax.

A token model's input is integer ids, ``{shape: [T], dtype: int, vocab: V}``; `embedding`
is the op that reads them. Its table W is (V, dim) with V taken from the model input (the
graph hands every op the input's vocabulary as `Op.vocab`), so the vocabulary is written
once, in the input, and a table can never be smaller than the ids it is indexed by.
`unembed` is the output projection logits = h W^T with a W of the same shape, so
``share: <embedding node>`` ties the two (the gradient of W is then the sum of both uses).
"""
from __future__ import annotations

import numpy as np

from . import kernels
from .op import Array, Op

_BLOCK_VALUES = 1 << 16
"""Values per block of softmax's row-wise passes (256 KiB in float32)."""


def softmax(x: Array, out: Array, mask: Array | None = None) -> Array:
    """out <- softmax(x + mask) over the last axis, stably: the row maximum is subtracted first.

    `mask` (m, n), if given, is added to every block of m consecutive rows (attention's causal
    mask: row r of the (..., T, T) scores gets mask row r mod T). A -inf entry (a masked
    position) gets exactly 0, as long as its row has a finite entry. Row sums are a BLAS
    matrix-vector product (~5x numpy's sum over a short last axis). In float32 the mask add
    and the maximum's subtraction run as one compiled loop (kernels.softmax_shift).
    """
    n = x.shape[-1]
    x2, out2, ones = x.reshape(-1, n), out.reshape(-1, n), np.ones(n, dtype=out.dtype)
    kernel = kernels.for_arrays(x, out, mask)
    if mask is not None and not kernel:
        np.add(x2.reshape(-1, *mask.shape), mask, out=out2.reshape(-1, *mask.shape))
        x2 = out2
    rows = max(1, _BLOCK_VALUES // max(n, 1))
    for lo in range(0, x2.shape[0], rows):  # blocks of rows: the passes run in cache
        o = out2[lo:lo + rows]
        if kernel:
            kernel.softmax_shift(x2, mask, out2, lo, lo + len(o), n, 1 if mask is None else len(mask))
        else:
            np.subtract(x2[lo:lo + rows], x2[lo:lo + rows].max(axis=-1, keepdims=True), out=o)
        np.exp(o, out=o)
        o /= np.matmul(o, ones)[:, None]
    return out


def softmax_backward(p: Array, g_out: Array, g_in: Array) -> Array:
    """g_in <- p * (g_out - sum(g_out * p)) over the last axis: the softmax Jacobian
    diag(p) - p p^T applied to g_out. `g_in` may be `g_out` itself."""
    dot = np.einsum("...i,...i->...", g_out, p)[..., None]
    np.subtract(g_out, dot, out=g_in)
    g_in *= p
    return g_in


def scatter_add_rows(ids: Array, rows: Array, out: Array) -> Array:
    """out[v] <- the sum of rows[j] over the positions j with ids[j] = v, in increasing j.

    The sums np.add.at(zeros, ids, rows) forms, bit for bit (each starts at 0 and adds its
    rows in position order), ~10x faster: a one-hot CSR matrix, its row v listing v's
    positions in order (a stable sort), times `rows`; scipy's CSR product accumulates each
    output row sequentially over that list.
    """
    from scipy import sparse  # on first use: importing scipy.sparse takes ~0.15 s

    vocab, n = out.shape[0], ids.size
    indptr = np.zeros(vocab + 1, dtype=np.int64)
    np.cumsum(np.bincount(ids, minlength=vocab), out=indptr[1:])
    onehot = sparse.csr_matrix((np.ones(n, dtype=rows.dtype), np.argsort(ids, kind="stable"), indptr),
                               shape=(vocab, n))
    np.copyto(out, onehot @ rows)
    return out


def _model_vocab(op: Op) -> int:
    if op.vocab is None:
        raise ValueError("needs the model input's vocabulary: declare the input as token ids, "
                         "{shape: [T], dtype: int, vocab: V}")
    return op.vocab


class Embedding(Op):
    """out = W[id]: a learned `dim`-vector per token id, W (the input's vocab, dim), init N(0, std^2).

    Attributes: `dim` (required), `std` (1.0: nn.Embedding's N(0, 1); GPT-2 uses 0.02,
    which a tied `unembed` needs to start near log(vocab)). Reads the model input's token
    ids, any shape (T,) -> (T, dim). W is (vocab, dim), vocab the input's. Backward:
    g_W[v] = the sum of g_out over the positions holding id v, added in position order
    (`scatter_add_rows`: deterministic, np.add.at's bits); ids get no gradient. Tie it to the
    output projection with an `unembed` node that has ``share: <this node>``.
    """

    int_input = True
    param_names = ("W",)
    required_attrs = ("dim",)
    attr_defaults = {"std": 1.0}
    attr_kinds = {"dim": "count", "std": "positive"}
    shares_with = ("unembed",)

    def out_shape(self, in_shapes):
        _model_vocab(self)
        return (*in_shapes[0], int(self.attrs["dim"]))

    def param_shapes(self, in_shapes):
        return {"W": (_model_vocab(self), int(self.attrs["dim"]))}

    def init_params(self, shapes, rng, scheme):
        return {"W": rng.standard_normal(shapes["W"]) * float(self.attrs["std"])}

    def forward(self, xs, p):
        self.ids, W = xs[0], p["W"]
        self.W_shape = W.shape
        out = self.buf("out", (*self.ids.shape, W.shape[1]))
        np.take(W, self.ids, axis=0, out=out)
        return out

    def backward(self, g_out, need, into=None):
        g_W = self.grad_dest(into, "W", self.W_shape)
        scatter_add_rows(self.ids.ravel(), g_out.reshape(-1, self.W_shape[1]), g_W)
        return [None], {"W": g_W}


class Unembed(Op):
    """logits = h W^T, W (the input's vocab, dim): the output projection; `share: <embedding node>` ties it.

    No attributes: vocab is the model input's and dim the input's last axis; no bias, so
    W has an embedding's shape and ``share: <embedding node>`` ties the two (weight tying,
    Press & Wolf 2017). Untied, W is initialised like a linear layer's (Glorot, or He
    before a ReLU-like op). Backward: g_h = g_out W, g_W = g_out^T h (summed over rows).
    """

    param_names = ("W",)
    shares_with = ("embedding",)

    def out_shape(self, in_shapes):
        return (*in_shapes[0][:-1], _model_vocab(self))

    def param_shapes(self, in_shapes):
        return {"W": (_model_vocab(self), in_shapes[0][-1])}

    def init_params(self, shapes, rng, scheme):
        fan_out, fan_in = shapes["W"]
        std = np.sqrt(2.0 / fan_in) if scheme == "he" else np.sqrt(2.0 / (fan_in + fan_out))
        return {"W": rng.standard_normal(shapes["W"]) * std}

    def forward(self, xs, p):
        h = xs[0]
        self.shape, self.W = h.shape, p["W"]
        self.h = h.reshape(-1, h.shape[-1])
        out = self.buf("out", (self.h.shape[0], self.W.shape[0]))
        np.matmul(self.h, self.W.T, out=out)
        return out.reshape(*self.shape[:-1], self.W.shape[0])

    def backward(self, g_out, need, into=None):
        g = g_out.reshape(-1, self.W.shape[0])
        g_W = self.grad_dest(into, "W", self.W.shape)
        np.matmul(g.T, self.h, out=g_W)
        g_in = None
        if need[0]:
            g_in = self.buf("g_in", self.h.shape)
            np.matmul(g, self.W, out=g_in)
            g_in = g_in.reshape(self.shape)
        return [g_in], {"W": g_W}


class PosEmbedding(Op):
    """out = x + P: a learned table P with the example's shape ((T, dim) after an embedding).

    No attributes; P is initialised N(0, 0.02^2) (GPT-2's). g_P = the sum of g_out over
    the batch; g_in = g_out.
    """

    param_names = ("P",)

    def param_shapes(self, in_shapes):
        return {"P": in_shapes[0]}

    def init_params(self, shapes, rng, scheme):
        return {"P": rng.standard_normal(shapes["P"]) * 0.02}

    def forward(self, xs, p):
        return np.add(xs[0], p["P"], out=self.buf("out", xs[0].shape))

    def backward(self, g_out, need, into=None):
        g_P = self.grad_dest(into, "P", g_out.shape[1:])
        np.sum(g_out, axis=0, out=g_P)
        return [g_out if need[0] else None], {"P": g_P}


class MatMul(Op):
    """a @ b between two nodes, batched over the leading axes: (..., m, k) @ (..., k, n) -> (..., m, n).

    Both inputs have at least two axes and the same leading axes (no broadcasting).
    Backward: g_a = g_out b^T, g_b = a^T g_out (transposes of the last two axes).
    """

    arity = 2

    def out_shape(self, in_shapes):
        a, b = in_shapes
        if len(a) < 2 or len(b) < 2 or a[:-2] != b[:-2] or a[-1] != b[-2]:
            raise ValueError(f"matmul needs (..., m, k) @ (..., k, n) with equal leading axes, got {list(a)} @ "
                             f"{list(b)}")
        return (*a[:-1], b[-1])

    def forward(self, xs, p):
        self.a, self.b = xs
        return np.matmul(self.a, self.b, out=self.buf("out", (*self.a.shape[:-1], self.b.shape[-1])))

    def backward(self, g_out, need, into=None):
        g_a = g_b = None
        if need[0]:
            g_a = np.matmul(g_out, self.b.swapaxes(-1, -2), out=self.buf("g_a", self.a.shape))
        if need[1]:
            g_b = np.matmul(self.a.swapaxes(-1, -2), g_out, out=self.buf("g_b", self.b.shape))
        return [g_a, g_b], {}


class Softmax(Op):
    """softmax over the last axis, computed stably;  g_in = out * (g_out - sum(g_out * out))."""

    def forward(self, xs, p):
        self.out = softmax(xs[0], self.buf("out", xs[0].shape))
        return self.out

    def backward(self, g_out, need, into=None):
        if not need[0]:
            return [None], {}
        return [softmax_backward(self.out, g_out, self.buf("g_in", g_out.shape))], {}
