"""Ray's token authentication in the multi-node deployments (issue 10, item 13): always on,
with one token shared by the nodes, for `dptrain cluster` and for the compose image.

Fast: no Ray starts here. The compose image's entrypoint runs with stand-ins for `ray`,
`dptrain` and `python` that record how they were called (deploy/test-compose.sh runs the
real stack); tests/test_cluster.py checks a real cluster's nodes refuse a wrong token.
"""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"


# --- `dptrain cluster` ---------------------------------------------------------------------------------

def test_the_cluster_cannot_turn_ray_auth_off():
    from dptrain.cli.main import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["cluster", "up", "--auth", "disabled"])


def test_every_process_of_the_cluster_gets_the_token(monkeypatch):
    from dptrain.cluster import ClusterError, ray_env

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/elsewhere")
    env = ray_env("t0ken")
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == "t0ken"
    assert "RAY_AUTH_TOKEN_PATH" not in env
    with pytest.raises(ClusterError):
        ray_env("")


def test_the_cluster_token_is_never_readable_by_others(tmp_path):
    from dptrain.cluster import ClusterError, cluster_token

    old = os.umask(0)  # the most permissive umask: the modes must come from the code
    try:
        state = tmp_path / "cluster"
        token = cluster_token(state)
    finally:
        os.umask(old)
    assert len(token) >= 32 and cluster_token(state) == token  # made once, then reused
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "ray_auth_token").stat().st_mode) == 0o600
    # A token someone could have read (or planted, in a shared directory) is refused.
    (state / "ray_auth_token").chmod(0o644)
    with pytest.raises(ClusterError, match="only you can read"):
        cluster_token(state)


# --- the compose image's entrypoint -------------------------------------------------------------------

@pytest.fixture
def stand_ins(tmp_path):
    """`ray`, `dptrain` and `python` that append their argv and Ray's auth settings to calls.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("ray", "dptrain", "python"):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\necho "{name} $* | mode=${{RAY_AUTH_MODE:-}} token=${{RAY_AUTH_TOKEN:-}}"'
                          f' >> "{tmp_path}/calls.log"\n')
        script.chmod(0o755)
    return tmp_path


def entrypoint(home: Path, role: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DPTRAIN_"))}
    clean.update(PATH=f"{home / 'bin'}:/usr/bin:/bin", TMPDIR=str(home), **env)
    done = subprocess.run(["sh", str(ENTRYPOINT), role], env=clean, capture_output=True, text=True, timeout=30)
    log = home / "calls.log"
    return done, log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("env", [{}, {"RAY_AUTH_TOKEN": ""}, {"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "t"}],
                         ids=["no-token", "empty-token", "auth-disabled"])
def test_a_container_refuses_to_start_ray_without_token_auth(stand_ins, env):
    for role in ("head", "worker", "coordinator"):
        done, calls = entrypoint(stand_ins, role, **env)
        assert done.returncode == 64, (role, done.stderr)
        assert "RAY_AUTH" in done.stderr and not calls, (role, calls)


def test_every_container_runs_ray_with_the_token(stand_ins):
    for role in ("head", "worker", "coordinator"):
        done, calls = entrypoint(stand_ins, role, RAY_AUTH_TOKEN="s3cret")
        assert done.returncode == 0, (role, done.stderr)
    ray_calls = [c for c in calls if c.startswith("ray ")]
    assert len(ray_calls) == 3 and all(c.endswith("mode=token token=s3cret") for c in ray_calls), calls


def test_the_coordinator_binds_its_ports_where_docker_can_publish_them(stand_ins):
    """Inside its container: the host side is published on 127.0.0.1 (DPTRAIN_BIND,
    DPTRAIN_METRICS_BIND); a port bound to the container's own loopback cannot be published."""
    done, calls = entrypoint(stand_ins, "coordinator", RAY_AUTH_TOKEN="s3cret")
    serve = next(c for c in calls if c.startswith("dptrain serve"))
    assert "--host 0.0.0.0" in serve and "--metrics-host 0.0.0.0" in serve, serve
