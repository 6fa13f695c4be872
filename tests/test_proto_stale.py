"""The generated gRPC code must match proto/ (as Flower's check-protos.sh), and the check must bite."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from dptrain.rpc import codegen


def test_generated_code_is_current():
    problems = codegen.check()
    assert problems == [], "\n".join(problems) + "\nrun: python -m dptrain.rpc.codegen"


def test_generated_files_are_marked_and_live_where_the_proto_path_says():
    """protoc's own imports (`from dptrain.v1 import dptrain_pb2`) work unchanged."""
    for name in codegen.OUTPUTS:
        text = (codegen.OUT_DIR / name).read_text()
        assert text.startswith(codegen.HEADER), name
    grpc_module = (codegen.OUT_DIR / "dptrain_pb2_grpc.py").read_text()
    assert "from dptrain.v1 import dptrain_pb2" in grpc_module
    from dptrain.v1 import dptrain_pb2, dptrain_pb2_grpc

    assert Path(dptrain_pb2.__file__).parent == codegen.OUT_DIR
    assert dptrain_pb2_grpc.dptrain_dot_v1_dot_dptrain__pb2 is dptrain_pb2


def test_check_reports_a_changed_proto(tmp_path: Path):
    proto_dir = tmp_path / "proto"
    shutil.copytree(codegen.PROTO_DIR, proto_dir)
    source = proto_dir / codegen.PROTO
    text = source.read_text()
    anchor = "message GetJobRequest {\n"
    assert anchor in text
    source.write_text(text.replace(anchor, anchor + "  // A field the generated code lacks.\n  bool extra = 99;\n"))
    problems = codegen.check(proto_dir, codegen.OUT_DIR)
    assert any("dptrain_pb2.py" in p and "stale" in p for p in problems), problems


def test_check_reports_hand_edits_and_missing_files(tmp_path: Path):
    for name in codegen.OUTPUTS:
        shutil.copy(codegen.OUT_DIR / name, tmp_path / name)
    assert codegen.check(codegen.PROTO_DIR, tmp_path) == []
    with open(tmp_path / "dptrain_pb2_grpc.py", "a") as f:
        f.write("# a hand edit\n")
    (tmp_path / "dptrain_pb2.pyi").unlink()
    problems = codegen.check(codegen.PROTO_DIR, tmp_path)
    assert len(problems) == 2
    assert "dptrain_pb2_grpc.py: stale" in problems[0] + problems[1]
    assert "dptrain_pb2.pyi: missing" in problems[0] + problems[1]


def test_cli_check_exits_1_naming_the_stale_file(tmp_path: Path):
    for name in codegen.OUTPUTS:
        shutil.copy(codegen.OUT_DIR / name, tmp_path / name)
    (tmp_path / "dptrain_pb2.py").write_text("# hand-written\n")
    cmd = [sys.executable, "-m", "dptrain.rpc.codegen", "--check", "--out-dir", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=codegen.ROOT, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "dptrain_pb2.py: stale" in result.stderr
    assert "python -m dptrain.rpc.codegen" in result.stderr


def test_generate_writes_into_an_empty_dir(tmp_path: Path):
    changed = codegen.generate(codegen.PROTO_DIR, tmp_path)
    assert sorted(p.name for p in changed) == sorted(codegen.OUTPUTS)
    assert codegen.generate(codegen.PROTO_DIR, tmp_path) == []  # idempotent
    for name in codegen.OUTPUTS:
        assert (tmp_path / name).read_text() == (codegen.OUT_DIR / name).read_text()
