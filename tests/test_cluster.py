"""A real 3-node local cluster: each node its own raylet; the coordinator joined to it."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest
from dptrain.client import Client
from dptrain.cluster import ClusterConfig, cluster_token, down, up
from dptrain.rpc import convert

from .test_hardening_ray import gcs_client
from .test_service_e2e import assert_same_bits, library_weights

JOB = {
    "model": {"input": 64, "layers": ["linear 32", "tanh", "linear 10"], "loss": "cross_entropy"},
    "dataset": {"name": "digits", "val_fraction": 0.2},
    "optimizer": {"name": "adam", "lr": 0.003},
    "batch_size": 50, "chunk_size": 16, "epochs": 4, "workers": 3, "cpus_per_worker": 0.5,
    "worker_timeout_s": 30, "recovery_budget_s": 150,
}


def free_port_block(span: int = 400) -> int:
    """A base port whose neighbourhood [base, base + span) looks free."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + span < 60000 and all(_free(base + k) for k in (0, 1, 101, 102, 201, 202)):
            return base
    raise RuntimeError("no free port block")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cfg = ClusterConfig(state_dir=tmp_path_factory.mktemp("cluster"), nodes=3, ray_port=free_port_block(),
                        grpc_port=free_port_block(1))
    started = time.monotonic()
    state = up(cfg)
    print(f"\n[cluster] 3 nodes + coordinator up in {time.monotonic() - started:.1f}s")
    yield cfg, state
    pids = [p.pid for p in state.procs()]
    down(cfg.state_file)
    assert not cfg.state_file.exists()
    time.sleep(0.5)
    assert not [pid for pid in pids if _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] != "Z"


def _raylet_of(node_index: int, cfg: ClusterConfig) -> int:
    port = cfg.ray_port + 100 * node_index + 1
    out = subprocess.check_output(["pgrep", "-f", f"raylet.*node_manager_port={port}"], text=True)
    return int(out.split()[0])


@pytest.mark.timeout(600)
def test_job_over_grpc_spreads_over_nodes_and_matches_the_loop(cluster):
    cfg, state = cluster
    with Client(state.grpc_address) as c:
        job = c.submit(JOB)
        nodes = set()
        for e in c.watch(job.id):
            if e.WhichOneof("event") == "metrics":
                nodes |= {w.node for w in e.metrics.workers}
        final = c.get(job.id)
        assert convert.state_from_pb(final.state) == "SUCCEEDED", final.error
        assert len(nodes) == 3  # one worker per node
        _, _, weights = c.weights(job.id)
    assert_same_bits(weights, library_weights(JOB))


@pytest.mark.timeout(600)
def test_a_node_lost_mid_job_changes_nothing(cluster):
    """A raylet killed mid-job: the job recovers from it (counted failures, none before the
    kill) and still ends on the local loop's bits."""
    cfg, state = cluster
    kill_step = 20
    with Client(state.grpc_address) as c:
        job = c.submit(JOB)
        killed_at = None
        failures_by_step: dict[int, int] = {}
        for e in c.watch(job.id):
            if e.WhichOneof("event") != "metrics":
                continue
            if e.metrics.step == kill_step:
                os.kill(_raylet_of(2, cfg), signal.SIGKILL)  # a non-head node's raylet
                killed_at = time.monotonic()
            if e.metrics.failures:
                if killed_at is not None and not failures_by_step:
                    print(f"\n[cluster] node loss recovered {time.monotonic() - killed_at:.1f}s after the kill")
                failures_by_step[e.metrics.step] = e.metrics.failures
        final = c.get(job.id)
        assert convert.state_from_pb(final.state) == "SUCCEEDED", final.error
        _, _, weights = c.weights(job.id)
    assert killed_at is not None, f"the watch never reported step {kill_step}"
    # The recovery is the kill's: no step had failed before it, some step after it did, and
    # the job's own count (GetJob's stats, which also count failures outside a step) agrees.
    assert failures_by_step, "the killed node's worker was never recovered: the kill did nothing"
    assert min(failures_by_step) > kill_step, failures_by_step
    assert final.stats.failures >= sum(failures_by_step.values()) > 0, (final.stats.failures, failures_by_step)
    assert_same_bits(weights, library_weights(JOB))


def test_the_nodes_admit_only_the_cluster_token(cluster, tmp_path):
    """The nodes listen on every interface (Ray keeps several nodes off loopback): the
    token is what keeps other hosts out, and the launcher never starts them without it."""
    cfg, state = cluster
    token = cluster_token(cfg.state_dir)
    assert "KEYS" in gcs_client(state.ray_address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token).stdout
    for env in ({"HOME": str(tmp_path)}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}):
        refused = gcs_client(state.ray_address, **env)
        assert "KEYS" not in refused.stdout and "auth" in refused.stderr.lower(), (env, refused.stderr[-1500:])


def test_a_state_directory_too_long_for_rays_sockets_is_named_at_once(tmp_path):
    from dptrain.cluster import ClusterConfig, ClusterError, up

    deep = tmp_path / ("d" * 60)
    with pytest.raises(ClusterError, match=r"too long for Ray's Unix sockets .* set DPTRAIN_HOME to a shorter one"):
        up(ClusterConfig(state_dir=deep))
    assert not (deep / "logs").exists()  # refused before anything started
