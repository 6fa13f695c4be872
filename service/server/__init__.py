"""The gRPC training service: `serve(ServerConfig)` is the one entry point."""
from .app import Server, serve
from .config import ServerConfig

__all__ = ["Server", "ServerConfig", "serve"]
