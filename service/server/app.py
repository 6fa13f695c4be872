"""`serve(config)`: the one entry point that assembles and starts the service.

    dptrain serve --port 50051          # or, from Python:
    server = serve(ServerConfig(port=0)); print(server.address); server.wait()
"""
from __future__ import annotations

import logging
import sys
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.rpc import pb, pb_grpc
from service.runtime import ensure_ray
from service.store.checkpoints import CheckpointStore
from service.store.sqlite import SqliteJobStore

from .auth import TokenAuth
from .config import ServerConfig
from .datasets import DatasetRegistry
from .manager import JobManager
from .servicer import TrainerServicer

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Trainer"].full_name


@dataclass
class Server:
    config: ServerConfig
    grpc_server: grpc.Server
    manager: JobManager
    health: health.HealthServicer
    port: int
    metrics_port: int | None

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    def stop(self, grace: float = 5.0) -> None:
        """Pause running jobs at a step boundary (checkpointed, resumable), then stop serving."""
        self.health.enter_graceful_shutdown()
        self.manager.stop()
        self.grpc_server.stop(grace).wait()
        self.manager.store.close()

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


def serve(config: ServerConfig) -> Server:
    # The training threads are CPU-bound Python between numpy calls; a short GIL switch
    # interval keeps small RPCs (GetJob, health) from queueing behind them for 5 ms a hop.
    sys.setswitchinterval(config.gil_switch_interval_s)
    generated = config.ensure_token()
    ensure_ray(config.ray_address, config.ray_num_cpus)
    state = config.state_dir
    state.mkdir(parents=True, exist_ok=True)
    store = SqliteJobStore(state / "jobs.sqlite")
    manager = JobManager(store, CheckpointStore(state / "checkpoints"),
                         DatasetRegistry(store, state / "datasets", config.limits),
                         config.max_running_jobs, config.weights_ring)
    limit = config.limits.max_message_bytes
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.grpc_threads, thread_name_prefix="grpc"),
        interceptors=[TokenAuth(config.token)] if config.token else [],
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
        maximum_concurrent_rpcs=config.grpc_threads,
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
    metrics_port = _start_metrics(config)
    manager.start()
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("dptrain serving on %s:%d (state in %s)", config.host, port, state)
    if generated:
        log.warning("bound to %s: generated bearer token %s", config.host, config.token)
    return Server(config, server, manager, health_servicer, port, metrics_port)


def _start_metrics(config: ServerConfig) -> int | None:
    if config.metrics_port is None:
        return None
    from prometheus_client import start_http_server

    httpd, thread = start_http_server(config.metrics_port, addr=config.host)
    return httpd.server_address[1]
