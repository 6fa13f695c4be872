"""The coordinator's step loop: plan, compute on workers, reduce, divide once, update, broadcast.

    from dptrain.core.config import TrainConfig
from dptrain.core.early import EarlyStopping
    from dptrain.core.trainer import Trainer
    t = Trainer(TrainConfig.from_dict(job), backend="ray")
    for m in t.run():
        print(m.step, m.loss)

One step, for a global batch B of the epoch's permutation:
  1. cut B into fixed micro-chunks and give each worker a contiguous run of them;
  2. each worker returns sums over its chunks (gradient, loss, count, correct);
  3. finish the fixed reduction tree, then g = sum / |B| (divided once, globally; the root's
     addition, the division and the norm's squares in one pass): `dptrain.core.reduce`;
  4. theta <- optimizer(theta, g, lr(step)); put theta in the object store once (version+1).
"""
from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
from dptrain.core.backends import Backend, Outcome, make_backend
from dptrain.core.config import TrainConfig
from dptrain.core.early import EarlyStopping
from dptrain.core.ledger import EpochLedger, LedgerError
from dptrain.core.optim import make_optimizer
from dptrain.core.reduce import Buffers, Reduced, Reduction, worker_runs
from dptrain.core.shard import Plan, PlanKind, WorkerJob, epoch_permutation
from dptrain.core.telemetry import StepMetrics, WorkerTiming
from dptrain.data import Dataset, Layout, load_splits
from dptrain.engine import Model, SpecError
from dptrain.engine.standardize import statistics as input_statistics

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Everything a checkpoint needs; the data order is a function of (seed, epoch)."""

    theta: np.ndarray
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    step: int = 0
    epoch: int = 0
    position: int = 0  # examples of `epoch` already used
    version: int = 0
    ledger: dict[str, np.ndarray] = field(default_factory=dict)  # EpochLedger.state_dict(); {} if unknown
    early: dict[str, np.ndarray] = field(default_factory=dict)  # EarlyStopping.state_dict(); {} if none


def check_compatible(model: Model, data: Layout, name: str) -> None:
    """The model must read the dataset's examples and its loss must fit the targets.

    Takes the dataset's layout rather than its arrays, so the server can check a job
    before accepting it without loading any data.
    """
    task, n_outputs = data.task, data.n_outputs
    if model.input_shape != data.x_shape:
        if len(data.x_shape) == 1 and len(model.input_shape) == 1:
            raise SpecError("model.input", f"is {model.input_shape[0]} but dataset {name!r} has "
                                           f"{data.x_shape[0]} features")
        raise SpecError("model.input", f"is {list(model.input_shape)} but dataset {name!r} has examples of shape "
                                       f"{list(data.x_shape)}")
    if (model.spec.input.dtype == "int") != data.x_int:
        raise SpecError("model.input", f"dataset {name!r} holds " + ("token ids: declare {shape: ..., dtype: int, "
                                                                     "vocab: ...}" if data.x_int else
                                                                     "floats, not token ids"))
    vocab = model.spec.input.vocab
    if data.x_int and vocab is not None and data.x_vocab > vocab:
        raise SpecError("model.input.vocab", f"is {vocab} but dataset {name!r} has token ids up to "
                                             f"{data.x_vocab - 1}: declare vocab >= {data.x_vocab}")
    per_position = model.output_shape[:-1]
    if task == "classification" and per_position != data.y_shape:
        raise SpecError("model", f"outputs {list(model.output_shape)} per example do not fit labels of shape "
                                 f"{list(data.y_shape)} per example in {name!r}")
    loss = model.spec.loss
    if loss is None:
        raise SpecError("model.loss", "required for training")
    if loss == "mse":
        if task != "regression" or n_outputs != model.output_dim:
            raise SpecError("model.loss", f"mse needs regression targets of width {model.output_dim}; "
                                          f"dataset {name!r} is {task} with {n_outputs} outputs")
    elif task != "classification":
        raise SpecError("model.loss", f"{loss} needs class labels; dataset {name!r} is {task}")
    elif loss == "softmax_cross_entropy" and n_outputs > model.output_dim:
        raise SpecError("model", f"output width {model.output_dim} < {n_outputs} classes of {name!r}")
    elif loss == "binary_cross_entropy" and (model.output_dim != 1 or n_outputs > 2):
        raise SpecError("model.loss", "binary_cross_entropy needs one output and labels 0/1")


class Trainer:
    def __init__(self, config: TrainConfig, backend: str = "ray", state: TrainState | None = None,
                 on_step: Callable[[StepMetrics], None] | None = None,
                 on_weights: Callable[[int, int, np.ndarray], None] | None = None,
                 data: tuple[Dataset, Dataset | None] | None = None,
                 cancel: threading.Event | None = None) -> None:
        """`cancel` (Ray backend): once set, a wait for workers or results raises
        `dptrain.execution.waiting.Cancelled` within a fraction of a second, in this constructor too."""
        self.config = config
        self.model = config.build_model()
        if data is None:
            self.train, self.val, self.test = load_splits(config.dataset, dtype=config.dtype)
        else:
            (self.train, self.val), self.test = data, None
        check_compatible(self.model, self.train.layout, self.train.name)
        self.steps_per_epoch = self._steps_per_epoch()
        self.total_steps = config.steps or config.epochs * self.steps_per_epoch
        self.optimizer = make_optimizer(config.optimizer, self.model.num_params, self.model.dtype)
        self.state = state or TrainState(theta=self._fresh_weights())
        if state is not None and state.optimizer:
            self.optimizer.load_state_dict(state.optimizer)
        self.on_step, self.on_weights = on_step, on_weights
        self._perm: tuple[int, np.ndarray] | None = None
        self.ledger = EpochLedger(self.train.n, self.state.epoch)
        if self.state.ledger:  # resumed: continue from what the workers actually computed
            self.ledger.load_state_dict(self.state.ledger)
        elif self.state.position:  # a checkpoint without a ledger (older): count the plan's part
            self.ledger.record(self.state.epoch, self.permutation(self.state.epoch)[:self.state.position])
        self.early = EarlyStopping(config.early_stopping) if config.early_stopping else None
        if self.early is not None and self.state.early:
            self.early.load_state_dict(self.state.early)
        self.stopped: str | None = None  # why the run ended before total_steps (early stopping)
        self._buffers = Buffers()  # the reduction's arrays (tree nodes, mean gradient), reused every step
        job = WorkerJob(config.model.to_dict(), config.dtype, self.train.X, self.train.y,
                        None if self.val is None else self.val.X, None if self.val is None else self.val.y,
                        config.seed, config.cpus_per_worker)
        self.backend: Backend = make_backend(backend, job, workers=config.workers, cpus=config.cpus_per_worker,
                                             timeout_s=config.worker_timeout_s,
                                             budget_s=config.recovery_budget_s, cancel=cancel)
        # From here on the weights live where the backend publishes them (for same-node Ray
        # workers: the shared-memory file they read), so publishing is a version bump.
        self.state.theta = self.backend.publish(self.state.theta)

    # --- the schedule of batches -------------------------------------------------------
    def _fresh_weights(self) -> np.ndarray:
        """Initial weights; a `standardize` node's statistics from the training split alone."""
        theta = self.model.init_params(self.config.seed)
        views = self.model.views(theta)
        for node in self.model.spec.nodes:
            if node.op == "standardize":
                mean, std = input_statistics(self.train.X)
                views[f"{node.name}.mean"][...] = mean.reshape(views[f"{node.name}.mean"].shape)
                views[f"{node.name}.std"][...] = std.reshape(views[f"{node.name}.std"].shape)
        return theta

    def _steps_per_epoch(self) -> int:
        n, bs = self.train.n, self.config.batch_size
        steps = n // bs if self.config.drop_last else math.ceil(n / bs)
        if steps == 0:
            raise SpecError("job.batch_size", f"{bs} exceeds the {n} training examples with drop_last")
        return steps

    @property
    def done(self) -> bool:
        return self.state.step >= self.total_steps or self.stopped is not None

    def _next_batch(self) -> tuple[int, int, int]:
        """(epoch, start, size) of the next batch, rolling over to a new epoch when due."""
        s, n, bs = self.state, self.train.n, self.config.batch_size
        if s.position >= n or (self.config.drop_last and n - s.position < bs):
            self.ledger.close()
            s.epoch, s.position = s.epoch + 1, 0
        return s.epoch, s.position, min(bs, n - s.position)

    def permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, epoch_permutation(self.config.seed, epoch, self.train.n))
        return self._perm[1]

    def _plans(self, size: int, epoch: int = 0, start: int = 0, kind: PlanKind = PlanKind.TRAIN) -> list[Plan]:
        """One plan per worker: a contiguous run of the batch's micro-chunks (none empty)."""
        chunk, step = self.config.chunk_size, self.state.step
        return [Plan(epoch, start, size, chunk, r, kind, step) for r in worker_runs(size, chunk, self.backend.size)]

    def _compute(self, plans: list[Plan]) -> tuple[Reduced, list[Outcome]]:
        """The plans run on the backend, their sums reduced along the fixed tree."""
        reduction = Reduction(plans[0].n_chunks(), self._buffers)
        outcomes = self.backend.run(plans, reduction)
        return reduction.finish(), outcomes

    # --- one step -------------------------------------------------------------------------
    def step(self) -> StepMetrics:
        t0 = time.perf_counter()
        failures0 = self.backend.failures
        epoch, start, size = self._next_batch()
        (grad, norm_sums, total), outcomes = self._compute(self._plans(size, epoch, start))
        indices = self.permutation(epoch)[start:start + size]
        if total.examples != size or total.index_sum != int(indices.sum()):
            raise LedgerError(f"step {self.state.step + 1}: workers used {total.examples} examples "
                              f"(index sum {total.index_sum}), planned {size} ({int(indices.sum())})")
        self.ledger.record(epoch, indices)
        lr = self.config.optimizer.lr_at(self.state.step, self.total_steps)
        buffers = self.model.buffers_of(self.state.theta) if total.stats is not None else None
        grad_norm = self.optimizer.step(self.state.theta, grad, lr, norm_sums)
        if buffers is not None:  # running statistics: their own update, not the optimizer's
            self.model.update_buffers(self.state.theta, buffers, total.stats)
        s = self.state
        s.step, s.position, s.version = s.step + 1, start + size, s.version + 1
        s.theta = self.backend.publish(s.theta)
        if self.on_weights:
            self.on_weights(s.version, s.step, s.theta)
        elapsed = time.perf_counter() - t0
        m = StepMetrics(step=s.step, epoch=epoch, loss=total.loss / total.count,
                        accuracy=total.correct / total.count if self.train.task == "classification" else None,
                        grad_norm=grad_norm, lr=lr, batch=size, samples_per_s=size / elapsed, step_s=elapsed,
                        version=s.version, workers=self._timings(outcomes))
        every = self.config.val_every
        if self.val is not None and ((every and s.step % every == 0) or self.done):
            m.val_loss, m.val_accuracy = self.evaluate()
        m.failures = self.backend.failures - failures0  # the validation pass's recoveries too
        if self.early is not None and self.stopped is None:
            self.stopped = self.early.observe(m)
            if self.stopped:
                log.info("%s", self.stopped)
        if self.done:
            self.ledger.close()  # the last epoch is over however the steps are driven
            if self.test is not None:
                m.test_loss, m.test_accuracy = self.evaluate_test()
        if self.on_step:
            self.on_step(m)
        return m

    def _timings(self, outcomes) -> list[WorkerTiming]:
        t = [WorkerTiming(o.worker, o.node, o.compute_s, o.total_s) for o in outcomes]
        if len(t) > 1:
            median = statistics.median(w.compute_s for w in t)
            for w in t:
                w.straggler = w.compute_s > 2 * median
        return t

    def run(self) -> Iterator[StepMetrics]:
        while not self.done:
            yield self.step()

    def evaluate(self) -> tuple[float, float | None]:
        """Validation loss and accuracy: forward only, sharded like a training step."""
        n = self.val.n
        (_, _, total), _ = self._compute(self._plans(n, kind=PlanKind.EVALUATE))
        acc = total.correct / total.count if self.val.task == "classification" else None
        return total.loss / total.count, acc

    def evaluate_test(self) -> tuple[float, float | None]:
        """The held-out test set's loss and accuracy on the current weights, once, at the end.

        Here in the coordinator, a chunk at a time in evaluation mode: the test set never
        travels to the workers, and the result has the one process's fixed bits."""
        ds, chunk = self.test, self.config.chunk_size
        parts = [self.model.evaluate(self.state.theta, ds.X[lo:lo + chunk], ds.y[lo:lo + chunk])
                 for lo in range(0, ds.n, chunk)]
        count = sum(p.count for p in parts)
        acc = sum(p.correct for p in parts) / count if ds.task == "classification" else None
        return math.fsum(p.loss for p in parts) / count, acc

    # --- control --------------------------------------------------------------------
    def resize(self, workers: int) -> None:
        """Change the worker count between steps: the weights' trajectory is unchanged."""
        self.backend.resize(workers)

    def close(self) -> None:
        self.backend.close()

    @property
    def theta(self) -> np.ndarray:
        return self.state.theta

    def snapshot(self) -> TrainState:
        """A checkpointable copy of the whole state, optimizer moments included."""
        s = self.state
        return TrainState(theta=s.theta.copy(), optimizer=self.optimizer.state_dict(), step=s.step,
                          epoch=s.epoch, position=s.position, version=s.version, ledger=self.ledger.state_dict(),
                          early={} if self.early is None else self.early.state_dict())

    def stats(self) -> dict:
        current = self.ledger.in_progress()
        epochs = self.ledger.reports + ([current] if current else [])
        return {"epochs": [r.as_dict() for r in epochs], "workers": self.backend.nodes(),
                "failures": self.backend.failures, "steps": self.state.step, "total_steps": self.total_steps,
                **({"stopped": self.stopped} if self.stopped else {})}
