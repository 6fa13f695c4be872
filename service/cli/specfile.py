"""Reading job and model specs from YAML or JSON files, and `--set key.path=value` overrides."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from dptrain.engine import SpecError


def load_spec(path: str, overrides: list[str] | None = None) -> dict[str, Any]:
    text = Path(path).read_text()
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise SpecError(path, f"not valid {'JSON' if path.endswith('.json') else 'YAML'}: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(path, "must contain a mapping")
    for item in overrides or ():
        apply_override(data, item)
    return data


def apply_override(spec: dict[str, Any], item: str) -> None:
    """`optimizer.lr=3e-3`: set one field, its value read as YAML (a number, a list, a
    mapping, true/false); the spec then validates as if the file had said it."""
    key, sep, text = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError("--set", f"expected key.path=value (e.g. optimizer.lr=3e-3), got {item!r}")
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError as e:
        raise SpecError(f"--set {key}", f"cannot read {text!r}: {e}") from None
    *parents, last = key.split(".")
    node = spec
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(f"--set {key}", f"{'.'.join(parents[:i + 1])} is not a mapping")
        node = child
    node[last] = value


def add_set_arg(parser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a spec field, repeatable: --set optimizer.lr=3e-3 --set epochs=40")
