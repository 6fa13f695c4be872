"""Weights under PyTorch's names and layouts, so that ``load_state_dict`` takes them.

dptrain names a parameter ``<node>.<param>`` in the engine's layout (linear's W is
(in, out), applied as x W); PyTorch's modules hold (out, in) matrices under ``weight`` and
``bias``. The op-by-op map, and how modules are named (a sequential spec's layers by
index, as in ``nn.Sequential``; a DAG's by node name), is in docs/export.md.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

_SAME = {"b": "bias", "gamma": "weight", "beta": "bias", "running_mean": "running_mean",
         "running_var": "running_var", "alpha": "weight", "mean": "mean", "std": "std"}


def _module_names(nodes: list[dict[str, Any]]) -> dict[str, str]:
    """Node name -> PyTorch module name: the index for the sequential form's nodes."""
    sequential = all(re.fullmatch(rf"{re.escape(n['op'])}{i}", n["name"]) and
                     list(n.get("inputs") or []) == [nodes[i - 1]["name"] if i else "x"]
                     for i, n in enumerate(nodes))
    return {n["name"]: str(i) if sequential else n["name"] for i, n in enumerate(nodes)}


def _node_params(op: str, prefix: str, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if op == "attention":
        out = {f"{prefix}.in_proj_weight": np.concatenate([params[w] for w in ("Wq", "Wk", "Wv")], axis=1).T,
               f"{prefix}.out_proj.weight": params["Wo"].T}
        if "bq" in params:
            out[f"{prefix}.in_proj_bias"] = np.concatenate([params[b] for b in ("bq", "bk", "bv")])
            out[f"{prefix}.out_proj.bias"] = params["bo"]
        return out
    if op == "pos_embedding":
        return {prefix: params["P"]}
    out = {}
    for name, value in params.items():
        if name == "W":
            out[f"{prefix}.weight"] = value.T if op == "linear" else value
        else:
            out[f"{prefix}.{_SAME[name]}"] = value
    if op == "batch_norm" and "running_mean" in params:
        out[f"{prefix}.num_batches_tracked"] = np.zeros((), dtype=np.int64)
    return out


def torch_state_dict(spec: Mapping[str, Any], weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A job's weights (``{"linear0.W": ...}``, as GetWeights returns them) under PyTorch's
    names and layouts, for the model `spec` (the job's spec, or its model part; the
    normalized form the server echoes is fine). Arrays are contiguous copies."""
    from dptrain.engine.spec import ModelSpec

    model = ModelSpec.from_dict(spec.get("model", spec))
    nodes = [{"name": n.name, "op": n.op, "inputs": list(n.inputs)} for n in model.nodes]
    modules = _module_names(nodes)
    state: dict[str, np.ndarray] = {}
    for n in nodes:
        params = {k.split(".", 1)[1]: v for k, v in weights.items() if k.split(".", 1)[0] == n["name"]}
        if params:
            state.update(_node_params(n["op"], modules[n["name"]], params))
    return {k: np.ascontiguousarray(v) for k, v in state.items()}
