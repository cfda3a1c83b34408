"""Where chatmesh keeps downloaded tools, run state and generated files.

Two roots, both overridable from the environment:

* ``CHATMESH_CACHE`` (default ``~/.cache/chatmesh``): things fetched or built once
  per machine and reused by every checkout (Toxiproxy, FerretDB, Cassandra jars).
* ``CHATMESH_RUN_DIR`` (default ``<repo>/.run``): one running mesh's data, logs,
  rendered configs and the state file ``chatmesh status`` reads.

Example:
    >>> from mesh.harness.paths import cache_dir
    >>> cache_dir().name
    'chatmesh'
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "repo_root", "run_dir"]


def repo_root() -> Path:
    """Returns the checkout this package lives in (the folder holding ``pyproject.toml``)."""
    return Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Returns (and creates) the per-machine cache for fetched and built tools."""
    root = Path(os.environ.get("CHATMESH_CACHE") or Path.home() / ".cache" / "chatmesh")
    root.mkdir(parents=True, exist_ok=True)
    return root


def run_dir() -> Path:
    """Returns (and creates) the directory of the current mesh run."""
    root = Path(os.environ.get("CHATMESH_RUN_DIR") or repo_root() / ".run")
    root.mkdir(parents=True, exist_ok=True)
    return root
