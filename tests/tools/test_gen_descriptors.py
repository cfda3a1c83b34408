"""The buf/validate descriptor route of tools/gen.py: protoc and buf consume the descriptor
that the installed protovalidate carries, with no validate.proto source anywhere.

Everything here runs the real tools: protoc from grpcio-tools, buf from the buf-bin wheel and
the protovalidate validator. Nothing is started that outlives a test.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from tools.gen import VALIDATE_PROTO, build_image, validate_descriptor_set

REPO = Path(__file__).resolve().parents[2]
BUF = Path(sys.executable).parent / "buf"
TIMEOUT = 60  # seconds; every tool call here finishes in well under one

# A proto3 contract that uses each kind of rule chatmesh relies on.
SAMPLE_PROTO = """\
syntax = "proto3";

package sample.v1;

import "buf/validate/validate.proto";

// Creates a room.
message CreateRoomRequest {
  option (buf.validate.message).cel = {
    id: "create_room.topic_differs"
    message: "topic must differ from name"
    expression: "this.topic != this.name"
  };
  // The room name.
  string name = 1 [(buf.validate.field).string.min_len = 3];
  // Tags; none may be empty.
  repeated string tags = 2 [(buf.validate.field).repeated.items.string.min_len = 1];
  // Seats.
  int32 capacity = 3 [(buf.validate.field).int32 = {
    gte: 1
    lte: 200
  }];
  // The topic.
  string topic = 4;
}
"""


def run(args: Sequence[str | Path], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        check=False,
    )


def _without_source_info(data: bytes) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto.FromString(data)
    proto.ClearField("source_code_info")
    return proto


def test_the_set_is_the_descriptor_protovalidate_registers() -> None:
    """The last file is the bytes literal handed to file_desc() in protovalidate's validate_pb.py."""
    from protovalidate._gen.buf.validate import validate_pb

    tree = ast.parse(Path(validate_pb.__file__).read_text(encoding="utf-8"))
    (call,) = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "file_desc"
    ]
    literal = ast.literal_eval(call.args[0])
    files = list(descriptor_pb2.FileDescriptorSet.FromString(validate_descriptor_set()).file)
    assert files[-1].name == VALIDATE_PROTO
    assert _without_source_info(files[-1].SerializeToString()) == _without_source_info(literal)
    # Dependencies first, each with an (empty) source_code_info for the plugins.
    assert [f.name for f in files[:-1]] == list(files[-1].dependency)
    assert all(f.HasField("source_code_info") for f in files)
    assert validate_descriptor_set() == validate_descriptor_set()  # deterministic bytes


def _sample_tree(tmp_path: Path, text: str = SAMPLE_PROTO) -> Path:
    proto = tmp_path / "proto"
    (proto / "sample/v1").mkdir(parents=True, exist_ok=True)
    (proto / "sample/v1/sample.proto").write_text(text, encoding="utf-8")
    return proto


VALIDATE_SCRIPT = """
import json, sys
order = sys.argv[1]
if order == "protovalidate-first":
    import protovalidate
    from buf.validate import validate_pb2
else:
    from buf.validate import validate_pb2
    import protovalidate
from google.protobuf import descriptor_pool
from sample.v1 import sample_pb2

def path(fp):
    out = []
    for el in (fp.elements if fp is not None else []):
        sub = el.subscript
        out.append(el.field_name + (f"[{sub.value}]" if sub is not None and sub.field == "index" else ""))
    return ".".join(out)

def check(**kwargs):
    msg = sample_pb2.CreateRoomRequest(**kwargs)
    return sorted([path(v.proto.field), v.proto.rule_id] for v in protovalidate.collect_violations(msg))

try:
    protovalidate.validate(sample_pb2.CreateRoomRequest(name="ab", capacity=5, topic="t"))
    raised = None
except protovalidate.ValidationError as exc:
    raised = str(exc)
print(json.dumps({
    "validate_pb2_file": validate_pb2.__file__,
    "pool_file": descriptor_pool.Default().FindFileByName("buf/validate/validate.proto").serialized_pb.hex(),
    "bad": check(name="ab", tags=["ok", ""], capacity=0, topic="ab"),
    "too_big": check(name="abc", tags=["x"], capacity=201, topic="t"),
    "good": check(name="abc", tags=["x"], capacity=200, topic="t"),
    "raised": raised,
}))
"""


