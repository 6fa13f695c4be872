"""The package layout is what pyproject.toml and service/__init__.py say: one import package,
`dptrain`, whose folders are the architecture, and whose Ray-free parts do not import Ray."""
from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def package_folders() -> dict[str, Path]:
    """{import name: folder} for every folder with an `__init__.py`, by pyproject's mapping."""
    roots = {name: ROOT / folder for name, folder in SETUPTOOLS["package-dir"].items()}
    found = {}
    for name, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            owner = ".".join((name, *rel))
            # a folder mapped on its own (workers/engine) belongs to that mapping, not its parent's
            if not any(init.parent == r or init.parent.is_relative_to(r) for n, r in roots.items()
                       if r != folder and r.is_relative_to(folder)):
                found[owner] = init.parent
    return found


def test_every_package_folder_is_listed_and_every_listed_package_exists():
    assert sorted(package_folders()) == sorted(SETUPTOOLS["packages"])


def test_every_package_says_what_lives_there():
    for name, folder in package_folders().items():
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
        assert doc and len(doc.split()) >= 12, f"{name} ({folder}/__init__.py) needs a docstring"


def test_no_top_level_package_but_dptrain(tmp_path):
    """Build the wheel and read its contents: `dptrain/` and the dist-info, nothing else."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("dptrain-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"dptrain"}
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"dptrain/v1/dptrain_pb2.py", "dptrain/engine/op.py", "dptrain/execution/actor.py",
            "dptrain/core/trainer.py"} <= names
    static = "dptrain/dashboard/static/"  # the page ships inside the package, uPlot and its licence too
    assert {static + f for f in ("index.html", "dashboard.js", "dashboard.css", "vendor/uPlot.iife.min.js",
                                 "vendor/uPlot.min.css", "vendor/LICENSE-uPlot.txt")} <= names


RAY_FREE = """
import sys
import dptrain
from dptrain import Client, Trainer, TrainConfig
import dptrain.core.config, dptrain.core.trainer, dptrain.core.optim, dptrain.core.schedules
import dptrain.core.ledger, dptrain.core.shard, dptrain.core.tail, dptrain.core.backends
import dptrain.engine, dptrain.engine.gradcheck, dptrain.data, dptrain.client, dptrain.cli.main
import dptrain.store, dptrain.rpc.convert, dptrain.server.config
print(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")))
"""


def test_the_core_engine_data_client_and_cli_import_without_ray():
    done = subprocess.run([sys.executable, "-c", RAY_FREE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


CLI = """
import sys
from dptrain.cli import main
for argv in {argvs!r}:
    try:
        main(argv)
    except SystemExit:
        pass
print(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")))
"""


def test_help_and_client_commands_start_without_ray():
    """`dptrain --help`, and a client command against a server that is not there."""
    argvs = [["--help"], ["submit", "--help"], ["jobs", "--address", "127.0.0.1:9"]]
    done = subprocess.run([sys.executable, "-c", CLI.format(argvs=argvs)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
