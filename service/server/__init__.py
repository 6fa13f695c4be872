"""The gRPC coordinator: `serve(ServerConfig)` is the one entry point.

``servicer`` maps each rpc to a plain function in ``handlers`` and errors to status codes;
``manager`` admits, runs and cancels jobs (a ``Trainer`` each, on Ray); ``feeds`` fans
events and weights out to streams; ``streams`` bounds them; ``datasets`` keeps uploads;
``app`` assembles the server. May import everything below it (core, execution, store,
rpc); ``ServerConfig`` alone (``server.config``) is importable without Ray.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Server", "ServerConfig", "serve"]
_PUBLIC = {"Server": ".app", "serve": ".app", "ServerConfig": ".config"}


def __getattr__(name: str) -> Any:
    """Import on first use: the CLI reads `ServerConfig` defaults without starting Ray."""
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
