"""The real NATS super-cluster, Valkey replicas and emulated WAN (issue 3).

Infrastructure-only meshes (no chatmesh services) keep gateway counters quiet;
each is started once per module through the same harness ``chatmesh up`` uses.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import valkey.asyncio as valkey_async
from nats.aio.client import Client as NATS

from mesh.bus.connection import connect
from mesh.bus.streams import ensure_stream
from mesh.harness.supervisor import Mesh
from mesh.topology import load
from tests.helpers import eventually

pytestmark = pytest.mark.mesh


@pytest.fixture(scope="module")
async def three(run_root: Path) -> AsyncIterator[Mesh]:
    """three-regions, infrastructure only."""
    async with Mesh(load("three-regions"), run_root / "three-infra") as mesh:
        yield mesh


async def _gateway_out_msgs(mesh: Mesh, src: str, dst: str) -> int:
    total = 0
    for node in mesh.nats_nodes[src]:
        gw = await node.monitor("gatewayz")
        conn = (gw.get("outbound_gateways") or {}).get(dst, {}).get("connection") or {}
        total += int(conn.get("out_msgs", 0))
    return total


async def _received(nc: NATS, subject: str) -> list[bytes]:
    got: list[bytes] = []

    async def cb(msg: object) -> None:
        got.append(msg.data)  # type: ignore[attr-defined]

    await nc.subscribe(subject, cb=cb)
    await nc.flush()
    return got


async def test_message_published_in_primary_reaches_every_region(three: Mesh) -> None:
    pub = await three.nats_client("us-east", user="bench")
    inboxes = {}
    for region in ("eu", "asia"):
        sub = await three.nats_client(region, user="bench")
        inboxes[region] = await _received(sub, "bench.everywhere")

    async def arrived() -> bool:
        # Interest propagates over the gateways asynchronously: publish until seen.
        await pub.publish("bench.everywhere", b"hello")
        await pub.flush()
        return all(inboxes.values())

    await eventually(arrived, timeout=10, what="delivery to eu and asia")
    assert all(b"hello" in msgs for msgs in inboxes.values())


async def test_interest_based_forwarding_keeps_local_subjects_local(three: Mesh) -> None:
    pub = await three.nats_client("us-east", user="bench")
    local = await _received(await three.nats_client("us-east", user="bench"), "bench.local.only")
    remote = await _received(await three.nats_client("eu", user="bench"), "bench.wanted.in.eu")
    await eventually(
        lambda: _published_and_seen(pub, "bench.wanted.in.eu", remote),
        timeout=10,
        what="eu interest",
    )
    n = 500

    before = await _gateway_out_msgs(three, "us-east", "eu")
    for i in range(n):
        await pub.publish("bench.local.only", str(i).encode())
    await pub.flush()
    await eventually(lambda: _count_at_least(local, n), what="local delivery")
    local_delta = await _gateway_out_msgs(three, "us-east", "eu") - before

    before = await _gateway_out_msgs(three, "us-east", "eu")
    for i in range(n):
        await pub.publish("bench.wanted.in.eu", str(i).encode())
    await pub.flush()
    await eventually(lambda: _count_at_least(remote, n), what="remote delivery")
    remote_delta = await _gateway_out_msgs(three, "us-east", "eu") - before

    print(
        f"\ngateway us-east->eu messages: local-only subject {local_delta}, eu-interest subject {remote_delta}"
    )
    # The gateway's own counter: the eu-interest subject crossed n times; the
    # local subject (background JetStream/mirror traffic aside) did not cross.
    assert remote_delta >= n
    assert local_delta < n // 10


async def _published_and_seen(pub: NATS, subject: str, inbox: list[bytes]) -> bool:
    await pub.publish(subject, b"probe")
    await pub.flush()
    return bool(inbox)


async def _count_at_least(inbox: list[bytes], n: int) -> bool:
    return len(inbox) >= n


async def _one_way_ms(pub: NATS, sub: NATS, subject: str, samples: int) -> list[float]:
    arrivals: asyncio.Queue[float] = asyncio.Queue()

    async def cb(msg: object) -> None:
        arrivals.put_nowait(time.perf_counter())

    await sub.subscribe(subject, cb=cb)
    await sub.flush()
    await eventually(
        lambda: _probe(pub, subject, arrivals), timeout=10, what=f"interest in {subject}"
    )
    result = []
    for _ in range(samples):
        sent = time.perf_counter()
        await pub.publish(subject, b"x")
        await pub.flush()
        got = await asyncio.wait_for(arrivals.get(), 5)
        result.append((got - sent) * 1000)
    return result


async def _probe(pub: NATS, subject: str, arrivals: asyncio.Queue[float]) -> bool:
    await pub.publish(subject, b"probe")
    await pub.flush()
    try:
        await asyncio.wait_for(arrivals.get(), 0.5)
    except TimeoutError:
        return False
    while not arrivals.empty():
        arrivals.get_nowait()
    return True


async def test_emulated_wan_latency_is_on_every_link(three: Mesh) -> None:
    """Every link proxy holds its link's latency both ways (the gateways dial only the
    proxies: the next test). The measured one-way figures are printed, not asserted:
    `make bench` reports them under load."""
    toxics = {name: p["toxics"] for name, p in (await three.wan.toxiproxy.proxies()).items()}
    assert {p.name for p in three.wan.proxies} <= set(toxics)
    for proxy in three.wan.proxies:
        link = three.topology.link(proxy.src, proxy.dst)
        assert {
            t["stream"]: (t["type"], t["toxicity"], t["attributes"]["latency"])
            for t in toxics[proxy.name]
        } == {
            "upstream": ("latency", 1.0, link.latency_ms),
            "downstream": ("latency", 1.0, link.latency_ms),
        }, proxy.name
    us_pub = await three.nats_client("us-east", user="bench")
    us_sub = await three.nats_client("us-east", user="bench")
    eu_sub = await three.nats_client("eu", user="bench")
    asia_sub = await three.nats_client("asia", user="bench")
    same = await _one_way_ms(us_pub, us_sub, "bench.lat.same", 50)
    to_eu = await _one_way_ms(us_pub, eu_sub, "bench.lat.eu", 20)
    to_asia = await _one_way_ms(us_pub, asia_sub, "bench.lat.asia", 10)
    print(
        f"\none-way ms p50: same-region {statistics.median(same):.3f}, "
        f"us-east->eu {statistics.median(to_eu):.1f} (min {min(to_eu):.1f}), "
        f"us-east->asia {statistics.median(to_asia):.1f} (min {min(to_asia):.1f})"
    )


async def test_gateways_only_use_the_link_proxies(three: Mesh) -> None:
    proxies = {p.name: p for p in three.wan.proxies}
    for src, nodes in three.nats_nodes.items():
        for node in nodes:
            gw = await node.monitor("gatewayz")
            for dst, info in (gw.get("outbound_gateways") or {}).items():
                dialled = (info["connection"]["ip"], info["connection"]["port"])
                expected = {
                    p.listen
                    for p in proxies.values()
                    if p.src == src and p.dst == dst and "nats-gw" in p.name
                }
                assert dialled in expected, (
                    f"{node.plan.server_name} -> {dst} bypasses its link proxy ({dialled})"
                )


async def test_cut_link_stops_delivery_and_heal_resumes_it(three: Mesh) -> None:
    pub = await three.nats_client("us-east", user="bench")
    inbox = await _received(await three.nats_client("eu", user="bench"), "bench.partition")
    await eventually(
        lambda: _published_and_seen(pub, "bench.partition", inbox),
        timeout=10,
        what="initial delivery",
    )
    await three.wan.cut("us-east", "eu")
    try:
        inbox.clear()
        for _ in range(20):
            await pub.publish("bench.partition", b"during-cut")
        await pub.flush()
        # Asia still hears us-east: the cut is one link, not the primary going dark.
        asia_inbox = await _received(
            await three.nats_client("asia", user="bench"), "bench.partition.asia"
        )
        await eventually(lambda: _published_and_seen(pub, "bench.partition.asia", asia_inbox), timeout=10,
                         what="us-east->asia during the eu cut")  # fmt: skip
        assert b"during-cut" not in inbox
    finally:
        await three.wan.heal("us-east", "eu")
    await eventually(
        lambda: _published_and_seen(pub, "bench.partition", inbox),
        timeout=20,
        what="delivery after heal",
    )


async def test_mirror_catches_up_after_a_20s_partition(three: Mesh) -> None:
    admin = await three.nats_client("us-east", user="admin")
    await ensure_stream(admin, {
        "name": "PARTSRC", "subjects": ["bench.mirror.>"], "storage": "file", "num_replicas": 1, "allow_direct": True,
        "placement": {"tags": ["region:us-east"]},
    })  # fmt: skip
    await ensure_stream(admin, {
        "name": "PARTSRC_EU", "mirror": {"name": "PARTSRC"}, "storage": "file", "num_replicas": 1, "allow_direct": True,
        "placement": {"tags": ["region:eu"]},
    })  # fmt: skip
    js = admin.jetstream()
    sent: list[bytes] = []

    async def publish(count: int) -> None:
        for i in range(count):
            data = f"msg-{len(sent)}-{i}".encode()
            await js.publish("bench.mirror.x", data, stream="PARTSRC")
            sent.append(data)

    await publish(50)
    await three.wan.cut("us-east", "eu")
    cut_at = time.monotonic()
    try:
        while time.monotonic() - cut_at < 20:
            await publish(25)
            await asyncio.sleep(0.5)
        eu = await three.nats_client("eu", user="admin")
        info = await eu.jsm().stream_info("PARTSRC_EU")
        assert info.state.messages < len(sent), "the mirror should lag while the link is cut"
    finally:
        await three.wan.heal("us-east", "eu")

    eu_admin = await three.nats_client("eu", user="admin")

    async def caught_up() -> bool:
        info = await eu_admin.jsm(timeout=2).stream_info("PARTSRC_EU")
        return bool(info.state.messages == len(sent))

    healed = time.monotonic()
    await eventually(caught_up, timeout=60, what="mirror catch-up")
    print(f"\nmirror caught up {len(sent)} messages {time.monotonic() - healed:.1f}s after healing")
    digest_src, digest_mirror = hashlib.sha256(), hashlib.sha256()
    for seq in range(1, len(sent) + 1):
        for stream, digest, nc in (
            ("PARTSRC", digest_src, admin),
            ("PARTSRC_EU", digest_mirror, eu_admin),
        ):
            msg = await nc.jsm().get_msg(stream, seq, direct=True)
            digest.update(msg.data or b"")
    assert (
        digest_mirror.hexdigest()
        == digest_src.hexdigest()
        == hashlib.sha256(b"".join(sent)).hexdigest()
    )


async def test_valkey_replica_serves_stale_reads_during_a_cut_and_catches_up(three: Mesh) -> None:
    primary = valkey_async.Valkey.from_url(three.valkey["us-east"].url)
    replica = valkey_async.Valkey.from_url(three.valkey["eu"].url)
    try:
        await primary.set("pres:test", "v1")
        await eventually(
            lambda: _equals(replica, "pres:test", b"v1"), timeout=10, what="replication of v1"
        )
        await three.wan.cut("us-east", "eu")
        try:
            await eventually(lambda: _link_down(three), timeout=30, what="replica noticing the cut")
            await primary.set("pres:test", "v2")
            assert await replica.get("pres:test") == b"v1"  # stale, but served
        finally:
            await three.wan.heal("us-east", "eu")
        await eventually(
            lambda: _equals(replica, "pres:test", b"v2"), timeout=30, what="replica catch-up"
        )
        info = await three.valkey["eu"].replication_info()
        assert info["master_link_status"] == "up"
    finally:
        await primary.aclose()
        await replica.aclose()


async def _link_down(mesh: Mesh) -> bool:
    info = await mesh.valkey["eu"].replication_info()
    return info.get("master_link_status") == "down"


async def _equals(client: valkey_async.Valkey, key: str, value: bytes) -> bool:
    return bool(await client.get(key) == value)


async def test_service_permissions_are_enforced_by_the_server(three: Mesh) -> None:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    async def client(region: str, user: str) -> NATS:
        creds = three.credentials[user]
        nc = await connect(three.nats_urls(region), name=f"perm-{user}", user=creds.user, password=creds.password,
                           error_cb=on_error)  # fmt: skip
        clients.append(nc)
        return nc

    clients: list[NATS] = []
    try:
        notif = await client("eu", "notification-eu")
        await notif.publish("chatmesh.evt.ch.forged", b"not allowed")
        await notif.flush()
        await eventually(lambda: _has(errors, 'permissions violation for publish to "chatmesh.evt.ch.forged"'),
                         timeout=5, what="publish violation")  # fmt: skip
        command = await client("us-east", "command")
        await command.subscribe("chatmesh.dlv.>")
        await command.flush()
        await eventually(lambda: _has(errors, 'permissions violation for subscription to "chatmesh.dlv.>"'),
                         timeout=5, what="subscribe violation")  # fmt: skip
        # What a service may do still works (the permissions are not simply "deny all").
        allowed = await client("eu", "notification-eu")
        await allowed.publish("chatmesh.route.hb.eu.n-test", b"")
        await allowed.flush()
        assert not any("chatmesh.route.hb.eu" in e for e in errors)
    finally:
        for nc in clients:
            await nc.close()


async def _has(errors: list[str], text: str) -> bool:
    return any(text.lower() in e.lower() for e in errors)


async def test_ha_topology_runs_r3_streams(run_root: Path) -> None:
    async with Mesh(load("ha"), run_root / "ha-infra") as mesh:
        admin = await mesh.nats_client("us-east", user="admin")
        info = await admin.jsm().stream_info("EVENTS")
        assert info.config.num_replicas == 3
        assert info.cluster is not None and info.cluster.name == "us-east"
        assert len(info.cluster.replicas or []) == 2
        mirror = await admin.jsm().stream_info("EVENTS_EU")
        assert mirror.cluster is not None and mirror.cluster.name == "eu"
        assert mirror.config.num_replicas == 3
        routez = await mesh.nats_nodes["eu"][0].monitor("routez")
        assert len({r["remote_name"] for r in routez["routes"]}) == 2


async def test_single_region_runs_a_standalone_jetstream(run_root: Path) -> None:
    async with Mesh(load("single"), run_root / "single-infra") as mesh:
        admin = await mesh.nats_client("us-east", user="admin")
        info = await admin.jsm().stream_info("EVENTS")
        assert info.config.subjects == ["chatmesh.evt.>"]
        assert mesh.wan.proxies == []  # nothing crosses a WAN
