"""`dptrain <command>`: argument parsing and dispatch only; the work is in sibling modules."""
from __future__ import annotations

import argparse
import logging
import sys

from . import local


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dptrain", description="Exact data-parallel training as a service.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    local.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
