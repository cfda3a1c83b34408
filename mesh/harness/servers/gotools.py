"""Go programs the harness builds from the Go module proxy (Toxiproxy).

Toxiproxy's server is not published on PyPI, npm or Debian, so the harness
builds the pinned release once per machine with ``go install`` into
``cache_dir()/bin`` and reuses it. (FerretDB needs a patched module tree to
build, so :mod:`mesh.harness.servers.ferretdb` does that itself.) A lock file keeps two processes (say, two pytest workers) from building at
the same time.

Example:
    >>> from mesh.harness.servers.gotools import TOXIPROXY
    >>> TOXIPROXY.binary_name
    'toxiproxy-server-v2.5.0'
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mesh.core.versions import TOXIPROXY_VERSION
from mesh.harness.paths import cache_dir

__all__ = ["TOXIPROXY", "GoTool", "GoToolError"]

logger = logging.getLogger(__name__)


class GoToolError(RuntimeError):
    """A Go tool could not be built; the message carries the go command's output."""


@dataclass(frozen=True)
class GoTool:
    """A main package pinned to a release."""

    package: str
    """Import path of the main package."""
    version: str
    """Module version to install (a release tag)."""
    built_name: str
    """Name ``go install`` gives the binary (the package's last path element)."""
    name: str
    """Name under which chatmesh caches it (without version)."""

    @property
    def binary_name(self) -> str:
        """File name in the cache, version included so upgrades never reuse a stale build."""
        return f"{self.name}-{self.version}"

    def cached(self, cache: Path | None = None) -> Path:
        """Path of the cached binary (which may not exist yet)."""
        return (cache or cache_dir()) / "bin" / self.binary_name

    def ensure(self, cache: Path | None = None, *, timeout: float = 600.0) -> Path:
        """Returns the binary, building it first if it is not cached.

        Raises:
            GoToolError: ``go`` is missing or the build failed.
        """
        target = self.cached(cache)
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        lock_path = target.parent / f".{self.binary_name}.lock"
        with lock_path.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if target.exists():  # another process built it while we waited
                return target
            go = shutil.which("go") or (
                "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
            )
            if go is None:
                raise GoToolError(f"cannot build {self.name}: the 'go' command is not installed")
            started = time.monotonic()
            with tempfile.TemporaryDirectory(dir=target.parent) as gobin:
                env = {
                    **os.environ,
                    "GOBIN": gobin,
                    "GOFLAGS": "-buildvcs=false",
                    "CGO_ENABLED": "0",
                }
                spec = f"{self.package}@{self.version}"
                logger.info("building %s with go install (one time per machine)", spec)
                try:
                    result = subprocess.run(
                        [go, "install", spec],
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=timeout,
                        check=False,
                    )
                except subprocess.TimeoutExpired as exc:
                    raise GoToolError(f"go install {spec} timed out after {timeout:.0f}s") from exc
                if result.returncode != 0:
                    raise GoToolError(
                        f"go install {spec} failed ({result.returncode}):\n{result.stderr[-4000:]}"
                    )
                os.replace(Path(gobin) / self.built_name, target)
            logger.info("built %s in %.1fs", target, time.monotonic() - started)
        return target

    async def ensure_async(self, cache: Path | None = None) -> Path:
        """:meth:`ensure` without blocking the event loop."""
        return await asyncio.to_thread(self.ensure, cache)


TOXIPROXY = GoTool(
    package="github.com/Shopify/toxiproxy/v2/cmd/server",
    version=TOXIPROXY_VERSION,
    built_name="server",
    name="toxiproxy-server",
)
"""Shopify's Toxiproxy: the TCP proxies that emulate the WAN between regions."""
