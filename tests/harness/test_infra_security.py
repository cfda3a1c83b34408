"""Least privilege and secrets of the infrastructure, checked by the real servers (issue 13, finding 6).

NATS: a secondary's worker may run its own durable consumer of its region's
mirror and nothing else (no other consumer, no deletion, no ephemeral one), and
watch and repair its mirror (stream info, its mirror's own consumer on EVENTS); the
system account has a password of its own. Valkey: every client must AUTH, and
the replica still replicates. Infrastructure-only ``dev`` mesh (one node per
region), started through the same harness ``chatmesh up`` uses.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import nats.errors
import pytest
import valkey.asyncio as valkey_async
import valkey.exceptions
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig

from mesh.bus.connection import connect
from mesh.bus.natsbus import NatsBus
from mesh.bus.replication import ReplicationMonitor
from mesh.bus.streams import ensure_mirror_consumer
from mesh.bus.subjects import EVENTS_STREAM, mirror_stream_name
from mesh.deploy.nats import SYSTEM_USER, worker_consumer
from mesh.harness.supervisor import Mesh
from mesh.topology import load
from tests.helpers import eventually

pytestmark = pytest.mark.mesh


@pytest.fixture(scope="module")
async def infra(run_root: Path) -> AsyncIterator[Mesh]:
    """dev, infrastructure only."""
    async with Mesh(load("dev"), run_root / "infra-security") as mesh:
        yield mesh


async def _has(errors: list[str], text: str) -> bool:
    return any(text.lower() in e.lower() for e in errors)


async def test_a_secondary_worker_can_only_use_its_own_consumer(infra: Mesh) -> None:
    region = infra.topology.secondaries[0]
    stream = mirror_stream_name(region)
    mine = worker_consumer(region)
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    creds = infra.credentials[f"worker-{region}"]
    nc = await connect(infra.nats_urls(region), name="perm-worker", user=creds.user,
                       password=creds.password, error_cb=on_error)  # fmt: skip
    admin = await infra.nats_client(region, user="admin")
    try:
        jsm = nc.jsm()
        # Its own durable consumer: created, read, pulled from (the permissions are not "deny all").
        config = ConsumerConfig(name=mine, durable_name=mine, ack_policy=AckPolicy.EXPLICIT)
        await jsm.add_consumer(stream, config, timeout=10)
        assert (await jsm.consumer_info(stream, mine, timeout=10)).name == mine
        await jsm.stream_info(stream)
        assert not errors

        # Another worker's (or a made-up) consumer, an ephemeral one, any deletion: refused.
        await admin.jsm().add_consumer(
            stream,
            ConsumerConfig(name="victim", durable_name="victim", ack_policy=AckPolicy.EXPLICIT),
        )
        intruder = ConsumerConfig(
            name="intruder", durable_name="intruder", ack_policy=AckPolicy.EXPLICIT
        )
        with pytest.raises(nats.errors.TimeoutError):
            await jsm.add_consumer(stream, intruder, timeout=2)
        await eventually(
            lambda: _has(errors, f'permissions violation for publish to "$JS.API.CONSUMER.CREATE.{stream}.intruder"'),
            timeout=5, what="create refused",
        )  # fmt: skip
        with pytest.raises(nats.errors.TimeoutError):
            await jsm.add_consumer(stream, ConsumerConfig(ack_policy=AckPolicy.EXPLICIT), timeout=2)
        for victim in ("victim", mine):
            with pytest.raises(nats.errors.TimeoutError):
                await nc.request(f"$JS.API.CONSUMER.DELETE.{stream}.{victim}", b"", timeout=2)
            await eventually(
                lambda v=victim: _has(errors, f'publish to "$JS.API.CONSUMER.DELETE.{stream}.{v}"'),  # type: ignore[misc]
                timeout=5, what=f"delete of {victim} refused",
            )  # fmt: skip
        with pytest.raises(nats.errors.TimeoutError):
            await jsm.consumer_info(stream, "victim", timeout=2)
        # Nothing changed: both consumers are still there, the intruder was never made.
        names = sorted(c.name for c in await admin.jsm().consumers_info(stream) if c.name)
        assert names == sorted(["victim", mine])
    finally:
        await nc.close()


async def test_the_system_user_has_its_own_password(infra: Mesh) -> None:
    admin_pw = infra.credentials["admin"].password
    sys_creds = infra.credentials[SYSTEM_USER]
    assert sys_creds.password != admin_pw
    urls = infra.nats_urls(infra.topology.primary)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await _try(urls, SYSTEM_USER, admin_pw)
    # Its own password opens the system account (server requests answer).
    nc = await _try(urls, SYSTEM_USER, sys_creds.password)
    try:
        reply = await nc.request("$SYS.REQ.SERVER.PING", b"", timeout=5)
        assert b"server" in reply.data
    finally:
        await nc.close()


async def _try(urls: list[str], user: str, password: str) -> NATS:
    nc = NATS()

    async def quiet(exc: Exception) -> None:
        return None

    try:
        await nc.connect(urls, user=user, password=password, allow_reconnect=False,
                         max_reconnect_attempts=0, connect_timeout=3, error_cb=quiet)  # fmt: skip
    except BaseException:
        await nc.close()
        raise
    return nc


async def test_valkey_refuses_clients_without_the_password(infra: Mesh) -> None:
    primary = infra.valkey[infra.topology.primary]
    replica = infra.valkey[infra.topology.secondaries[0]]
    for server in (primary, replica):
        anonymous = valkey_async.Valkey(host=server.host, port=server.port, socket_timeout=5)
        try:
            with pytest.raises(valkey.exceptions.AuthenticationError):
                await anonymous.get("anything")
            with pytest.raises(valkey.exceptions.AuthenticationError):
                await anonymous.set("presence:forged", "online")
        finally:
            await anonymous.aclose()
    # With the password (the URL the services get): writes reach the replica.
    writer = valkey_async.Valkey.from_url(primary.url, socket_timeout=5)
    reader = valkey_async.Valkey.from_url(replica.url, socket_timeout=5)
    try:
        await writer.set("auth-check", b"ok")

        async def replicated() -> bool:
            return bool(await reader.get("auth-check") == b"ok")

        await eventually(replicated, timeout=20, what="replica sees the write")
    finally:
        await writer.aclose()
        await reader.aclose()
    # The state file names the servers without the password.
    state = infra.state()["regions"]
    assert all(infra.valkey_password not in str(r["valkey"]) for r in state.values())


async def test_a_secondary_worker_may_watch_and_repair_its_mirror_and_nothing_more(
    infra: Mesh,
) -> None:
    """The replication monitor runs as the secondary's worker user: it reads both
    streams' info and re-creates its mirror's own consumer on EVENTS, no other."""
    region = infra.topology.secondaries[0]
    mirror = mirror_stream_name(region)
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    creds = infra.credentials[f"worker-{region}"]
    nc = await connect(infra.nats_urls(region), name="perm-monitor", user=creds.user,
                       password=creds.password, error_cb=on_error)  # fmt: skip
    try:
        monitor = ReplicationMonitor(nc, mirror, interval=0.2)
        health = await monitor.sample()
        assert health.source_last >= 0 and health.mirror_last >= 0, health
        info = await nc.jsm().stream_info(mirror)
        assert info.config.mirror is not None
        # The repair: the mirror's own consumer, re-created with its own config (idempotent).
        raw = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{mirror}", b"", timeout=5)).data)
        await ensure_mirror_consumer(nc, raw["config"], timeout=10)
        # A hole in its mirror: read from EVENTS's leader (not a direct get, which
        # the mirror itself would answer).
        bus = NatsBus(nc)
        first = max(1, await bus.first_seq(EVENTS_STREAM))  # 0 while EVENTS is empty
        await bus.get_msg(EVENTS_STREAM, first, leader=True, timeout=5)  # a denial: a timeout
        assert not errors
        # Any other consumer on EVENTS: refused.
        with pytest.raises(nats.errors.TimeoutError):
            await nc.jsm().add_consumer(
                EVENTS_STREAM,
                ConsumerConfig(name="sneaky", durable_name="sneaky", ack_policy=AckPolicy.EXPLICIT),
                timeout=2,
            )
    finally:
        await nc.close()
