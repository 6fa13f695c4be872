"""Interceptors that keep the server answering: a bounded pool for long-lived streams, so
unary calls and health always get through, and a guard for requests that do not decode.

gRPC's sync server gives every RPC in flight a thread, and a stream (WatchJob,
StreamWeights, health's Watch, reflection) holds its thread for as long as the client
keeps it open. Without a separate bound, a client opening as many streams as there are
threads locks everyone else out. So streams are counted here, per client address and in
total, and one over either limit is refused at once with RESOURCE_EXHAUSTED; the server
has `max_streams` threads for streams plus a reserve that only short calls can use.
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

import grpc

from .auth import HANDLER_KINDS


@dataclass(frozen=True)
class StreamLimits:
    total: int = 256  # open streams, all clients together
    per_client: int = 64  # open streams from one client address
    unary_threads: int = 32  # threads only short calls can use

    @property
    def threads(self) -> int:
        return self.total + self.unary_threads


def client_address(peer: str) -> str:
    """The client's host from gRPC's peer string ("ipv4:1.2.3.4:5", "ipv6:[::1]:5", "unix:...")."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0]
    return peer


class StreamLimiter(grpc.ServerInterceptor):
    """Admits a response stream only while its client and the server are under their limits."""

    def __init__(self, limits: StreamLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()

    @property
    def open_streams(self) -> int:
        with self._lock:
            return sum(self._open.values())

    def _acquire(self, client: str) -> str | None:
        """None if admitted, else why not."""
        with self._lock:
            if sum(self._open.values()) >= self.limits.total:
                return f"the server has {self.limits.total} streams open, its limit; retry later"
            if self._open[client] >= self.limits.per_client:
                return (f"this client has {self.limits.per_client} streams open, the limit per client; "
                        f"close one first")
            self._open[client] += 1
            return None

    def _release(self, client: str) -> None:
        with self._lock:
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not handler.response_streaming:
            return handler
        streaming = handler.request_streaming
        behaviour = handler.stream_stream if streaming else handler.unary_stream

        def limited(request_or_iterator, context):
            client = client_address(context.peer())
            refusal = self._acquire(client)
            if refusal is not None:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"too many open streams: {refusal}")
            try:
                yield from behaviour(request_or_iterator, context)
            finally:
                self._release(client)

        return HANDLER_KINDS[(streaming, True)](limited, request_deserializer=handler.request_deserializer,
                                                response_serializer=handler.response_serializer)


class DecodeGuard(grpc.ServerInterceptor):
    """Bytes that do not decode as the method's request are INVALID_ARGUMENT, like any other
    bad input: gRPC itself would answer INTERNAL and log a traceback per request (a cheap
    way to flood the log). The handler gets raw bytes and decodes them here."""

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        decode = handler.request_deserializer if handler is not None else None
        if decode is None:
            return handler
        streaming, responses = handler.request_streaming, handler.response_streaming
        behaviour = {(False, False): handler.unary_unary, (False, True): handler.unary_stream,
                     (True, False): handler.stream_unary, (True, True): handler.stream_stream}[(streaming, responses)]

        def parse(raw: bytes, context: grpc.ServicerContext):
            try:
                return decode(raw)
            except Exception:  # noqa: BLE001 - any decoding failure is the client's
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"request: the bytes are not a {details.method.rsplit('/', 1)[-1]} message")

        if streaming:
            def guarded(raw_iterator, context):
                return behaviour((parse(raw, context) for raw in raw_iterator), context)
        else:
            def guarded(raw, context):
                return behaviour(parse(raw, context), context)

        return HANDLER_KINDS[(streaming, responses)](guarded, request_deserializer=None,
                                                     response_serializer=handler.response_serializer)
