"""Fixtures of the browser tests: Chromium, Node, and a fresh web bundle.

Nothing here skips: a missing tool fails the test with the command that
installs it, so a machine without Chromium never passes silently.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from mesh.harness.paths import repo_root

CHROMIUM = os.environ.get("CHATMESH_CHROMIUM", "/usr/bin/chromium")
"""Debian's Chromium (``make chromium``); ``npx playwright install`` cannot download here."""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of the Chromium binary Playwright drives."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: run `make chromium` (installs Debian's "
            "chromium package), or set CHATMESH_CHROMIUM to a Chromium binary"
        )
    return CHROMIUM


@pytest.fixture(scope="session")
def node() -> str:
    """Path of ``node``, with the npm packages the browser tests import installed."""
    found = shutil.which("node")
    if found is None:
        pytest.fail("node not found: install Node.js (>= 20) to run the browser tests")
    if not (repo_root() / "node_modules" / "playwright-core").is_dir():
        pytest.fail("npm packages missing: run `make node-deps` (npm ci)")
    return found


@pytest.fixture(scope="session")
async def web_bundle(node: str) -> Path:
    """Builds ``web/app.js`` from ``web/src`` (``npm run build:web``, well under a second)."""
    root = repo_root()
    esbuild = root / "node_modules" / ".bin" / "esbuild"
    if not esbuild.exists():
        pytest.fail("esbuild missing: run `make node-deps` (npm ci) to build the web page")
    proc = await asyncio.create_subprocess_exec(
        "npm",
        "run",
        "--silent",
        "build:web",
        cwd=root,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail("`npm run build:web` did not finish within 120 s")
    if proc.returncode != 0:
        pytest.fail(f"`npm run build:web` failed ({proc.returncode}):\n{out.decode()}")
    bundle = root / "web" / "app.js"
    assert bundle.is_file(), f"{bundle} was not produced"
    return bundle
