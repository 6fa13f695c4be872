"""The numpy backpropagation engine every Ray worker runs on its shard.

    from workers.engine import Model
    model = Model({"input": 64, "layers": ["linear 32", "relu", "linear 10"],
                   "loss": "cross_entropy"})
    theta = model.init_params(seed=0)
    s = model.grad_sum(theta, X, y)      # sums: s.grad, s.loss, s.count, s.correct
    mean_grad = s.grad / s.count         # divide once, by the global count
"""
from .errors import SpecError
from .gradcheck import gradcheck
from .model import EvalSum, GradSum, Model
from .spec import Limits, ModelSpec, NodeSpec

__all__ = ["EvalSum", "GradSum", "Limits", "Model", "ModelSpec", "NodeSpec", "SpecError", "gradcheck"]
