"""When a load phase counts as a latency measurement (tools.bench.scenarios.LoadResult)."""

from __future__ import annotations

import dataclasses

import pytest

from tools.bench.procstat import CpuUsage
from tools.bench.scenarios import SATURATED_MACHINE_PERCENT, LoadResult


def phase(machine_percent: float, backlog_ms: float = 0.0, received: int = 100) -> LoadResult:
    return LoadResult(
        phase="d0", rate=200.0, seconds=30.0, sent=6000, ok=6000, errors={},
        expected=100, received=received, lag_p99_ms=5.0, ack={}, ack_by_region={},
        samples={}, cpu=CpuUsage(30.0, {"command-us-east": 30.0}, machine_percent, 2),
        drain_s=0.0, backlog_ms=backlog_ms,
    )  # fmt: skip


def test_a_quiet_sustained_phase_is_a_measurement() -> None:
    res = phase(60.0)
    assert res.sustained and res.measurable
    assert res.measurement_problems() == ""


@pytest.mark.parametrize("busy", [SATURATED_MACHINE_PERCENT, 94.5])
def test_a_saturated_machine_is_sustained_but_not_a_measurement(busy: float) -> None:
    # dev at 200 msg/s on 2 cores: every send acknowledged, every delivery arrived,
    # no backlog trend, yet 94.5% of the cores busy and p99 ~450 ms of run queue.
    res = phase(busy)
    assert res.sustained and not res.measurable
    assert f"saturated ({busy:.0f}% of 2 cores busy)" in res.measurement_problems()
    record = res.record()  # what results.json keeps of the attempt
    assert (record["sustained"], record["machine_cpu_percent"]) == (True, busy)
    assert record["problems"] == res.measurement_problems()


def test_every_reason_is_named() -> None:
    res = dataclasses.replace(phase(95.0, backlog_ms=120.0), received=50)
    problems = res.measurement_problems()
    assert "backlog built up" in problems
    assert "only 50.0% of deliveries arrived" in problems
    assert "saturated" in problems
