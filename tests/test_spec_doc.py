"""docs/spec.md and `dptrain schema` come from the spec's one declaration, and stay current."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dptrain.cli.main import main
from dptrain.core import specdoc

DOC = Path(__file__).resolve().parents[1] / "docs" / "spec.md"


def test_spec_md_is_current():
    assert DOC.read_text() == specdoc.markdown(), (
        "docs/spec.md is stale: regenerate it with `python -m dptrain.core.specdoc > docs/spec.md`")


def _fields(schema: dict, defs: dict, where: str = "job"):
    for name, prop in schema.get("properties", {}).items():
        yield f"{where}.{name}", prop
    for name, sub in defs.items():
        yield from _fields(sub, {}, name)


def test_schema_command_prints_every_field_with_type_default_and_description(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == json.loads(json.dumps(specdoc.job_schema()))
    assert {"model", "dataset", "optimizer", "batch_size", "recovery_budget_s"} <= set(schema["properties"])
    assert {"OptimizerSpec", "ScheduleSpec", "DatasetSpec", "TeacherParams", "CsvParams"} <= set(schema["$defs"])
    for field, prop in _fields(schema, schema["$defs"]):
        assert prop.get("description"), f"{field} has no description"
        assert any(k in prop for k in ("type", "enum", "anyOf", "$ref")), f"{field} has no type"
    props = schema["properties"]
    assert props["batch_size"] == {"type": "integer", "minimum": 1, "maximum": 1 << 24, "default": 256,
                                   "title": "Batch Size", "description": props["batch_size"]["description"]}
    assert schema["$defs"]["OptimizerSpec"]["properties"]["lr"]["exclusiveMinimum"] == 0
    assert schema["required"] == ["model", "dataset", "optimizer"]


def test_schema_command_imports_no_ray():
    code = ("import sys; from dptrain.cli.main import main; main(['schema']); "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["title"] == "dptrain job"


def test_every_example_validates_against_the_printed_schema(capsys):
    """Editors check specs with `dptrain schema`: what the engine accepts, the schema must too
    (list attributes such as kernel [3, 5], choices such as gelu's approximate, input forms)."""
    import jsonschema
    import yaml

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    for path in sorted((DOC.parent.parent / "examples").glob("*.yaml")):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    bad = yaml.safe_load((DOC.parent.parent / "examples" / "lenet_mnist.yaml").read_text())
    bad["model"]["layers"][0] = {"op": "conv2d", "out": 6, "kernel": {"h": 5}}
    try:
        jsonschema.validate(bad, schema)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("a mapping as an attribute passed the schema")
