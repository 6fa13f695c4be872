"""Generated code of the gRPC API ``dptrain.v1`` (``proto/dptrain/v1/dptrain.proto``).

The import path mirrors the proto path, so protoc's output is used as it is. Never edit
these files: ``python -m dptrain.rpc.codegen`` regenerates them and ``--check`` (run by the
tests) fails when they are stale. Use them through ``dptrain.rpc`` (``pb``, ``pb_grpc``).
"""
