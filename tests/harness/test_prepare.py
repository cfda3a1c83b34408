"""The one-time fetch/build steps: only what a store backend runs, with progress lines."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mesh.harness import prepare as prepare_mod
from mesh.harness.prepare import STEPS, PrepareError, Step, prepare, steps_for
from mesh.harness.servers.gotools import GoToolError


def test_the_embedded_default_builds_toxiproxy_only() -> None:
    assert steps_for("embedded") == ["toxiproxy"]
    assert set(steps_for("production")) == {"toxiproxy", "ferretdb", "cassandra"}
    assert set(STEPS) == set(steps_for("production"))


def test_a_running_step_reports_progress_until_it_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Progress lines come while the step runs, before its "done" line (no clock asserted)."""
    built = tmp_path / "tool"
    ticked = threading.Event()
    lines: list[str] = []

    def echo(line: str) -> None:
        lines.append(line)
        if line.strip().startswith("slow:") and line.endswith(" s ..."):
            ticked.set()

    def build() -> Path:
        # Finishes only after prepare() has reported it as still running.
        assert ticked.wait(timeout=60), lines
        built.write_text("")
        return built

    monkeypatch.setitem(
        prepare_mod.STEPS, "slow", Step("slow", "a slow tool (test)", lambda: None, build)
    )
    assert prepare(["slow"], echo=echo, tick=0.01) == {"slow": built}
    assert lines[0] == "[1/1] a slow tool (test): one time per machine ..."
    ticks = [i for i, line in enumerate(lines) if line.endswith(" s ...")]
    done = [i for i, line in enumerate(lines) if "slow: done in" in line]
    assert ticks and done == [len(lines) - 1] and max(ticks) < done[0], lines
    assert str(built) in lines[-1]


def test_cached_steps_do_not_run_and_say_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run() -> Path:
        raise AssertionError("a cached step ran")

    monkeypatch.setitem(
        prepare_mod.STEPS, "cached", Step("cached", "cached (test)", lambda: tmp_path, must_not_run)
    )
    lines: list[str] = []
    assert prepare(["cached"], echo=lines.append) == {"cached": tmp_path}
    assert lines == []


def test_a_failed_step_names_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> Path:
        raise GoToolError("cannot build: the 'go' command is not installed")

    monkeypatch.setitem(
        prepare_mod.STEPS, "broken", Step("broken", "broken (test)", lambda: None, fail)
    )
    with pytest.raises(PrepareError, match="broken: cannot build"):
        prepare(["broken"], echo=lambda _: None)


def test_the_command_line_prints_each_result(capsys: pytest.CaptureFixture[str]) -> None:
    """Toxiproxy is built on this machine already (the WAN links of every mesh test need it)."""
    assert prepare_mod.main(["toxiproxy"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("toxiproxy: ")
    assert Path(out.splitlines()[-1].split(": ", 1)[1]).exists()
