"""Durable service state: jobs and their metrics (a JobStore) and training checkpoints."""
from .base import (
    STATES,
    TERMINAL,
    AmbiguousId,
    DatasetNotFound,
    IllegalTransition,
    InvalidPageToken,
    JobNotFound,
    JobRecord,
    JobStore,
    RequestIdConflict,
    StoreError,
    StoreUnavailable,
)
from .checkpoints import CheckpointCorrupt, CheckpointNotFound, CheckpointStore
from .memory import MemoryJobStore
from .sqlite import SqliteJobStore

__all__ = [
    "STATES", "TERMINAL", "AmbiguousId", "CheckpointCorrupt", "CheckpointNotFound", "CheckpointStore",
    "DatasetNotFound", "IllegalTransition", "InvalidPageToken", "JobNotFound", "JobRecord", "JobStore",
    "MemoryJobStore", "RequestIdConflict", "SqliteJobStore", "StoreError", "StoreUnavailable",
]
