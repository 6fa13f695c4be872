"""The job spec's JSON Schema, and docs/spec.md generated from it.

One declaration (`dptrain.core.config.TrainConfig` and the specs it holds) gives the
validation, the defaults, the JSON Schema (``dptrain schema``) and the reference page::

    python -m dptrain.core.specdoc > docs/spec.md     # or: dptrain schema --markdown

tests/test_spec_doc.py fails when docs/spec.md is not what this module writes.
"""
from __future__ import annotations

import json
import sys
from typing import Any

from dptrain.core.config import TrainConfig
from dptrain.data import SOURCES
from dptrain.engine.registry import OPS, POSITIONAL

__all__ = ["job_schema", "markdown"]


def job_schema() -> dict[str, Any]:
    """TrainConfig's JSON Schema (draft 2020-12), every field with type, default and description."""
    schema = TrainConfig.model_json_schema()
    schema["title"] = "dptrain job"
    return schema


def markdown() -> str:
    """docs/spec.md: one table per spec, then each data source's parameters and the ops."""
    schema = job_schema()
    defs = schema["$defs"]
    out = ["# The job spec", "",
           "Generated from the spec's declaration by `python -m dptrain.core.specdoc > docs/spec.md`",
           "(`dptrain schema` prints the JSON Schema itself). Do not edit by hand.", "",
           "A job is a YAML or JSON mapping. Unknown fields are errors, and every error of a spec is",
           "reported at once, each naming its field (`optimizer.lr: must be > 0, got -1`). A number",
           "field also takes a numeric string (YAML 1.1 reads `lr: 3e-3` as one).", ""]
    out += _table("Job (top level)", schema)
    out += _table("model", schema["properties"]["model"])
    out += _ops()
    out += _table("optimizer", defs["OptimizerSpec"])
    out += _table("optimizer.schedule", defs["ScheduleSpec"])
    out += _table("dataset", defs["DatasetSpec"])
    for name, source in SOURCES.items():
        out += _table(f"dataset.params for `{name}`", defs[source.params.__name__])
    return "\n".join(out).rstrip() + "\n"


def _table(title: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"## {title}", ""]
    if schema.get("description"):
        lines += [" ".join(schema["description"].split("\n\n")[0].split()), ""]
    props = schema.get("properties", {})
    if not props:
        return lines + ["No fields.", ""]
    lines += ["| field | type | default | description |", "|---|---|---|---|"]
    required = set(schema.get("required", ()))
    for name, p in props.items():
        default = "required" if name in required else f"`{json.dumps(p['default'])}`" if "default" in p else "optional"
        lines.append(f"| `{name}` | {_type(p)} | {default} | {p.get('description', '')} |")
    return lines + [""]


def _type(p: dict[str, Any]) -> str:
    if "$ref" in p:
        return p["$ref"].rsplit("/", 1)[-1]
    if "enum" in p:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in p["enum"])
    if "anyOf" in p:
        return " or ".join(dict.fromkeys(_type(x) for x in p["anyOf"]))
    kind = p.get("type", "any")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    if kind == "array":
        kind = f"list of {_type(p['items'])}"
    marks = {"minimum": "≥", "exclusiveMinimum": ">", "maximum": "≤", "exclusiveMaximum": "<"}
    bounds = [f"{sign} {_number(p[key])}" for key, sign in marks.items() if key in p]
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) or not x.is_integer() else str(int(x))


def _ops() -> list[str]:
    lines = ["## model ops", "", "Each layer or node names an op; its attributes sit beside `op`. The shorthand",
             "`\"op arguments\"` sets the op's positional attributes in order (`\"linear 64\"` is",
             "`{op: linear, units: 64}`, `\"conv2d 16 5\"` is `{op: conv2d, out: 16, kernel: 5}`).", "",
             "| op | what | inputs | attributes (default) | shorthand arguments |", "|---|---|---|---|---|"]
    for name in sorted(OPS):
        op = OPS[name]
        attrs = [f"`{a}` (required)" for a in op.required_attrs]
        attrs += [f"`{a}` ({json.dumps(v)})" for a, v in op.attr_defaults.items()]
        arity = "2 or more" if op.arity is None else str(op.arity)
        what = (op.__doc__ or "").strip().split("\n")[0].rstrip(".").replace("|", "\\|")
        positional = " ".join(POSITIONAL.get(name, ())) or "-"
        lines.append(f"| `{name}` | {what} | {arity} | {', '.join(attrs) or '-'} | {positional} |")
    return lines + [""]


if __name__ == "__main__":
    sys.stdout.write(markdown())
