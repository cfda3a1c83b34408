"""The chaos schedules as data: what each one covers, per topology (nothing is started)."""

from __future__ import annotations

import pytest

from mesh.topology import load
from tools.chaos.schedule import Step, build

KINDS = ("command", "fanout", "notification", "worker", "query", "edge")


@pytest.mark.parametrize("name", ["dev", "ha"])
def test_the_full_schedule_covers_every_fault_issue_12_names(name: str) -> None:
    topo = load(name)
    steps = build("full", topo)
    actions = {(s.action, s.target) for s in steps}
    killed = {s.target.split("-")[0] for s in steps if s.action == "kill"}
    assert killed == set(KINDS)
    nodes = {f"{r.name}-{i}" for r in topo.regions for i in range(1, r.nats_nodes + 1)}
    assert {s.target for s in steps if s.action == "kill-nats"} == nodes
    assert all(s.restart_wait <= 10 for s in steps if s.action == "kill-nats")
    pair = f"{topo.primary}|{topo.secondaries[0]}"
    assert any(s.action == "partition" and s.target == pair and s.hold >= 30 for s in steps)
    assert any(s.action == "cut-gateways" and s.target == pair and s.hold >= 30 for s in steps)
    assert ("cut-link", topo.secondaries[0]) in actions
    assert {s.action for s in steps} >= {"baseline", "restart", "restart-nats"}
    assert steps[0].action == "baseline"
    assert len({s.name for s in steps}) == len(steps)


def test_the_short_schedule_outlasts_the_catch_up_timeout_and_kills_a_notification() -> None:
    steps = build("short", load("dev"))
    assert [s.action for s in steps] == ["baseline", "cut-gateways", "kill"]
    assert steps[1].hold > 30  # the notification service gives up on a gap after 30 s
    assert steps[2].target == "notification-eu-1"


def test_steps_on_processes_the_mesh_does_not_run_are_left_out() -> None:
    running = {"command-us-east", "fanout-us-east", "notification-eu-1", "query-eu", "edge-eu"}
    names = [s.name for s in build("full", load("dev"), running)]
    assert "kill worker-eu" not in names
    assert "kill command-us-east" in names
    assert "kill-nats eu-1" in names  # NATS nodes are not services


def test_every_instance_of_a_doubled_service_and_an_envoy_edge_are_killed() -> None:
    running = {"command-us-east-1", "command-us-east-2", "fanout-us-east", "envoy-eu"}
    names = [s.name for s in build("full", load("ha"), running)]
    assert {"kill command-us-east-1", "kill command-us-east-2", "kill envoy-eu"} <= set(names)


def test_unknown_actions_and_schedules_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown action"):
        Step("explode", "us-east-1")
    with pytest.raises(ValueError, match="unknown schedule"):
        build("medium", load("dev"))
