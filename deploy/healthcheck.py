#!/usr/bin/env python3
"""Container health check: the coordinator's standard gRPC health service says SERVING.

    dptrain-healthcheck [HOST:PORT]     (default 127.0.0.1:$DPTRAIN_PORT, i.e. 50051)
    dptrain-healthcheck --tcp PORT      a TCP connect only (the Ray head's GCS port: cheap,
                                        where `ray health-check` costs a second of CPU a probe)

The health service needs no bearer token. With TLS (DPTRAIN_TLS_CERT set) the server's
certificate is checked against DPTRAIN_TLS_CA (default: the certificate itself, right for
a self-signed one) under the name DPTRAIN_TLS_SERVER_NAME (default: the certificate's first
DNS name, or its common name). Exit status 0: serving; 1: anything else.
"""
from __future__ import annotations

import os
import sys


def _cert_name(path: str) -> str | None:
    try:
        import ssl

        info = ssl._ssl._test_decode_cert(path)  # CPython's own PEM decoder, no extra package
    except Exception:
        return None
    for kind, value in info.get("subjectAltName", ()):
        if kind == "DNS":
            return value
    for rdn in info.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def tcp(port: int) -> int:
    import socket

    hosts = ["127.0.0.1"]
    try:
        hosts.append(socket.gethostbyname(socket.gethostname()))
    except OSError:
        pass
    for host in hosts:
        try:
            socket.create_connection((host, port), timeout=3).close()
            print(f"{host}:{port} accepts connections")
            return 0
        except OSError as e:
            err = e
    print(f"unhealthy: port {port}: {err}", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "--tcp":
        return tcp(int(argv[2]))
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = argv[1] if len(argv) > 1 else f"127.0.0.1:{os.environ.get('DPTRAIN_PORT') or 50051}"
    cert = os.environ.get("DPTRAIN_TLS_CERT")
    if cert:
        ca = os.environ.get("DPTRAIN_TLS_CA") or cert
        with open(ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(f.read())
        name = os.environ.get("DPTRAIN_TLS_SERVER_NAME") or _cert_name(cert)
        options = [("grpc.ssl_target_name_override", name)] if name else []
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        timeout = float(os.environ.get("DPTRAIN_HEALTH_TIMEOUT_S", 5))
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    except grpc.RpcError as e:
        print(f"unhealthy: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
