"""Server settings: where state lives, what it binds, and the limits it enforces."""
from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path


def default_state_dir() -> Path:
    return Path(os.environ.get("DPTRAIN_HOME", Path.home() / ".dptrain"))


@dataclass
class Limits:
    """Requests past these get RESOURCE_EXHAUSTED (or INVALID_ARGUMENT for spec sizes)."""

    max_message_bytes: int = 64 << 20  # per gRPC message, both directions
    max_params: int = 50_000_000  # parameters per job
    max_width: int = 16384  # units per layer
    max_upload_bytes: int = 512 << 20  # per uploaded dataset
    max_examples: int = 1_000_000  # synthetic datasets' n
    max_predict_rows: int = 100_000


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051  # 0: pick a free port
    state_dir: Path = field(default_factory=default_state_dir)
    max_running_jobs: int = 1  # the rest wait, in submission order, as QUEUED
    token: str | None = None  # bearer token; generated when binding a non-loopback address
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics_port: int | None = None  # Prometheus endpoint; None: off, 0: a free port
    ray_address: str | None = None  # join this cluster instead of starting Ray here
    ray_num_cpus: float | None = None  # CPUs of an embedded Ray instance (None: all)
    weights_ring: int = 32  # recent weight versions kept for slow StreamWeights readers
    grpc_threads: int = 128  # each open stream holds one
    gil_switch_interval_s: float = 0.0005  # Python's default 5 ms starves short RPCs under load
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def ensure_token(self) -> bool:
        """A token is mandatory off loopback: generate one if none was given (True if generated)."""
        if self.token or self.loopback:
            return False
        self.token = secrets.token_urlsafe(24)
        return True
