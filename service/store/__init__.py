"""Durable service state: jobs and their metrics (a JobStore) and training checkpoints.

``base`` is the interface, the job states and their transitions; ``sqlite`` and ``memory``
implement it (one shared test suite); ``checkpoints`` keeps sha256-verified weight files;
``disk`` probes and syncs directories. May import ``dptrain.core`` (the checkpointed
``TrainState``) and the engine's error helpers; nothing above it.
"""
from .base import (
    ACTIVE,
    STATES,
    TERMINAL,
    AmbiguousId,
    DatasetNotFound,
    IllegalTransition,
    InvalidPageToken,
    JobNotFound,
    JobRecord,
    JobState,
    JobStore,
    RequestIdConflict,
    StoreError,
    StoreUnavailable,
)
from .checkpoints import CheckpointCorrupt, CheckpointNotFound, CheckpointStore
from .memory import MemoryJobStore
from .sqlite import SqliteJobStore

__all__ = [
    "ACTIVE", "STATES", "TERMINAL", "AmbiguousId", "CheckpointCorrupt", "CheckpointNotFound", "CheckpointStore",
    "DatasetNotFound", "IllegalTransition", "InvalidPageToken", "JobNotFound", "JobRecord", "JobState", "JobStore",
    "MemoryJobStore", "RequestIdConflict", "SqliteJobStore", "StoreError", "StoreUnavailable",
]