@pytest.mark.parametrize("order", ["protovalidate-first", "generated-first"])
def test_generated_python_is_enforced_by_protovalidate(tmp_path: Path, order: str) -> None:
    """protoc compiles an annotated contract against the descriptor set; the rules hold."""
    image = build_image(tmp_path, _sample_tree(tmp_path), tmp_path / "sample.binpb")
    gen = tmp_path / "gen"
    gen.mkdir()
    generated = run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--descriptor_set_in={image}",
            f"--python_out={gen}",
            VALIDATE_PROTO,
            "sample/v1/sample.proto",
        ],
    )
    assert generated.returncode == 0, generated.stderr
    # A fresh interpreter: the default descriptor pool is process-wide, so importing these
    # modules here could collide with the project's own gen/ in later tests.
    env = {**os.environ, "PYTHONPATH": str(gen)}
    result = subprocess.run(
        [sys.executable, "-c", VALIDATE_SCRIPT, order],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    # Our module, not protovalidate's internal copy (that one lives in the protobuf-py runtime
    # and never enters google.protobuf's pool, so the two coexist in either import order).
    assert Path(report["validate_pb2_file"]) == gen / "buf/validate/validate_pb2.py"
    registered = descriptor_pb2.FileDescriptorProto.FromString(bytes.fromhex(report["pool_file"]))
    files = descriptor_pb2.FileDescriptorSet.FromString(validate_descriptor_set()).file
    assert _without_source_info(registered.SerializeToString()) == _without_source_info(
        files[-1].SerializeToString()
    )

    assert report["bad"] == [
        ["", "create_room.topic_differs"],
        ["capacity", "int32.gte_lte"],
        ["name", "string.min_len"],
        ["tags[1]", "string.min_len"],
    ]
    assert report["too_big"] == [["capacity", "int32.gte_lte"]]
    assert report["good"] == []
    assert report["raised"] is not None and "at least 3 characters" in report["raised"]


def test_buf_lints_and_checks_the_image_but_not_its_imports(tmp_path: Path) -> None:
    """buf reads protoc's image: our files are linted and checked, validate.proto is not."""
    config = tmp_path / "buf.yaml"
    config.write_text("version: v2\nlint:\n  use: [STANDARD]\nbreaking:\n  use: [FILE]\n")
    base = build_image(tmp_path, _sample_tree(tmp_path / "base"), tmp_path / "base.binpb")

    def buf(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return run([BUF, *args, "--path", "sample", "--config", config], cwd=tmp_path)

    assert buf("lint", base).returncode == 0, buf("lint", base).stdout
    assert buf("breaking", base, "--against", base).returncode == 0

    removed = build_image(
        tmp_path,
        _sample_tree(tmp_path / "removed", SAMPLE_PROTO.replace("  string topic = 4;\n", "")),
        tmp_path / "removed.binpb",
    )
    reported = buf("breaking", removed, "--against", base)
    assert reported.returncode == 100 and 'name "topic"' in reported.stdout, reported.stdout

    bad = build_image(
        tmp_path,
        _sample_tree(tmp_path / "bad", SAMPLE_PROTO + "enum Color { RED = 0; }\n"),
        tmp_path / "bad.binpb",
    )
    linted = buf("lint", bad)
    assert linted.returncode == 100 and 'Enum zero value name "RED"' in linted.stdout
    # Only our file: validate.proto (package buf.validate, unversioned) would fail STANDARD.
    assert "buf/validate" not in linted.stdout
