"""Reading job and model specs from YAML or JSON files."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from dptrain.engine import SpecError


def load_spec(path: str) -> dict[str, Any]:
    text = Path(path).read_text()
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise SpecError(path, f"not valid {'JSON' if path.endswith('.json') else 'YAML'}: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(path, "must contain a mapping")
    return data
