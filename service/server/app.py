"""`serve(config)`: the one entry point that assembles and starts the service.

    dptrain serve --port 50051          # or, from Python:
    server = serve(ServerConfig(port=0)); print(server.address); server.wait()
"""
from __future__ import annotations

import logging
import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from dptrain.execution.runtime import ensure_ray
from dptrain.execution.transports import segments as shm
from dptrain.rpc import pb, pb_grpc
from dptrain.store.base import StoreUnavailable
from dptrain.store.checkpoints import CheckpointStore
from dptrain.store.sqlite import SqliteJobStore
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .auth import TokenAuth
from .config import ServerConfig
from .datasets import DatasetRegistry
from .manager import JobManager
from .servicer import TrainerServicer
from .streams import DecodeGuard, StreamLimiter

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Trainer"].full_name


@dataclass
class Server:
    config: ServerConfig
    grpc_server: grpc.Server
    manager: JobManager
    health: health.HealthServicer
    monitor: StoreMonitor
    streams: StreamLimiter
    port: int
    metrics_port: int | None
    dashboard: Any = None  # dptrain.dashboard.Dashboard when served

    @property
    def dashboard_url(self) -> str | None:
        """The dashboard's address (without the token), or None when it is off."""
        return None if self.dashboard is None else f"http://{self.config.dashboard_host}:{self.dashboard.port}/"

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    def stop(self, grace: float | None = None) -> bool:
        """Pause running jobs at a step boundary (checkpointed, resumable), then stop serving.

        Every wait is bounded: calls still running `grace` seconds after the stop are
        cancelled, and a gRPC core that does not confirm within a few more seconds is left
        behind. Returns whether everything stopped cleanly.
        """
        grace = self.config.shutdown_grace_s if grace is None else grace
        self.health.enter_graceful_shutdown()
        self.monitor.stop()
        if self.dashboard is not None:
            self.dashboard.stop()
        clean = self.manager.stop()
        if not self.grpc_server.stop(grace).wait(timeout=grace + 5.0):
            log.warning("gRPC did not confirm its shutdown within %.0f s; exiting anyway", grace + 5.0)
            clean = False
        self.manager.store.close()
        return clean

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


def serve(config: ServerConfig) -> Server:
    # The training threads are CPU-bound Python between numpy calls; a short GIL switch
    # interval keeps small RPCs (GetJob, health) from queueing behind them for 5 ms a hop.
    sys.setswitchinterval(config.gil_switch_interval_s)
    config.check_tls()
    generated = config.ensure_token()
    ensure_ray(config.ray_address, config.ray_num_cpus)
    removed = shm.cleanup_stale()  # a SIGKILLed server's shared-memory files
    if removed:
        log.info("removed %d shared-memory files of a server that is gone", len(removed))
    state = config.state_dir
    state.mkdir(mode=0o700, parents=True, exist_ok=True)  # jobs, checkpoints and uploads: ours alone
    store = SqliteJobStore(state / "jobs.sqlite")
    manager = JobManager(store, CheckpointStore(state / "checkpoints"),
                         DatasetRegistry(store, state / "datasets", config.limits),
                         config.max_running_jobs, config.weights_ring)
    limit = config.limits.max_message_bytes
    threads = config.streams.threads
    # Auth first: a refused client's stream is never counted against anyone's limit.
    streams = StreamLimiter(config.streams)
    interceptors = ([TokenAuth(config.token)] if config.token else []) + [streams, DecodeGuard()]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
        interceptors=interceptors,
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
        maximum_concurrent_rpcs=threads + config.streams.unary_threads,  # short calls may queue briefly
    )
    pb_grpc.add_TrainerServicer_to_server(TrainerServicer(manager, config.limits), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    target = f"{config.host}:{config.port}"
    if config.tls_cert:
        creds = grpc.ssl_server_credentials([(config.tls_key.read_bytes(), config.tls_cert.read_bytes())])
        port = server.add_secure_port(target, creds)
    else:
        port = server.add_insecure_port(target)
    if port == 0:
        raise OSError(f"could not bind gRPC to {target} (in use, or not an address of this machine)")
    metrics_port = _start_metrics(config)
    dashboard = None
    if config.dashboard_port is not None:
        from dptrain.dashboard import start_dashboard

        dashboard = start_dashboard(manager, config.dashboard_host, config.dashboard_port, config.token)
    manager.start()
    server.start()
    monitor = StoreMonitor(manager, health_servicer)
    monitor.start()
    log.debug("dptrain serving on %s:%d (state in %s)", config.host, port, state)  # `dptrain serve` prints it
    if generated:
        log.warning("bound to %s: generated bearer token %s", config.host, config.token)
    return Server(config, server, manager, health_servicer, monitor, streams, port, metrics_port, dashboard)


def _start_metrics(config: ServerConfig) -> int | None:
    if config.metrics_port is None:
        return None
    from prometheus_client import start_http_server

    httpd, thread = start_http_server(config.metrics_port, addr=config.metrics_host)
    return httpd.server_address[1]


class StoreMonitor:
    """Health follows the stores: NOT_SERVING while the job store or the checkpoints cannot be
    written (a full disk), SERVING again when they can; final states that could not be
    recorded meanwhile are written then. No restart needed."""

    def __init__(self, manager: JobManager, health_servicer: health.HealthServicer, every_s: float = 2.0) -> None:
        self.manager, self.health, self.every_s = manager, health_servicer, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dptrain-health", daemon=True)
        self.serving: bool | None = None

    def start(self) -> None:
        self.check()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> bool:
        m = self.manager
        problems = []
        for store in (m.store, m.checkpoints):
            try:
                store.check_writable()
            except StoreUnavailable as e:
                problems.append(str(e))
        ok = not problems
        if ok != self.serving:
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", SERVICE_NAME):
                self.health.set(name, status)
            (log.info if ok else log.error)("health: %s", "SERVING" if ok else "NOT_SERVING: " + "; ".join(problems))
            self.serving = ok
        if ok:
            m.settle_pending()
        return ok

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the monitor outlives any one failure
                log.exception("health check failed")
