"""Generated NATS configs are accepted by nats-server itself and carry the policy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mesh.bus.streams import events_stream_config, mirror_stream_config
from mesh.bus.subjects import Subjects
from mesh.deploy.nats import (
    GATEWAY_ADVERTISE_SENTINEL,
    make_credentials,
    render_server_conf,
    service_permissions,
)
from mesh.deploy.render import example_nats_plans, render_all
from mesh.harness.nats import nats_server_binary
from mesh.topology import load


@pytest.mark.parametrize("name", ["dev", "three-regions", "ha"])
def test_rendered_configs_pass_nats_server_config_check(name: str, tmp_path: Path) -> None:
    topo = load(name)
    paths = render_all(topo, tmp_path)
    confs = [p for p in paths if p.suffix == ".conf"]
    assert len(confs) == sum(r.nats_nodes for r in topo.regions)
    for conf in confs:
        result = subprocess.run(
            [nats_server_binary(), "-t", "-c", str(conf)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, f"{conf.name}: {result.stdout}{result.stderr}"


def test_durability_and_placement_policy() -> None:
    topo = load("ha")
    plans = example_nats_plans(topo)
    creds = make_credentials(topo)
    primary = json.loads(render_server_conf(topo, plans["us-east"][0], creds).split("\n", 1)[1])
    other = json.loads(render_server_conf(topo, plans["eu"][0], creds).split("\n", 1)[1])
    assert primary["jetstream"]["sync_interval"] == "always"
    assert "sync_interval" not in other["jetstream"]  # mirrors re-sync from the primary
    assert primary["server_tags"] == ["region:us-east"]
    assert primary["gateway"]["advertise"] == GATEWAY_ADVERTISE_SENTINEL
    assert (
        primary["jetstream"]["max_file_store"] > 0 and primary["jetstream"]["max_memory_store"] > 0
    )
    events = events_stream_config(topo)
    assert events["num_replicas"] == 3 and events["placement"] == {"tags": ["region:us-east"]}
    mirror = mirror_stream_config(topo, "eu")
    assert mirror["mirror"] == {
        "name": "EVENTS",
        "consumer": {"name": "mirror-eu", "deliver_subject": "chatmesh.mirror.eu"},
    }
    assert mirror["placement"] == {"tags": ["region:eu"]}


def test_notification_users_cannot_publish_events() -> None:
    perms = service_permissions(load("dev"))
    notif = perms["notification-eu"]["publish"]["allow"]
    assert not any(p.startswith("chatmesh.evt") for p in notif)
    assert perms["notification-eu"]["subscribe"]["allow"][0] == "chatmesh.dlv.eu.>"
    assert Subjects.EVENTS_ALL in perms["command"]["publish"]["allow"]
