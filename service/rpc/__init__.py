"""The gRPC API's generated Python code and the helpers around it.

``pb`` holds the messages and ``pb_grpc`` the service stub and servicer base, both
generated into ``dptrain.v1`` from ``proto/dptrain/v1/dptrain.proto`` by
``python -m dptrain.rpc.codegen``::

    from dptrain.rpc import pb, pb_grpc

They are imported lazily, so ``python -m dptrain.rpc.codegen`` still runs when the
generated files are missing or broken.
"""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["pb", "pb_grpc"]

_MODULES = {"pb": "dptrain_pb2", "pb_grpc": "dptrain_pb2_grpc"}


def __getattr__(name: str) -> ModuleType:
    if name in _MODULES:
        module = importlib.import_module(f"dptrain.v1.{_MODULES[name]}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
