"""The lint gates, run as part of the suite so CI (which runs `make test`) enforces them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CODE = ["mesh", "services", "tools", "tests"]


def _run(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_ruff_check() -> None:
    result = _run([str(BIN / "ruff"), "check", *CODE])
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = _run([str(BIN / "ruff"), "format", "--check", *CODE])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_strict() -> None:
    result = _run([str(BIN / "mypy")], timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_and_breaking() -> None:
    result = _run([sys.executable, "-m", "tools.gen", "--lint"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contract() -> None:
    """Runtime code never imports the harness, deploy generators or CLI (pyproject's contracts)."""
    result = _run([str(BIN / "lint-imports")])
    assert result.returncode == 0, result.stdout + result.stderr
