"""The web page in real headless Chromium: two people, two regions, one conversation.

``chat.spec.mjs`` (Node + playwright-core) drives two isolated browser
contexts: alice on the us-east edge's page, bob on the eu edge's page. It
checks channel creation, messages both ways, the typing indicator, presence
(online, offline while bob is away and after his context closes), unread
counts, and that bob's page, reloaded after missing two messages, resumes its
stream from the stored positions and shows each message exactly once. The
script prints a JSON report; this test asserts on it and on the exit code.
Screenshots land in ``test-results/browser/``.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from mesh.harness.paths import repo_root
from mesh.harness.supervisor import Mesh

pytestmark = [pytest.mark.browser, pytest.mark.services]

SPEC = Path(__file__).with_name("chat.spec.mjs")
SCENARIO_TIMEOUT = 180.0


async def _run_spec(
    node: str, options: dict[str, Any], env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    # Asynchronously: the mesh's WAN link proxies run on this event loop, so a
    # blocking subprocess call would stall every command entering through eu.
    proc = await asyncio.create_subprocess_exec(
        node,
        str(SPEC),
        json.dumps(options),
        cwd=repo_root(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), SCENARIO_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{SPEC.name} did not finish within {SCENARIO_TIMEOUT} s")
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def run_chat_scenario(
    chromium: str,
    node: str,
    mesh: Mesh,
    *,
    name: str = "browser",
    spki_pin: str | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """Runs chat.spec.mjs against ``mesh``'s two edges and checks its report."""  # fmt: skip
    us_web = mesh.endpoints["us-east"].get("web")
    eu_web = mesh.endpoints["eu"].get("web")
    assert us_web and eu_web, "the edges do not serve web/ (web/index.html missing?)"
    out_dir = repo_root() / "test-results" / name
    options = {"usWeb": us_web, "euWeb": eu_web, "outDir": str(out_dir), "chromium": chromium,
               "spkiPin": spki_pin}  # fmt: skip
    code, out, err = await _run_spec(node, options, env)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"no JSON report (exit {code}); stdout:\n{out}\nstderr:\n{err}"
    report = json.loads(lines[-1])
    assert code == 0 and report["ok"], (
        f"browser scenario failed (exit {code}): {report.get('error')}\n"
        f"checks: {json.dumps(report.get('checks'), indent=1)}\n"
        f"console: {report.get('console')}\nscreenshots: {report.get('screenshots')}\nstderr:\n{err}"
    )

    checks = report["checks"]
    for check in (
        "alice sees bob online",
        "bob sees alice typing",
        "bob gets alice's message once",
        "alice gets bob's message once",
        "alice sees bob offline while he is away",
        "no channel event delivered twice after resume",
        "the away messages came through the resumed stream",
        "the resumed stream replayed them",
        "bob sees 1 unread in the new channel",
        "alice sees bob offline after his browser context closed",
    ):
        value = checks.get(check)
        assert value is True or (isinstance(value, dict) and value.get("ok") is True), check
    # Exactly the two missed messages were replayed when bob came back.
    assert [r["region"] for r in report["resume"]["replays"]] == ["eu"]
    assert int(report["resume"]["replays"][0]["replayed"]) == 2
    assert not any(
        "pageerror" in line for line in report["console"]["alice"] + report["console"]["bob"]
    )
    for who in ("alice", "bob"):
        assert _is_png(Path(report["screenshots"][who])), who


async def test_two_people_chat_across_regions_in_chromium(
    chromium: str, node: str, web_bundle: Path, dev_mesh: Mesh
) -> None:
    # Tools first (chromium, node, the bundle): a missing one fails before the mesh starts.
    await run_chat_scenario(chromium, node, dev_mesh)


def _is_png(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"
