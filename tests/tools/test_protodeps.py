"""Proves that tools/protodeps.py prints a validate.proto that is as good as the original.

Everything here runs the real tools: protoc from grpcio-tools, buf from the buf-bin wheel and
the protovalidate validator. Nothing is started that outlives a test.
"""

from __future__ import annotations

import ast
import importlib.resources
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from tools.protodeps import (
    VALIDATE_PROTO,
    embedded_descriptor_set,
    embedded_validate_files,
    protovalidate_version,
    render_proto,
)

REPO = Path(__file__).resolve().parents[2]
# grpcio-tools ships the well-known types protoc needs; it has no type stubs to import.
WKT_INCLUDE = Path(str(importlib.resources.files("grpc_tools") / "_proto"))
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
    """Runs a tool with a deadline; returns the result whatever the exit status."""
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def protoc(*args: str | Path) -> None:
    result = run([sys.executable, "-m", "grpc_tools.protoc", f"-I{WKT_INCLUDE}", *args])
    assert result.returncode == 0, result.stderr


def write_tree(root: Path) -> Path:
    """Writes the deps tree with the CLI, exactly as `make gen` would."""
    result = run([sys.executable, "-m", "tools.protodeps", root], cwd=REPO)
    assert result.returncode == 0, result.stderr
    return root / VALIDATE_PROTO


def compile_set(
    include: Path, target: str, out: Path, *, imports: bool = False
) -> descriptor_pb2.FileDescriptorSet:
    flags = ["--include_imports"] if imports else []
    protoc(f"-I{include}", f"--descriptor_set_out={out}", *flags, target)
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def canonical(
    fd: descriptor_pb2.FileDescriptorProto, deps: Sequence[descriptor_pb2.FileDescriptorProto]
) -> str:
    """Text form of ``fd`` with custom options decoded, after the documented normalizations.

    Parsing with a pool that holds ``fd`` itself turns custom options (extensions such as
    ``(buf.validate.predefined)``) into real fields, so they are compared field by field and
    not as opaque unknown bytes whose order could legitimately differ.

    Normalizations:
    * ``json_name``: protoc's ``--descriptor_set_out`` writes it on every field, other
      compilers may leave default ones out. A missing one is filled with protoc's default.
      (protovalidate 2.1.0's descriptor has all of them, so today this changes nothing.)
    * ``source_code_info``: cleared; the original has none and we never ask protoc for it.
    """
    fd = descriptor_pb2.FileDescriptorProto.FromString(fd.SerializeToString())
    fd.ClearField("source_code_info")

    def fill(fields: Sequence[descriptor_pb2.FieldDescriptorProto]) -> None:
        for f in fields:
            if not f.HasField("json_name"):
                # protoc's ToJsonName: drop each "_" and upper-case the character after it.
                chunks = f.name.split("_")
                f.json_name = chunks[0] + "".join(c[:1].upper() + c[1:] for c in chunks[1:])

    def walk(msgs: Sequence[descriptor_pb2.DescriptorProto]) -> None:
        for m in msgs:
            fill(m.field)
            fill(m.extension)
            walk(m.nested_type)

    fill(fd.extension)
    walk(fd.message_type)
    pool = descriptor_pool.DescriptorPool()
    if "google/protobuf/descriptor.proto" not in {dep.name for dep in deps}:
        pool.Add(
            descriptor_pb2.FileDescriptorProto.FromString(descriptor_pb2.DESCRIPTOR.serialized_pb)
        )
    for dep in deps:
        pool.Add(dep)
    pool.Add(fd)
    cls = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("google.protobuf.FileDescriptorProto")
    )
    return text_format.MessageToString(cls.FromString(fd.SerializeToString()))


# ---- where the bytes come from ------------------------------------------------------------


def test_embedded_bytes_are_the_literal_protovalidate_registers() -> None:
    """desc().proto re-serialized equals the bytes literal handed to file_desc() in validate_pb.py."""
    from protovalidate._gen.buf.validate import validate_pb

    tree = ast.parse(Path(validate_pb.__file__).read_text(encoding="utf-8"))
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "file_desc"
    ]
    assert len(calls) == 1
    literal = ast.literal_eval(calls[0].args[0])
    assert validate_pb.desc().proto.to_binary() == literal
    files = embedded_validate_files()
    assert files[-1] == descriptor_pb2.FileDescriptorProto.FromString(literal)
    assert files[-1].name == VALIDATE_PROTO
    assert files[-1].syntax in ("", "proto2")  # proto2, not editions, as of protovalidate 2.1.0
    assert [f.name for f in files[:-1]] == list(files[-1].dependency)
    # The .binpb frames these exact bytes; the last file in it is the literal itself.
    assert embedded_descriptor_set().endswith(literal)


