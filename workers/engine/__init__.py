"""The numpy backpropagation engine every worker runs on its shard (and the local loop).

One op is one small class (``forward`` caches, ``backward(g_out)`` returns ``(g_in,
grads)``); the graph runs them in topological order over one flat parameter buffer. Imports
numpy and nothing else of dptrain. The mathematics is in docs/backprop.md.

    from dptrain.engine import Model
    model = Model({"input": 64, "layers": ["linear 32", "relu", "linear 10"],
                   "loss": "cross_entropy"})
    theta = model.init_params(seed=0)
    s = model.grad_sum(theta, X, y)      # sums: s.grad, s.loss, s.count, s.correct
    mean_grad = s.grad / s.count         # divide once, by the global count
"""
from .errors import SpecError
from .gradcheck import gradcheck
from .model import EvalSum, GradSum, Model
from .op import Context
from .spec import Limits, ModelSpec, NodeSpec

__all__ = ["Context", "EvalSum", "GradSum", "Limits", "Model", "ModelSpec", "NodeSpec", "SpecError", "gradcheck"]
