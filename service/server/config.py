"""Server settings: where state lives, what it binds, and the limits it enforces."""
from __future__ import annotations

import ipaddress
import os
import secrets
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from dptrain.engine import Limits as EngineLimits

from .streams import StreamLimits


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_state_dir() -> Path:
    return Path(os.environ.get("DPTRAIN_HOME", Path.home() / ".dptrain"))


@dataclass(frozen=True)
class Limits(EngineLimits):
    """The engine's limits on a model (`dptrain.engine.Limits`) plus the service's own.

    Requests past these get RESOURCE_EXHAUSTED (or INVALID_ARGUMENT for spec sizes). The
    server allows half the parameters a local run may have: its jobs share one machine.
    """

    max_message_bytes: int = 64 << 20  # per gRPC message, both directions
    max_params: int = 50_000_000  # parameters per job (a local run: the engine's 100M)
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
    metrics_host: str = "127.0.0.1"  # its own bind address: metrics stay private when gRPC is public
    dashboard_port: int | None = None  # the web dashboard; None: off, 0: a free port
    dashboard_host: str = "127.0.0.1"  # its bind address; off loopback the token guards its data
    ray_address: str | None = None  # join this cluster instead of starting Ray here
    ray_num_cpus: float | None = None  # CPUs of an embedded Ray instance (None: all)
    weights_ring: int = 32  # recent weight versions kept for slow StreamWeights readers
    streams: StreamLimits = field(default_factory=StreamLimits)  # open streams; unary calls have a reserve
    shutdown_grace_s: float = 5.0  # in-flight calls get this long at shutdown, then are cancelled
    gil_switch_interval_s: float = 0.0005  # Python's default 5 ms starves short RPCs under load
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_cert is not None:
            self.tls_cert, self.tls_key = Path(self.tls_cert), Path(self.tls_key)

    @property
    def loopback(self) -> bool:
        """Whether everything that serves job data (gRPC, and the dashboard when on) is loopback."""
        hosts = [self.host] + ([self.dashboard_host] if self.dashboard_port is not None else [])
        return all(_is_loopback(h) for h in hosts)

    def check_tls(self) -> None:
        """Say what is wrong with the certificate and key (gRPC itself only says it could not bind)."""
        if self.tls_cert is None:
            return
        for what, path in (("tls_cert", self.tls_cert), ("tls_key", self.tls_key)):
            if not path.is_file():
                raise ValueError(f"{what}: no such file: {path}")
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.tls_cert, self.tls_key)
        except ssl.SSLError as e:
            reason = getattr(e, "reason", None) or str(e)
            hint = {"KEY_VALUES_MISMATCH": "the key does not belong to the certificate (swapped or from "
                                           "another pair?)",
                    "PEM_LIB": "a file is not a PEM certificate / private key (swapped?)"}.get(reason, reason)
            raise ValueError(f"tls_cert {self.tls_cert} / tls_key {self.tls_key}: {hint}") from None

    def ensure_token(self) -> bool:
        """A token is mandatory off loopback: generate one if none was given (True if generated)."""
        if self.token or self.loopback:
            return False
        self.token = secrets.token_urlsafe(24)
        return True
