"""The ``chatmesh`` command line, as a newcomer uses it: up, status, token, down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.mesh

CHATMESH = [sys.executable, "-m", "mesh.cli.main"]


def _run(args: list[str], run_dir: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHATMESH_RUN_DIR": str(run_dir)}
    return subprocess.run(
        [*CHATMESH, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_version_and_token(tmp_path: Path) -> None:
    version = _run(["version"], tmp_path)
    assert version.returncode == 0 and "nats-server: v2.15" in version.stdout
    token = _run(["token", "alice"], tmp_path)
    assert token.returncode == 0 and token.stdout.count(".") == 2
    bad = _run(["token", "not a user"], tmp_path)
    assert bad.returncode == 2 and "invalid user id" in bad.stderr


def test_topology_check_and_render(tmp_path: Path) -> None:
    ok = _run(["topology", "check", "three-regions"], tmp_path)
    assert ok.returncode == 0 and "asia" in ok.stdout and ok.stdout.strip().endswith("ok")
    broken = tmp_path / "broken.toml"
    broken.write_text('name = "x"\nprimary = "nowhere"\n[[region]]\nname = "us-east"\n')
    bad = _run(["topology", "check", str(broken)], tmp_path)
    assert bad.returncode == 1 and "primary: 'nowhere'" in bad.stderr
    out = tmp_path / "rendered"
    rendered = _run(["topology", "render", "dev", str(out)], tmp_path)
    assert rendered.returncode == 0
    assert (out / "nats-us-east-1.conf").exists() and json.loads(
        (out / "streams.json").read_text()
    )[0]["name"] == "EVENTS"


def test_up_status_down_leaves_nothing_behind(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    started = time.monotonic()
    up = _run(["up", "--topology", "dev"], run_dir)
    elapsed = time.monotonic() - started
    assert up.returncode == 0, up.stdout + up.stderr
    assert "chatmesh chat alice" in up.stdout  # tells a newcomer how to chat
    status = _run(["status", "--json"], run_dir)
    state = json.loads(status.stdout)
    print(f"\nchatmesh up (dev) ready in {elapsed:.1f}s (harness: {state['ready_seconds']}s)")
    assert state["running"] and set(state["regions"]) == {"us-east", "eu"}
    for region in ("us-east", "eu"):
        info = state["regions"][region]
        assert (
            info["nats"]
            and info["valkey"]
            and info["grpc"]["query"]
            and info["grpc"]["notification"]
        )
        assert info["grpc"]["command"]
    # eu's mirror of EVENTS, read from the servers' monitoring endpoints.
    [mirror] = state["replication"]
    assert mirror["mirror"] == "EVENTS_EU" and mirror["state"] in ("ok", "lagging")
    assert mirror["source_last_seq"] >= 0 and mirror["mirror_last_seq"] >= 0
    assert "replication EVENTS_EU:" in _run(["status"], run_dir).stdout
    pids = [p["pid"] for p in state["processes"]] + [state["supervisor_pid"]]
    assert len(pids) >= 12 and all(_alive(p) for p in pids)
    again = _run(["up"], run_dir)
    assert again.returncode == 1 and "already running" in again.stderr

    down = _run(["down"], run_dir)
    assert down.returncode == 0
    assert [p for p in pids if _alive(p)] == []
    assert _run(["status"], run_dir).returncode == 1
