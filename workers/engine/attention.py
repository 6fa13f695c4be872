"""Multi-head self-attention on a sequence (T, D), built for speed.

With H heads of width d = D / H, and x the (T, D) sequence of one example,

    [Q K V] = x [Wq Wk Wv] + [bq bk bv]         one GEMM over every token of the batch
    P_h = softmax(Q_h K_h^T / sqrt(d) + M)     per head h; M = -inf above the diagonal if causal
    out = concat_h(P_h V_h) Wo + bo

Everything is batched: one GEMM for the three projections (the weights side by side in a
(D, 3D) scratch matrix, the 1/sqrt(d) folded into the query columns), batched matmuls over
(examples, heads) on strided views of that product (no copies, no Python loop over examples
or heads), and the probabilities P cached for backward. A masked score is -inf before the
row maximum is subtracted, so its probability is exactly 0 (the diagonal is never masked,
so every row has a finite maximum). Backward, with G = g_out:

    g_Wo = C^T G, g_C = G Wo^T                 C = concat_h(P_h V_h)
    g_V = P^T g_C,  g_P = g_C V^T,  g_S = P * (g_P - rowsum(g_P * P))   (softmax_backward)
    g_Q' = g_S K,  g_K = g_S^T Q'               Q' = Q / sqrt(d), the scaled queries
    g_[Wq Wk Wv] = x^T g_[Q' K V] (the query block times 1/sqrt(d)), g_x = g_[Q' K V] [Wq/sqrt(d) Wk Wv]^T
"""
from __future__ import annotations

import numpy as np

from .op import Op
from .sequence import softmax, softmax_backward

_PROJ = ("Wq", "Wk", "Wv")
_BIAS = ("bq", "bk", "bv")


