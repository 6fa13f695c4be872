"""Files other local users must not reach: the worker's call socket and the state directory."""
from __future__ import annotations

import os
import stat
import time

from dptrain.execution.transports import channel


def test_the_call_socket_is_ours_alone_before_anyone_can_connect(tmp_path):
    path = str(tmp_path / "call.sock")
    old = os.umask(0o002)  # a permissive umask must not open the socket to the group
    try:
        channel.serve(path, lambda call, plan: None, accept_timeout_s=2.0)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    time.sleep(2.5)  # nobody connected: the worker's side gives up and removes it
    assert not os.path.exists(path)


def test_the_state_directory_is_private(ray_session, tmp_path):
    from dptrain.server import ServerConfig, serve

    state = tmp_path / "home" / "state"
    old = os.umask(0o022)
    try:
        server = serve(ServerConfig(port=0, state_dir=state))
    finally:
        os.umask(old)
    server.stop()
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
