"""Durable service state: jobs and their metrics (a JobStore) and training checkpoints."""
from .base import (
    STATES,
    TERMINAL,
    DatasetNotFound,
    IllegalTransition,
    InvalidPageToken,
    JobNotFound,
    JobRecord,
    JobStore,
    StoreError,
)
from .checkpoints import CheckpointNotFound, CheckpointStore
from .memory import MemoryJobStore
from .sqlite import SqliteJobStore

__all__ = [
    "STATES", "TERMINAL", "CheckpointNotFound", "CheckpointStore", "DatasetNotFound", "IllegalTransition",
    "InvalidPageToken", "JobNotFound", "JobRecord", "JobStore", "MemoryJobStore", "SqliteJobStore", "StoreError",
]