class Attention(Op):
    """Multi-head self-attention on (T, D): softmax(Q K^T / sqrt(D / heads) + mask) V, then Wo.

    Attributes: `heads` (required, dividing D); `causal` (false: true masks every position
    after the query's own); `bias` (true). Parameters Wq, Wk, Wv, Wo (D, D), applied as
    x W like linear's, Glorot-initialised (Wo He before a ReLU-like op), and with `bias`
    bq, bk, bv, bo (D,), init 0. PyTorch's ``nn.MultiheadAttention(D, heads, bias)`` with
    in_proj_weight = [Wq Wk Wv]^T and out_proj.weight = Wo^T (batch_first; causal = an
    upper-triangular attn_mask). Leading axes before (T, D) are more sequences.
    """

    required_attrs = ("heads",)
    attr_defaults = {"causal": False, "bias": True}
    attr_kinds = {"heads": "count", "causal": "bool", "bias": "bool"}

    @property
    def param_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return (*_PROJ, "Wo", *_BIAS, "bo") if self.attrs["bias"] else (*_PROJ, "Wo")

    def out_shape(self, in_shapes):
        shape, heads = in_shapes[0], int(self.attrs["heads"])
        if len(shape) < 2:
            raise ValueError(f"attention needs a sequence (T, D), got {list(shape)}")
        if shape[-1] % heads:
            raise ValueError(f"heads {heads} must divide the width D = {shape[-1]} (input {list(shape)})")
        return shape

    def param_shapes(self, in_shapes):
        d = in_shapes[0][-1]
        return {name: (d, d) if name.startswith("W") else (d,) for name in self.param_names}

    def init_params(self, shapes, rng, scheme):
        out = {}
        for name, shape in shapes.items():
            he = name == "Wo" and scheme == "he"  # Glorot for (D, D) is sqrt(1 / D), He sqrt(2 / D)
            out[name] = np.zeros(shape) if name.startswith("b") else rng.standard_normal(shape) * np.sqrt(
                (2.0 if he else 1.0) / shape[0])
        return out

    def _heads(self, a: np.ndarray, blocks: int) -> np.ndarray:
        """A (B T, blocks D) matrix as (blocks, B, H, T, d) strided views: each (T, d) slice is a
        BLAS-ready matrix (unit column stride), so matmul reads and writes it in place."""
        B, T, H, dh = self.dims
        return a.reshape(B, T, blocks, H, dh).transpose(2, 0, 3, 1, 4)

    def forward(self, xs, p):
        x = xs[0]
        self.shape = x.shape
        T, D = x.shape[-2:]
        H = int(self.attrs["heads"])
        B, dh = x.size // (T * D), D // H
        self.dims, self.scale = (B, T, H, dh), 1.0 / np.sqrt(dh)
        self.x = x.reshape(B * T, D)
        self.wcat = self.buf("wcat", (D, 3 * D))
        np.concatenate([p[w] for w in _PROJ], axis=1, out=self.wcat)
        self.wcat[:, :D] *= self.scale
        self.qkv = self.buf("qkv", (B * T, 3 * D))
        np.matmul(self.x, self.wcat, out=self.qkv)
        if self.attrs["bias"]:
            bcat = self.buf("bcat", (3 * D,))
            np.concatenate([p[b] for b in _BIAS], out=bcat)
            bcat[:D] *= self.scale
            self.qkv += bcat
        q, k, v = self._heads(self.qkv, 3)
        self.P = self.buf("P", (B, H, T, T))
        np.matmul(q, k.swapaxes(-1, -2), out=self.P)
        softmax(self.P, self.P, self._mask(T) if self.attrs["causal"] else None)
        self.ctx = self.buf("ctx", (B * T, D))
        np.matmul(self.P, v, out=self._heads(self.ctx, 1)[0])
        self.Wo = p["Wo"]
        out = self.buf("out", (B * T, D))
        np.matmul(self.ctx, self.Wo, out=out)
        if self.attrs["bias"]:
            out += p["bo"]
        return out.reshape(self.shape)

    def _mask(self, T: int) -> np.ndarray:
        """(T, T): 0 on and below the diagonal, -inf above (a query sees itself and the past)."""
        mask = self.buf("mask", (T, T))
        mask.fill(0)
        mask[np.triu_indices(T, 1)] = -np.inf
        return mask

    def backward(self, g_out, need, into=None):
        B, T, H, dh = self.dims
        D = H * dh
        g = g_out.reshape(B * T, D)
        grads = {"Wo": self.grad_dest(into, "Wo", (D, D))}
        np.matmul(self.ctx.T, g, out=grads["Wo"])
        if self.attrs["bias"]:
            grads["bo"] = self.grad_dest(into, "bo", (D,))
            np.sum(g, axis=0, out=grads["bo"])
        g_ctx = self.buf("g_ctx", (B * T, D))
        np.matmul(g, self.Wo.T, out=g_ctx)
        g_ctx_h = self._heads(g_ctx, 1)[0]
        q, k, v = self._heads(self.qkv, 3)
        g_qkv = self.buf("g_qkv", (B * T, 3 * D))
        g_q, g_k, g_v = self._heads(g_qkv, 3)
        np.matmul(self.P.swapaxes(-1, -2), g_ctx_h, out=g_v)
        g_s = self.buf("g_s", self.P.shape)
        np.matmul(g_ctx_h, v.swapaxes(-1, -2), out=g_s)
        softmax_backward(self.P, g_s, g_s)
        np.matmul(g_s, k, out=g_q)
        np.matmul(g_s.swapaxes(-1, -2), q, out=g_k)
        g_wcat = self.buf("g_wcat", (D, 3 * D))
        np.matmul(self.x.T, g_qkv, out=g_wcat)
        g_wcat[:, :D] *= self.scale  # the queries were scaled inside the weights
        for i, name in enumerate(_PROJ):
            grads[name] = self.grad_dest(into, name, (D, D))
            np.copyto(grads[name], g_wcat[:, i * D:(i + 1) * D])
        if self.attrs["bias"]:
            g_bcat = self.buf("g_bcat", (3 * D,))
            np.sum(g_qkv, axis=0, out=g_bcat)
            g_bcat[:D] *= self.scale
            for i, name in enumerate(_BIAS):
                grads[name] = self.grad_dest(into, name, (D,))
                np.copyto(grads[name], g_bcat[i * D:(i + 1) * D])
        g_in = None
        if need[0]:
            g_in = self.buf("g_in", (B * T, D))
            np.matmul(g_qkv, self.wcat.T, out=g_in)
            g_in = g_in.reshape(self.shape)
        return [g_in], grads
