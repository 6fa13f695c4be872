"""The `dptrain` command line. Each subcommand lives in a small module of this package."""
from .main import main

__all__ = ["main"]
