"""The thin gRPC servicer: each RPC calls one handler and maps errors to status codes.

    SpecError, InvalidPageToken, AmbiguousId,
    RequestIdConflict                          -> INVALID_ARGUMENT  (the message names the field)
    JobNotFound, DatasetNotFound,
    CheckpointNotFound                         -> NOT_FOUND
    NotReady, IllegalTransition                -> FAILED_PRECONDITION
    TooLarge                                   -> RESOURCE_EXHAUSTED
    StoreUnavailable                           -> UNAVAILABLE  (the message names the store;
                                                  retry once it can write again)
    anything else                              -> INTERNAL (logged with its traceback)

Every message is bounded (`bounds.ERROR_CHARS`): client strings in it are clipped where
they are quoted, and this is the last guard.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable

import grpc
from dptrain.engine import SpecError
from dptrain.rpc import bounds, pb_grpc
from dptrain.store.base import (
    AmbiguousId,
    DatasetNotFound,
    IllegalTransition,
    InvalidPageToken,
    JobNotFound,
    RequestIdConflict,
    StoreUnavailable,
)
from dptrain.store.checkpoints import CheckpointNotFound

from . import handlers as h
from .config import Limits
from .datasets import TooLarge
from .manager import JobManager

log = logging.getLogger(__name__)

STATUS = [
    ((SpecError, InvalidPageToken, AmbiguousId, RequestIdConflict), grpc.StatusCode.INVALID_ARGUMENT),
    ((JobNotFound, DatasetNotFound, CheckpointNotFound), grpc.StatusCode.NOT_FOUND),
    ((h.NotReady, IllegalTransition), grpc.StatusCode.FAILED_PRECONDITION),
    ((TooLarge,), grpc.StatusCode.RESOURCE_EXHAUSTED),
    ((StoreUnavailable,), grpc.StatusCode.UNAVAILABLE),
]


def status_code(e: Exception) -> grpc.StatusCode:
    for types, code in STATUS:
        if isinstance(e, types):
            return code
    return grpc.StatusCode.INTERNAL


def _abort(method: str, context: grpc.ServicerContext, e: Exception):
    if context.code() not in (None, grpc.StatusCode.OK):  # aborted already (an undecodable chunk): keep it
        raise e
    code = status_code(e)
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    if len(msg) > bounds.ERROR_CHARS:
        msg = msg[:bounds.ERROR_CHARS] + "..."
    if code is grpc.StatusCode.INTERNAL:
        log.exception("[Trainer.%s] internal error", method)
    else:
        log.info("[Trainer.%s] %s: %s", method, code.name, msg)
    context.abort(code, msg)


def unary(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(self, request, context):
        try:
            return fn(self, request, context)
        except Exception as e:  # noqa: BLE001 - mapped to a status code
            _abort(fn.__name__, context, e)

    return wrapper


def streaming(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(self, request, context):
        try:
            yield from fn(self, request, context)
        except Exception as e:  # noqa: BLE001
            _abort(fn.__name__, context, e)
        if self.manager.stopping and context.is_active():
            context.abort(grpc.StatusCode.CANCELLED, "the server is shutting down")

    return wrapper


class TrainerServicer(pb_grpc.TrainerServicer):
    def __init__(self, manager: JobManager, limits: Limits) -> None:
        self.manager, self.limits = manager, limits
        self.chunk_bytes = min(1 << 20, limits.max_message_bytes // 2)

    def _active(self, context: grpc.ServicerContext) -> Callable[[], bool]:
        return lambda: context.is_active() and not self.manager.stopping

    @unary
    def SubmitJob(self, request, context):
        job = h.submit_job(self.manager, request)
        log.info("[Trainer.SubmitJob] accepted %s", job.id)
        return job

    @unary
    def GetJob(self, request, context):
        return h.get_job(self.manager, request)

    @unary
    def ListJobs(self, request, context):
        return h.list_jobs(self.manager, request)

    @unary
    def CancelJob(self, request, context):
        return h.cancel_job(self.manager, request)

    @unary
    def ResumeJob(self, request, context):
        job = h.resume_job(self.manager, request)
        log.info("[Trainer.ResumeJob] requeued %s", job.id)
        return job

    @streaming
    def WatchJob(self, request, context):
        yield from h.watch_job(self.manager, request, self._active(context))

    @streaming
    def StreamWeights(self, request, context):
        yield from h.stream_weights(self.manager, request, self._active(context), self.chunk_bytes)

    @streaming
    def GetWeights(self, request, context):
        yield from h.get_weights(self.manager, request, self.chunk_bytes)

    @unary
    def Predict(self, request, context):
        return h.predict(self.manager, request, self.limits.max_predict_rows)

    @unary
    def GetMetrics(self, request, context):
        return h.get_metrics(self.manager, request)

    @unary
    def GetJobLog(self, request, context):
        return h.get_job_log(self.manager, request)

    @unary
    def InputGradient(self, request, context):
        return h.input_gradient(self.manager, request, self.limits.max_predict_rows)

    @unary
    def UploadDataset(self, request_iterator, context):
        return h.upload_dataset(self.manager, request_iterator)

    @unary
    def ListDatasets(self, request, context):
        return h.list_datasets(self.manager, request)
