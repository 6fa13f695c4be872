"""Bearer-token check for every RPC but the health service (load balancers probe it bare)."""
from __future__ import annotations

import hmac

import grpc

OPEN_METHODS = ("/grpc.health.v1.Health/",)
MESSAGE = "missing or wrong bearer token in the 'authorization' metadata"


def _deny(request_or_iterator, context):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, MESSAGE)


HANDLER_KINDS = {  # (request streaming, response streaming) -> handler factory
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


class TokenAuth(grpc.ServerInterceptor):
    """Requires ``authorization: Bearer <token>``; compares in constant time."""

    def __init__(self, token: str) -> None:
        self.expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or details.method.startswith(OPEN_METHODS):
            return handler
        given = dict(details.invocation_metadata).get("authorization", "")
        if hmac.compare_digest(given.encode(), self.expected):
            return handler
        return HANDLER_KINDS[(handler.request_streaming, handler.response_streaming)](_deny)
