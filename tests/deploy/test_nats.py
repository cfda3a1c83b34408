"""Generated NATS configs are accepted by nats-server itself and carry the policy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
from pathlib import Path

import pytest

from mesh.bus.connection import connect, tls_context
from mesh.bus.streams import events_stream_config, mirror_stream_config
from mesh.bus.subjects import Subjects
from mesh.deploy.nats import (
    GATEWAY_ADVERTISE_SENTINEL,
    NatsNodePlan,
    NatsTls,
    make_credentials,
    render_server_conf,
    service_permissions,
)
from mesh.deploy.render import example_nats_plans, render_all
from mesh.deploy.tls import ServicePki
from mesh.harness.nats import nats_server_binary
from mesh.harness.ports import allocate
from mesh.topology import load
from tests.helpers import eventually


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


async def test_a_tls_server_refuses_plaintext_and_serves_clients_that_trust_its_ca(
    tmp_path: Path,
) -> None:
    """TLS on the client port, with the real nats-server (the compose ``--transport-tls`` shape)."""
    topo = load("single")
    pki = ServicePki(tmp_path / "pki")
    node = pki.issue("service", "nats-us-east-1")
    plan = NatsNodePlan(
        region=topo.primary, index=1, client_port=allocate(), http_port=allocate(),
        cluster_port=allocate(), gateway_port=allocate(), store_dir=str(tmp_path / "js"),
        tls=NatsTls(str(node.cert), str(node.key), str(node.ca)),
    )  # fmt: skip
    creds = make_credentials(topo)
    conf = tmp_path / "nats.conf"
    conf.write_text(render_server_conf(topo, plan, creds))
    log = (tmp_path / "nats.log").open("wb")
    server = await asyncio.create_subprocess_exec(
        nats_server_binary(), "-c", str(conf), stdout=log, stderr=subprocess.STDOUT
    )
    bench = creds["bench"]
    try:

        async def listening() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", plan.client_port)
            except OSError:
                return False
            writer.close()
            await writer.wait_closed()
            return True

        await eventually(listening, timeout=20, what="nats-server listening")
        # Trusting the internal CA: connected over TLS, messages flow.
        nc = await connect([plan.client_url], name="tls-ok", user=bench.user,
                           password=bench.password, tls_ca=str(node.ca))  # fmt: skip
        try:
            sub = await nc.subscribe("bench.tls")
            await nc.publish("bench.tls", b"over tls")
            assert (await sub.next_msg(timeout=5)).data == b"over tls"
            assert nc._transport is not None
            assert nc._transport._io_writer.get_extra_info("ssl_object") is not None
        finally:
            await nc.close()
        # Plaintext: the server says TLS is required, and closes the connection at the CONNECT.
        reader, writer = await asyncio.open_connection("127.0.0.1", plan.client_port)
        try:
            info = json.loads((await asyncio.wait_for(reader.readline(), 5)).split(b" ", 1)[1])
            assert info["tls_required"] is True
            connect_op = {"user": bench.user, "pass": bench.password, "verbose": False}
            writer.write(b"CONNECT " + json.dumps(connect_op).encode() + b"\r\nPING\r\n")
            await writer.drain()
            reply = await asyncio.wait_for(reader.read(), 10)  # to EOF: the server hung up
            assert b"PONG" not in reply and b"+OK" not in reply
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
        # A client that trusts another CA does not accept the server's certificate.
        other = ServicePki(tmp_path / "other").issue("service", "x")
        reader, writer = await asyncio.open_connection("127.0.0.1", plan.client_port)
        try:
            await asyncio.wait_for(reader.readline(), 5)  # INFO, then the TLS upgrade
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.wait_for(
                    writer.start_tls(tls_context(str(other.ca)), server_hostname="127.0.0.1"), 10
                )
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
    finally:
        server.kill()
        await server.wait()
        log.close()


def test_every_region_users_are_confined_to_their_region() -> None:
    topo = load("three-regions-autonomous")
    perms = service_permissions(topo)
    assert "command" not in perms and "fanout" not in perms
    assert {u for u in perms if u.endswith("-eu")} == {
        "command-eu", "fanout-eu", "notification-eu", "query-eu", "worker-eu"
    }  # fmt: skip
    command = perms["command-eu"]["publish"]["allow"]
    assert [p for p in command if p.startswith("chatmesh.evt")] == ["chatmesh.evt.eu.>"]
    assert not any("EVENTS_ASIA" in p or "ALL_ASIA" in p or p.endswith(".EVENTS") for p in command)
    fanout = perms["fanout-eu"]
    assert [p for p in fanout["publish"]["allow"] if p.startswith("chatmesh.dlv")] == [
        "chatmesh.dlv.eu.>"
    ]
    assert all(
        ".eu." in p or not p.startswith("chatmesh.route") for p in fanout["subscribe"]["allow"]
    )
    assert "$JS.API.CONSUMER.MSG.NEXT.ALL_EU.fanout" in fanout["publish"]["allow"]
    # Presence snapshots (ADR-026): a fan-out announces its own region's users only ...
    assert [p for p in fanout["publish"]["allow"] if "presence" in p] == [
        "chatmesh.eph.presence-snapshot.eu"
    ]
    # ... and hears every region's (chatmesh.eph.>); the Query Service only listens to them.
    assert "chatmesh.eph.>" in fanout["subscribe"]["allow"]
    assert perms["query-eu"] == {
        "publish": {"deny": [">"]},
        "subscribe": {"allow": ["chatmesh.eph.presence-snapshot.>", "_INBOX.>"]},
    }
    worker = perms["worker-eu"]["publish"]["allow"]
    assert "$JS.API.CONSUMER.MSG.NEXT.ALL_EU.worker-eu" in worker
    # It may reset only the consumer feeding its own region, on each origin.
    assert [p for p in worker if ".RESET." in p] == [
        f"$JS.API.CONSUMER.RESET.EVENTS_{r}.all-eu" for r in ("US_EAST", "EU", "ASIA")
    ]
    # ... and update only its own region's ALL_ (a stalled source out and back).
    assert [p for p in worker if ".UPDATE." in p] == ["$JS.API.STREAM.UPDATE.ALL_EU"]
    assert not any(
        p.startswith("chatmesh.evt") for p in perms["notification-eu"]["publish"]["allow"]
    )


def test_every_region_configs_pass_nats_server_config_check(tmp_path: Path) -> None:
    topo = load("three-regions-autonomous")
    confs = [p for p in render_all(topo, tmp_path) if p.suffix == ".conf"]
    assert len(confs) == 3
    for conf in confs:
        result = subprocess.run([nats_server_binary(), "-t", "-c", str(conf)],
                                capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        assert result.returncode == 0, f"{conf.name}: {result.stdout}{result.stderr}"
        conf_json = json.loads(conf.read_text().split("\n", 1)[1])
        assert conf_json["jetstream"]["sync_interval"] == "always"  # every region holds writes