# ---- the printed file ---------------------------------------------------------------------


def test_cli_output_is_deterministic_and_says_where_it_came_from(tmp_path: Path) -> None:
    first = write_tree(tmp_path / "a")
    second = write_tree(tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    binpb = first.with_suffix(".binpb")
    assert binpb.read_bytes() == second.with_suffix(".binpb").read_bytes()
    head = first.read_text(encoding="utf-8").splitlines()[:2]
    assert f"protovalidate=={protovalidate_version()}'s embedded descriptor" in head[0]
    assert "DO NOT EDIT" in head[1]
    # Rerunning on a current tree rewrites nothing (make-style freshness stays quiet).
    mtime = first.stat().st_mtime_ns
    rerun = run([sys.executable, "-m", "tools.protodeps", tmp_path / "a"], cwd=REPO)
    assert rerun.returncode == 0 and "wrote" not in rerun.stderr
    assert first.stat().st_mtime_ns == mtime
    # The .binpb carries the embedded descriptors untouched, dependencies first.
    fds = descriptor_pb2.FileDescriptorSet.FromString(binpb.read_bytes())
    assert list(fds.file) == embedded_validate_files()


def test_printed_file_compiles_back_to_the_embedded_descriptor(tmp_path: Path) -> None:
    printed = write_tree(tmp_path / "deps")
    files = embedded_validate_files()
    rebuilt = compile_set(tmp_path / "deps", VALIDATE_PROTO, tmp_path / "out.binpb").file[0]
    assert canonical(rebuilt, files[:-1]) == canonical(files[-1], files[:-1])
    # Guard against a vacuous comparison: the custom options really were decoded and compared.
    assert 'id: "int32.gte_lte"' in canonical(rebuilt, files[:-1])
    assert "[(.buf.validate.predefined) = {" in printed.read_text(encoding="utf-8")


def test_round_trip_needs_no_normalization_with_the_pinned_protoc(tmp_path: Path) -> None:
    """Stronger than the semantic check: with grpcio-tools 1.85.1 nothing needs normalizing.

    Both sides are parsed and re-serialized by google.protobuf (known fields in number order;
    custom options stay raw unknown bytes, so their payloads are compared byte for byte).
    If a protoc upgrade breaks only this test and not the one above, protoc changed how it
    writes descriptors, not what they mean; relax this test then.
    """
    write_tree(tmp_path / "deps")
    rebuilt = compile_set(tmp_path / "deps", VALIDATE_PROTO, tmp_path / "out.binpb").file[0]
    assert rebuilt.SerializeToString() == embedded_validate_files()[-1].SerializeToString()


# ---- the printer beyond what validate.proto uses ------------------------------------------

COVERAGE_PROTOS = {
    "cov/v1/p2.proto": r"""
syntax = "proto2";
package cov.v1;
import "google/protobuf/descriptor.proto";
import public "google/protobuf/duration.proto";
option java_package = "dev.chatmesh.cov";
option (file_tag) = "f\tt";
extend google.protobuf.FileOptions { optional string file_tag = 50001; }
extend google.protobuf.MessageOptions {
  optional Annot annot = 50002;
  repeated int32 nums = 50003;
}
extend google.protobuf.FieldOptions {
  optional Color color = 50004;
  optional double weight = 50005;
  optional bytes blob = 50006;
  optional float ratio = 50010;
}
extend google.protobuf.EnumValueOptions { optional bool hidden = 50007; }
extend google.protobuf.EnumOptions { optional string enum_tag = 50008; }
extend google.protobuf.OneofOptions { optional int64 oneof_tag = 50009; }
extend google.protobuf.MethodOptions { optional Annot method_annot = 50011; }
enum Color {
  option allow_alias = true;
  option (enum_tag) = "c";
  COLOR_UNSPECIFIED = 0;
  RED = 1 [(hidden) = true, deprecated = true];
  CRIMSON = 1;
  reserved 10 to 20, 100 to max;
  reserved "BLUE";
}
message Annot {
  optional string note = 1;
  repeated Annot children = 2;
  map<string, int32> counts = 3;
  optional Color c = 4;
}
message Kitchen {
  option (annot) = { note: "hi\n\"q\" \303\251" children { note: "a" } children { note: "b" } counts { key: "k" value: 1 } c: RED };
  option (nums) = 1;
  option (nums) = -2;
  option deprecated = true;
  message Inner {
    optional int32 x = 1;
    extend Kitchen { optional int32 inner_ext = 1001; }
  }
  enum Mode { MODE_UNSPECIFIED = 0; MODE_A = 1; MODE_B = 2; }
  required string req = 1 [default = "a\"b\\c\n\001\303\251"];
  optional bytes raw = 2 [default = "\000\001\377xyz\""];
  optional double d = 3 [default = -inf];
  optional float f = 4 [default = 1.5e-3];
  optional Mode mode = 5 [default = MODE_B];
  optional int64 big = 6 [default = -9223372036854775808];
  optional uint64 ubig = 7 [default = 18446744073709551615];
  optional bool flag = 8 [default = true];
  optional string renamed = 9 [json_name = "customName", (color) = RED, (weight) = 0.1, (blob) = "\000\377", (ratio) = 0.3];
  repeated int32 packed_nums = 10 [packed = true];
  map<string, Inner> inner_map = 11;
  message Later { optional int32 y = 1; }
  map<int32, Mode> mode_map = 12;
  optional group Grp = 13 { optional int32 g = 1; }
  oneof choice {
    option (oneof_tag) = -7;
    string s = 14;
    int32 i = 15;
    group OneGrp = 16 { optional string z = 1; }
  }
  optional google.protobuf.Duration dur = 17;
  extensions 100 to 199;
  extensions 1000 to max [verification = UNVERIFIED];
  reserved 20, 30 to 40;
  reserved "old";
}
extend Kitchen {
  optional string kitchen_ext = 100;
  repeated int32 kitchen_nums = 101;
}
service KitchenService {
  option deprecated = true;
  rpc Get(Kitchen) returns (Annot);
  rpc Stream(stream Kitchen) returns (stream Annot) {
    option idempotency_level = NO_SIDE_EFFECTS;
    option (method_annot) = { note: "m" };
  }
}
""",
    "cov/v1/p3.proto": r"""
syntax = "proto3";
package cov.v1;
import "google/protobuf/timestamp.proto";
message Room {
  enum Kind { KIND_UNSPECIFIED = 0; KIND_PUBLIC = 1; }
  string room_id = 1;
  optional string topic = 2;
  oneof owner { string user_id = 3; string team_id = 4; }
  optional int32 seats = 5 [json_name = "seatCount"];
  map<string, google.protobuf.Timestamp> seen = 6;
  repeated Kind kinds = 7 [packed = false];
  reserved 9 to 11;
  reserved "legacy";
}
""",
    "cov/v1/ed.proto": r"""
edition = "2023";
package cov.v1;
option features.field_presence = IMPLICIT;
message Ed {
  message Part { int32 n = 1; }
  int32 plain = 1;
  int32 explicit = 2 [features.field_presence = EXPLICIT];
  int32 req = 3 [features.field_presence = LEGACY_REQUIRED];
  Part part = 4 [features.message_encoding = DELIMITED];
  repeated int32 nums = 5 [features.repeated_field_encoding = EXPANDED];
  reserved gone;
}
enum Closed {
  option features.enum_type = CLOSED;
  CLOSED_A = 1;
}
""",
    "cov/v1/ed24.proto": r"""
edition = "2024";
package cov.v1;
import option "google/protobuf/descriptor.proto";
message Ed24 {
  string s = 1;
  reserved gone, older;
}
""",
}


@pytest.mark.parametrize("name", sorted(COVERAGE_PROTOS))
def test_printer_round_trips_constructs_validate_proto_does_not_use(
    tmp_path: Path, name: str
) -> None:
    source = tmp_path / "src"
    (source / name).parent.mkdir(parents=True)
    (source / name).write_text(COVERAGE_PROTOS[name].lstrip(), encoding="utf-8")
    original_set = compile_set(source, name, tmp_path / "orig.binpb", imports=True)
    original, deps = original_set.file[-1], list(original_set.file[:-1])

    printed = tmp_path / "printed"
    (printed / name).parent.mkdir(parents=True)
    (printed / name).write_text(render_proto(original, deps), encoding="utf-8")
    rebuilt = compile_set(printed, name, tmp_path / "rebuilt.binpb").file[0]
    assert canonical(rebuilt, deps) == canonical(original, deps)


# ---- generated Python + the real validator ------------------------------------------------

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
    write_tree(tmp_path / "deps")
    (tmp_path / "src/sample/v1").mkdir(parents=True)
    (tmp_path / "src/sample/v1/sample.proto").write_text(SAMPLE_PROTO, encoding="utf-8")
    gen = tmp_path / "gen"
    gen.mkdir()
    protoc(
        f"-I{tmp_path / 'deps'}",
        f"-I{tmp_path / 'src'}",
        f"--python_out={gen}",
        VALIDATE_PROTO,
        "sample/v1/sample.proto",
    )
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
    files = embedded_validate_files()
    # python_out embeds the descriptor without json_name; that is its only difference.
    assert canonical(registered, files[:-1]) == canonical(files[-1], files[:-1])

    assert report["bad"] == [
        ["", "create_room.topic_differs"],
        ["capacity", "int32.gte_lte"],
        ["name", "string.min_len"],
        ["tags[1]", "string.min_len"],
    ]
    assert report["too_big"] == [["capacity", "int32.gte_lte"]]
    assert report["good"] == []
    assert report["raised"] is not None and "at least 3 characters" in report["raised"]


# ---- buf workspace ------------------------------------------------------------------------

BUF_YAML = """\
version: v2
modules:
  - path: proto
  # Generated by `python -m tools.protodeps build/protodeps`; not ours to lint or version.
  - path: build/protodeps
    lint:
      ignore: [build/protodeps]
    breaking:
      ignore: [build/protodeps]
lint:
  use: [STANDARD]
breaking:
  use: [FILE]
"""

BUF_GEN_YAML = """\
version: v2
plugins:
  - protoc_builtin: python
    protoc_path: ./protoc.sh
    out: gen
inputs:
  # Only our module: the deps module is imported but generated separately (or not at all).
  - directory: proto
"""


def test_buf_workspace_uses_printed_deps(tmp_path: Path) -> None:
    work = tmp_path / "ws"
    (work / "proto/sample/v1").mkdir(parents=True)
    (work / "proto/sample/v1/sample.proto").write_text(SAMPLE_PROTO, encoding="utf-8")
    (work / "buf.yaml").write_text(BUF_YAML, encoding="utf-8")
    (work / "buf.gen.yaml").write_text(BUF_GEN_YAML, encoding="utf-8")
    wrapper = work / "protoc.sh"
    wrapper.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m grpc_tools.protoc "$@"\n', encoding="utf-8"
    )
    wrapper.chmod(0o755)
    deps_file = write_tree(work / "build/protodeps")

    def buf(*args: str) -> subprocess.CompletedProcess[str]:
        return run([BUF, *args], cwd=work)

    built = buf("build")
    assert built.returncode == 0, built.stderr
    linted = buf("lint")
    assert linted.returncode == 0, linted.stdout + linted.stderr

    generated = buf("generate")
    assert generated.returncode == 0, generated.stderr
    assert sorted(p.relative_to(work / "gen").as_posix() for p in (work / "gen").rglob("*.py")) == [
        "sample/v1/sample_pb2.py"
    ]

    # Breaking: compare against a copy. Changes inside the deps module are ignored (they
    # follow the protovalidate version); changes to our contracts are reported.
    base = tmp_path / "base"
    shutil.copytree(work, base)
    text = deps_file.read_text(encoding="utf-8")
    deps_file.write_text(text.replace("  optional bool for_key = 4;\n", ""), encoding="utf-8")
    ignored = buf("breaking", "--against", str(base), "--exclude-imports")
    assert ignored.returncode == 0, ignored.stdout + ignored.stderr
    sample = work / "proto/sample/v1/sample.proto"
    sample.write_text(SAMPLE_PROTO.replace("  string topic = 4;\n", ""), encoding="utf-8")
    reported = buf("breaking", "--against", str(base), "--exclude-imports")
    assert reported.returncode == 100 and 'name "topic"' in reported.stdout, (
        reported.stdout + reported.stderr
    )

    # Lint still applies to our module (the deps exclusion is not a global off switch).
    sample.write_text(SAMPLE_PROTO + "enum Color { RED = 0; }\n", encoding="utf-8")
    bad = buf("lint")
    assert bad.returncode == 100 and 'Enum zero value name "RED"' in bad.stdout, (
        bad.stdout + bad.stderr
    )
    assert "build/protodeps" not in bad.stdout
