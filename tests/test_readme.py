"""Every Python snippet of the README runs as written, against a real server where it
needs one (on the README's address when that port is free)."""
from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNIPPETS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
ADDRESS = "127.0.0.1:50051"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def readme_server(ray_session, tmp_path_factory):
    from dptrain.server import ServerConfig, serve

    port = 50051 if _port_free(50051) else 0
    srv = serve(ServerConfig(port=port, state_dir=tmp_path_factory.mktemp("readme")))
    yield srv
    srv.stop()


def test_the_readme_has_snippets():
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize("code", SNIPPETS, ids=lambda c: c.strip().splitlines()[0][:40])
def test_each_snippet_runs_as_written(code, readme_server, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # snippets name files relative to the repository
    code = code.replace(ADDRESS, readme_server.address)  # the same unless 50051 was taken
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
