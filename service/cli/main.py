"""`dptrain <command>`: argument parsing and dispatch only; the work is in sibling modules."""
from __future__ import annotations

import argparse
import logging
import sys

import grpc
from dptrain import __version__
from dptrain.engine import SpecError

from . import cluster, completion, inputs, local, metrics, remote, schema, serve, sweep


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dptrain", description="Exact data-parallel training as a service.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"dptrain {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.register(sub)
    remote.register(sub)
    inputs.register(sub)
    metrics.register(sub)
    sweep.register(sub)
    cluster.register(sub)
    local.register(sub)
    schema.register(sub)
    completion.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    completion.autocomplete(parser)  # PYTHON_ARGCOMPLETE_OK: only acts when the shell asks
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except grpc.RpcError as e:  # a server's answer: show its status and message, not a traceback
        if e.code() == grpc.StatusCode.UNAVAILABLE and getattr(args, "address", None):
            print(f"error: no dptrain server answers at {args.address} ({e.details()}).\n"
                  f"Start one with `dptrain serve`, or point to yours with --address or $DPTRAIN_ADDRESS.",
                  file=sys.stderr)
        else:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 2
    except (SpecError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
