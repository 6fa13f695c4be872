"""Shared fixtures. Ray, when a test needs it, is started once per session (see ray_session)."""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (2 CPUs, like the CI machine)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def server(ray_session, tmp_path_factory):
    """A real gRPC server on loopback with a real SQLite store, two jobs at a time."""
    from service.server import ServerConfig, serve

    srv = serve(ServerConfig(port=0, state_dir=tmp_path_factory.mktemp("state"), max_running_jobs=2))
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    from service.client import Client

    with Client(server.address) as c:
        yield c
