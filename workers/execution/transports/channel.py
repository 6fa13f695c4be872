"""A same-node call channel: one Unix stream socket per worker, for the per-step call.

A Ray actor call costs ~1-2 ms of round trip on a small machine (task submission,
gRPC, scheduling threads), a large share of a 20 ms step. On the shared-memory path a
step's call is a few hundred bytes each way, so same-node workers also take it over a
Unix socket instead: the coordinator sends `(seq, call, plan)`, the worker's serving
thread runs its handler (`ShmWorker.compute_shm`) and sends `(seq, ok, result)`. Both sides block in the
kernel (no busy polling, unlike channels that spin), and a worker that dies, even by
SIGKILL, closes its end, which the coordinator sees at once as end-of-file.

Ray still starts, pings and kills workers; the socket only carries step calls. The
coordinator owns the socket's name (under its shm prefix) and connects; the worker binds
and listens (when the coordinator asks, in `info`) and accepts exactly one connection.
"""
from __future__ import annotations

import os
import pickle
import socket
import struct
import threading
import traceback
from typing import Any, Callable

_LEN = struct.Struct("<I")


def send(sock: socket.socket, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_LEN.pack(len(data)) + data)


def _read(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("channel closed by the peer")
        buf += chunk
    return bytes(buf)


def recv(sock: socket.socket) -> Any:
    (n,) = _LEN.unpack(_read(sock, _LEN.size))
    return pickle.loads(_read(sock, n))


# --- the worker's side -------------------------------------------------------------------
def serve(path: str, handler: Callable[[Any, Any], Any], accept_timeout_s: float = 120.0) -> None:
    """Listen at `path` and answer calls on one thread (returns once listening).

    `handler(call, plan)` runs each call; an exception is sent back as text.
    """
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chmod(path, 0o600)  # before listen(): only our user may connect (calls are pickles)
    srv.listen(1)
    srv.settimeout(accept_timeout_s)

    def loop() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        finally:
            srv.close()
            try:
                os.unlink(path)
            except OSError:
                pass
        conn.settimeout(None)
        with conn:
            while True:
                try:
                    seq, call, plan = recv(conn)
                except (EOFError, OSError):
                    return  # the coordinator closed the channel (or is gone)
                try:
                    reply = (seq, True, handler(call, plan))
                except Exception as e:  # noqa: BLE001 - reported to the coordinator
                    reply = (seq, False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
                try:
                    send(conn, reply)
                except OSError:
                    return

    threading.Thread(target=loop, name="dptrain-channel", daemon=True).start()


# --- the coordinator's side ----------------------------------------------------------------
class ChannelError(RuntimeError):
    """The worker raised while running a call (a bug or bad data, not a lost worker)."""


class Channel:
    """The coordinator's end of one worker's socket; replies are matched by sequence number."""

    def __init__(self, path: str, timeout_s: float, io_timeout_s: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(timeout_s)
            self.sock.connect(path)
            # Reads start only once poll(2) says a reply is there; a peer stuck halfway
            # through a (sub-kilobyte) message is treated as gone rather than waited on.
            self.sock.settimeout(io_timeout_s)
        except OSError:
            self.sock.close()
            raise
        self._seq = 0
        self.replies: dict[int, tuple[bool, Any]] = {}
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def call(self, call: Any, plan: Any) -> int:
        """Send a call; returns its sequence number. A dead peer shows up as `closed`."""
        self._seq += 1
        try:
            send(self.sock, (self._seq, call, plan))
        except OSError:
            self.close()
        return self._seq

    def read_one(self) -> None:
        """Read one reply (the socket is readable); end-of-file marks the channel closed."""
        try:
            seq, ok, result = recv(self.sock)
        except (EOFError, OSError):
            self.close()
            return
        self.replies[seq] = (ok, result)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass
