"""Smoke test of the benchmark: ``python -m tools.bench --quick`` end to end.

It checks that every scenario ran and produced numbers and plots. It asserts
nothing about speed: benchmarks measure, they do not pass or fail on latency.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mesh.harness.paths import repo_root
from tools.bench.plan import SCENARIOS

pytestmark = [pytest.mark.services, pytest.mark.slow]

TIMEOUT_S = 240
"""--quick takes under a minute on an idle 2-core machine; the rest is slack for a busy one."""


def _numbers(summary: dict[str, Any]) -> list[float]:
    return [
        v
        for v in summary.values()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]


@pytest.mark.timeout(TIMEOUT_S + 30)
def test_quick_benchmark_writes_every_scenario_with_numbers_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    root = repo_root()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), str(root / "gen" / "python")]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tools.bench", "--quick", "--out", str(out), "--no-docs"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    results = json.loads((out / "results.json").read_text())

    dev = results["topologies"]["dev"]
    assert dev["entry"] in ("edge", "direct")
    for name in SCENARIOS:
        scenario = dev["scenarios"][name]
        assert scenario.get("status") not in ("failed", "skipped"), (name, scenario)
        assert _numbers(scenario["summary"]), f"{name} has no numbers: {scenario['summary']}"
    delivery = dev["scenarios"]["delivery"]
    paths = {"us-east->us-east", "us-east->eu", "eu->us-east", "eu->eu"}
    assert paths <= set(delivery["paths"]), delivery["paths"].keys()
    for key in paths:
        assert delivery["paths"][key]["latency"]["n"] > 0, key
        assert delivery["paths"][key]["floor_via_primary"]["n"] > 0, key
    assert delivery["received_deliveries"] > 0
    assert dev["scenarios"]["routing"]["summary"]["routed_users"] >= 2000
    assert dev["scenarios"]["throughput"]["steps"]

    pngs = [p for s in dev["scenarios"].values() for p in s.get("pngs", [])]
    assert any("delivery-cdf-" in p for p in pngs)
    for png in pngs:
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", png

    meta = results["meta"]
    for key in ("python", "grpcio", "nats-server", "chatmesh_git_sha"):
        assert meta["versions"][key], key
    assert meta["seed"] == 1 and dev["topology"]["name"] == "dev"
    assert {t["target"].split(" <")[0].split(" (")[0] for t in results["targets"]} >= {
        "same-region delivery",
        "cross-region delivery",
        "history query",
        "presence propagation",
    }
    # Everything it started is gone: no process refers to its directory, only logs remain.
    assert not (out / "run-dev" / "data").exists()
    assert _processes_mentioning(str(out)) == []


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found
