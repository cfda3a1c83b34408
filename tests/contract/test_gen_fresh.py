"""``gen/`` is exactly what ``make gen`` produces, and the checks around it can fail.

Everything that alters files does so in a scratch copy of the checkout's generation
inputs (proto/, tools/, gen/, buf and npm files, with ``node_modules`` linked), never in
the real tree. Each ``python -m tools.gen`` run takes a few seconds (buf, protoc, the
betterproto2 and protoc-gen-es plugins all really run).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.gen import diff_trees

REPO = Path(__file__).resolve().parents[2]
GEN_TIMEOUT_S = 240  # a full generation takes 4-10 s on 2 cores
COPIED = ["proto", "tools", "gen", "buf.yaml", "buf.gen.yaml", "package.json", "tsconfig.json"]
_CACHES = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache")


def _gen(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # cwd first on sys.path under -m: the copy's tools/ runs, and it treats its own parent
    # directory as the checkout.
    return subprocess.run(
        [sys.executable, "-m", "tools.gen", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=GEN_TIMEOUT_S,
        check=False,
    )


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A scratch copy of everything generation reads, as a fresh clone would have it."""
    if not (REPO / "node_modules" / ".bin" / "protoc-gen-es").exists():
        pytest.fail("node_modules is missing: run `make node-deps` (npm ci)")
    copy = tmp_path / "checkout"
    copy.mkdir()
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=_CACHES)
        else:
            shutil.copy2(source, copy / name)
    (copy / "node_modules").symlink_to(REPO / "node_modules")
    return copy


def test_gen_check_passes_on_the_checkout() -> None:
    result = _gen(REPO, "--check")
    assert result.returncode == 0, f"gen/ is stale, run `make gen`:\n{result.stdout}{result.stderr}"
    assert "gen/ is fresh" in result.stderr


def test_gen_check_lists_altered_missing_and_stale_files(checkout: Path) -> None:
    gen = checkout / "gen"
    altered = gen / "python" / "chatmesh" / "v1" / "message_pb2.py"
    altered.write_text(altered.read_text(encoding="utf-8") + "# hand edit\n", encoding="utf-8")
    (gen / "ts" / "chatmesh" / "v1" / "errors_pb.ts").unlink()
    (gen / "python" / "chatmesh" / "v1" / "removed_pb2.py").write_text("", encoding="utf-8")
    before = {p: p.read_bytes() for p in gen.rglob("*") if p.is_file()}

    result = _gen(checkout, "--check")

    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "changed: gen/python/chatmesh/v1/message_pb2.py",
        "missing: gen/ts/chatmesh/v1/errors_pb.ts",
        "stale: gen/python/chatmesh/v1/removed_pb2.py",
    ]
    assert "run `make gen`" in result.stderr
    # --check only reports: the copy's gen/ is untouched.
    assert {p: p.read_bytes() for p in gen.rglob("*") if p.is_file()} == before


def test_gen_repairs_a_tree_and_output_does_not_depend_on_location(checkout: Path) -> None:
    gen = checkout / "gen"
    shutil.rmtree(gen / "sdk-python")
    (gen / "python" / "chatmesh" / "v1" / "channel_pb2.pyi").write_text("x", encoding="utf-8")
    (gen / "python" / "chatmesh" / "old").mkdir()
    (gen / "python" / "chatmesh" / "old" / "gone_pb2.py").write_text("", encoding="utf-8")

    result = _gen(checkout)

    assert result.returncode == 0, result.stdout + result.stderr
    # Same bytes as the checkout's gen/: no absolute path or location leaks into the output.
    assert not diff_trees(REPO / "gen", gen), diff_trees(REPO / "gen", gen).lines()
    assert not (gen / "python" / "chatmesh" / "old").exists()


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=chatmesh-test",
            "-c",
            "user.email=test@chatmesh.invalid",
            "-c",
            "commit.gpgsign=false",
            *args,
        ],
        cwd=repo,
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_lint_proto_catches_lint_errors_and_breaking_changes(checkout: Path) -> None:
    # A throwaway repository inside the scratch copy; the project's own is never touched.
    _git(checkout, "init", "--quiet", "--initial-branch=main")
    _git(checkout, "add", "proto")
    _git(checkout, "commit", "--quiet", "-m", "contracts")

    unchanged = _gen(checkout, "--lint")
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert "buf breaking against main: ok" in unchanged.stderr

    message_proto = checkout / "proto" / "chatmesh" / "v1" / "message.proto"
    source = message_proto.read_text(encoding="utf-8")
    assert "  int64 seq = 3;\n" in source
    message_proto.write_text(
        source.replace("  int64 seq = 3;\n", "  string seq = 3;\n"), encoding="utf-8"
    )
    broken = _gen(checkout, "--lint")
    assert broken.returncode == 1
    assert "seq" in broken.stderr and "type" in broken.stderr, broken.stderr

    message_proto.write_text(source + "\nmessage bad_name {}\n", encoding="utf-8")
    lint = _gen(checkout, "--lint")
    assert lint.returncode == 1
    assert "bad_name" in lint.stderr, lint.stderr

    message_proto.write_text(source, encoding="utf-8")
    skipped = _gen(checkout, "--lint", "--against-ref", "no-such-branch")
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert "buf breaking skipped" in skipped.stderr
