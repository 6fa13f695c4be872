"""What one worker computes in one step: gradient sums over its run of micro-chunks.

The Ray actor and the in-process reference loop both call `ShardComputer`, so "N
workers" and "one process" run literally the same arithmetic. Each chunk is computed
with single-threaded BLAS (OpenBLAS gives different bits at different thread counts, so
a worker with c CPUs runs c chunks side by side instead of one chunk on c threads).

The BLAS limit costs ~1 ms per call through `threadpool_limits` (it rediscovers the
loaded libraries by reading /proc/self/maps every time), so one `ThreadpoolController`
is built per process and reused; a worker process pins BLAS to 1 thread once for good
(`pin_single_thread_blas`), after which `compute` skips the limit entirely.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping

import numpy as np
from dptrain.core.reduce import Partial, chunk_bounds, cover, run_sums
from dptrain.engine import Context, Model
from threadpoolctl import ThreadpoolController


class PlanKind(Enum):
    TRAIN = "train"  # gradients over training chunks
    EVALUATE = "evaluate"  # loss and accuracy over validation chunks, forward only


@dataclass(frozen=True)
class Plan:
    """A worker's share of one step: chunks [run[0], run[1]) of the batch at `start`.

    A TRAIN plan reads the training set in `epoch`'s permutation and returns gradient
    sums; an EVALUATE plan reads the validation set in order, forward only (its `epoch`
    is unused).
    """

    epoch: int
    start: int
    size: int
    chunk: int
    run: tuple[int, int]
    kind: PlanKind = PlanKind.TRAIN
    step: int = 0  # the optimizer step this plan computes (dropout's masks are keyed on it)

    @property
    def trains(self) -> bool:
        return self.kind is PlanKind.TRAIN

    def n_chunks(self) -> int:
        return -(-self.size // self.chunk)

    def n_nodes(self) -> int:
        """How many tree nodes (hence partial sums) the run returns."""
        return len(cover(*self.run, self.n_chunks()))


_controller: ThreadpoolController | None = None
_pinned = False


def blas_controller() -> ThreadpoolController:
    """This process's thread-pool controller, discovered once (after numpy loaded BLAS)."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller


def pin_single_thread_blas() -> None:
    """For processes that only ever compute chunks (Ray workers): 1 BLAS thread, for good."""
    global _pinned
    blas_controller().limit(limits=1, user_api="blas")  # never undone
    _pinned = True


def single_thread_blas():
    """A context with 1 BLAS thread: free once pinned, else the cached controller's limit."""
    return nullcontext() if _pinned else blas_controller().limit(limits=1, user_api="blas")


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of epoch `epoch`: a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(n)


@dataclass(frozen=True)
class WorkerJob:
    """What a worker needs to compute a job's plans: the model, the data, the seed (which
    fixes each epoch's order) and its CPUs (`threads`: chunks computed side by side).

    Sent once per worker (Ray puts it in the object store once; its arrays arrive as
    zero-copy read-only views); each step then only sends plans and weights.
    """

    model_spec: Mapping[str, Any]
    dtype: str
    X: np.ndarray
    y: np.ndarray
    X_val: np.ndarray | None
    y_val: np.ndarray | None
    seed: int
    cpus: float = 1.0

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))


class ShardComputer:
    """Holds a model and zero-copy views of the data; computes tree-node partial sums."""

    def __init__(self, job: WorkerJob, threads: int = 1) -> None:
        self.models = [Model(job.model_spec, dtype=job.dtype) for _ in range(max(1, threads))]
        self.X, self.y, self.X_val, self.y_val = job.X, job.y, job.X_val, job.y_val
        self.seed = job.seed
        self.pool = ThreadPoolExecutor(len(self.models)) if len(self.models) > 1 else None
        self._perm: tuple[int, np.ndarray] | None = None
        self._bufs: dict[tuple[int, int], np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, epoch_permutation(self.seed, epoch, len(self.X)))
        return self._perm[1]

    def compute(self, theta: np.ndarray, plan: Plan, out: list[np.ndarray] | None = None) -> list[Partial]:
        """Partial sums for the tree nodes that tile this worker's run of chunks.

        With `out` (one array per node of `cover(run)`, training plans only), node j's
        gradient sum is written into out[j]: the leftmost chunk of the node computes
        straight into it (`Model.backward` fills and returns the `grad` it is given) and
        the node's additions accumulate there (`dptrain.core.reduce.run_sums`), so no
        copy is made and parts[j].grad is out[j] (tests/test_shm.py checks it). Without
        it, gradients live in reusable buffers valid until the next call.
        """
        bounds = chunk_bounds(plan.size, plan.chunk)
        n_chunks = len(bounds)
        a, b = plan.run
        nodes = cover(a, b, n_chunks)
        train = plan.trains
        if train:
            X, y = self.X, self.y
            order = self.permutation(plan.epoch)[plan.start:plan.start + plan.size]
        else:
            X, y = self.X_val, self.y_val
            order = np.arange(plan.start, plan.start + plan.size)
        dest: dict[int, np.ndarray] = {}
        if out is not None and train:
            if len(out) != len(nodes):
                raise ValueError(f"{len(out)} output buffers for {len(nodes)} tree nodes")
            dest = {node[0]: o for node, o in zip(nodes, out)}  # a node's leftmost chunk
        jobs = [(i, order[bounds[i][0]:bounds[i][1]]) for i in range(a, b)]
        lanes = len(self.models)

        def lane(t: int) -> list[Partial]:  # lane t owns model t: chunks t, t + lanes, ...
            return [self._chunk(t, theta, X, y, *jobs[k], k, train, dest.get(jobs[k][0]), plan.step)
                    for k in range(t, len(jobs), lanes)]

        with single_thread_blas():
            if self.pool is None:
                leaves = lane(0)
            else:
                leaves = [p for ps in self.pool.map(lane, range(lanes)) for p in ps]
        return run_sums(leaves, plan.run, n_chunks)

    def _chunk(self, lane: int, theta: np.ndarray, X: np.ndarray, y: np.ndarray, i: int,
               idx: np.ndarray, k: int, train: bool, out: np.ndarray | None = None, step: int = 0) -> Partial:
        """Gather chunk i's rows into a contiguous buffer, then one grad_sum (or evaluate).

        A training chunk's forward pass knows its step and its examples' dataset rows
        (`Context`), so dropout draws the same mask for an example whichever worker and
        chunk computes it."""
        model = self.models[lane]
        Xc = np.take(X, idx, axis=0, out=model._ws.get("X", (len(idx), *X.shape[1:]), X.dtype))
        yc = np.take(y, idx, axis=0)
        node = (i, i + 1)
        if not train:
            e = model.evaluate(theta, Xc, yc)
            return Partial(node, None, e.loss, e.count, e.correct, int(idx.sum()), len(idx))
        if out is None:
            out = self._grad_buf(k, theta.size, model.dtype)
        s = model.grad_sum(theta, Xc, yc, out=out, ctx=Context(self.seed, step, idx) if model.contextual else None)
        return Partial(node, s.grad, s.loss, s.count, s.correct, int(idx.sum()), len(idx), s.stats)

    def _grad_buf(self, k: int, size: int, dtype: np.dtype) -> np.ndarray:
        """One reusable gradient buffer per chunk slot; valid until the next `compute`."""
        buf = self._bufs.get((k, size))
        if buf is None:
            buf = self._bufs[(k, size)] = np.empty(size, dtype=dtype)
        return buf
