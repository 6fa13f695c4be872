"""`dptrain schema`: the job spec's JSON Schema (or docs/spec.md's Markdown). Imports no Ray."""
from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schema", help="print the job spec's JSON Schema (every field: type, default, description)")
    p.add_argument("--markdown", action="store_true", help="print the reference page docs/spec.md instead")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dptrain.core import specdoc

    sys.stdout.write(specdoc.markdown() if args.markdown else json.dumps(specdoc.job_schema(), indent=2) + "\n")
    return 0
