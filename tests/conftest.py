"""Shared fixtures. Ray, when a test needs it, is started once per session (see ray_session)."""
from __future__ import annotations

import os
import sys

# Bitwise results depend on which OpenBLAS kernel runs the GEMMs (AVX-512 and AVX2 kernels
# round differently). The golden weights (tests/test_golden.py) were recorded with the
# Haswell (AVX2) kernel, which every x86-64 machine here can run: pin it for this session and
# every process it starts (servers, Ray workers), before numpy is loaded, unless the caller
# chose one. docs/engine-numerics.md says more.
if "OPENBLAS_CORETYPE" not in os.environ:
    if "numpy" in sys.modules:  # too late: OpenBLAS reads the variable when it loads
        raise RuntimeError("numpy was imported before tests/conftest.py could set OPENBLAS_CORETYPE")
    os.environ["OPENBLAS_CORETYPE"] = "Haswell"

import pytest  # noqa: E402

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
    from dptrain.server import ServerConfig, serve

    srv = serve(ServerConfig(port=0, state_dir=tmp_path_factory.mktemp("state"), max_running_jobs=2))
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    from dptrain.client import Client

    with Client(server.address) as c:
        yield c
