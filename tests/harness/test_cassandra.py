"""Two Cassandra DCs on loopback, linked through Toxiproxy, through mesh.harness.servers.cassandra.

What a user of a multi-region chat would notice, checked against real processes:

* a message written in us-east at LOCAL_QUORUM shows up in eu (LOCAL_ONE);
* inter-DC traffic really crosses the link proxy: with the proxies disabled the DCs
  convict each other, a write that needs an eu ack (EACH_QUORUM) is refused while
  LOCAL_QUORUM writes go on, and neither region sees the other's writes; after the
  heal, hinted handoff makes both regions converge. (The write latency with a
  latency toxic on the link is logged, not asserted: figures are the benchmark's.)

The Toxiproxy client below is deliberately minimal (one proxy *towards each node*,
see ``mesh.harness.servers.cassandra``); ``mesh/wan.py`` is meant to replace it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cassandra import ConsistencyLevel, Unavailable
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    ResponseFuture,
    Session,
)
from cassandra.io.libevreactor import LibevConnection
from cassandra.policies import DCAwareRoundRobinPolicy
from cassandra.query import SimpleStatement

from mesh.harness.ports import allocate
from mesh.harness.servers.cassandra import (
    CassandraNode,
    CassandraNodeSpec,
    ensure_jars,
    plan_cluster,
    wait_schema_agreement,
)
from mesh.harness.servers.gotools import TOXIPROXY
from mesh.stores.cassandra import rows_of
from tests.helpers import eventually

logger = logging.getLogger(__name__)

pytestmark = [pytest.mark.cassandra, pytest.mark.timeout(420)]

WAN_LATENCY_MS = 150


# --------------------------------------------------------------------- helpers


class Toxiproxy:
    """A Toxiproxy server process and a tiny client for its HTTP API."""

    def __init__(self, binary: Path, log: Path) -> None:
        self.port = allocate("127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(binary), "-host", "127.0.0.1", "-port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return bytes(resp.read())

    async def wait_ready(self) -> None:
        async def up() -> bool:
            assert self.proc.poll() is None, "toxiproxy exited"
            try:
                await asyncio.to_thread(self.request, "GET", "/version")
            except (urllib.error.URLError, ConnectionError):
                return False
            return True

        await eventually(up, timeout=10, what="toxiproxy API")

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
        return await asyncio.to_thread(self.request, method, path, body)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._log.close()


async def run(session: Session, query: str, params: tuple[Any, ...], cl: int) -> list[Any]:
    """Runs one CQL statement on the driver's libev thread, awaited from asyncio."""
    future: ResponseFuture = session.execute_async(
        SimpleStatement(query, consistency_level=cl), params
    )
    return await asyncio.wait_for(rows_of(future, asyncio.get_running_loop()), timeout=30)


def connect(spec: CassandraNodeSpec) -> tuple[Cluster, Session]:
    """A driver session pinned to one DC, the way a regional service would hold it."""
    profile = ExecutionProfile(
        load_balancing_policy=DCAwareRoundRobinPolicy(local_dc=spec.dc, used_hosts_per_remote_dc=0),
        request_timeout=20,
    )
    cluster = Cluster(
        contact_points=[spec.listen_address],
        port=spec.native_port,
        connection_class=LibevConnection,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        protocol_version=5,
        connect_timeout=30,
        max_schema_agreement_wait=30,
    )
    return cluster, cluster.connect()


async def body_of(session: Session, room: str, msg_id: int) -> str | None:
    rows = await run(
        session,
        "SELECT body FROM chat.messages WHERE room = %s AND id = %s",
        (room, msg_id),
        ConsistencyLevel.LOCAL_ONE,
    )
    return str(rows[0].body) if rows else None


# --------------------------------------------------------------------- fixtures


@pytest.fixture
async def toxiproxy(tmp_path: Path) -> AsyncIterator[Toxiproxy]:
    proxy = Toxiproxy(await TOXIPROXY.ensure_async(), tmp_path / "toxiproxy.log")
    try:
        await proxy.wait_ready()
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
async def two_dcs(
    tmp_path: Path, toxiproxy: Toxiproxy
) -> AsyncIterator[tuple[list[CassandraNode], Toxiproxy]]:
    lib = await asyncio.to_thread(ensure_jars)
    # phi 5 (the minimum) convicts a cut-off peer in ~12 s instead of ~20 s.
    specs = [
        dataclasses.replace(spec, phi_convict_threshold=5)
        for spec in plan_cluster(["us-east", "eu"], tmp_path, heap_mb=512)
    ]
    for spec in specs:
        # One proxy towards each node: every peer dials spec.endpoint.
        await toxiproxy.call(
            "POST",
            "/proxies",
            {
                "name": spec.name,
                "listen": spec.proxy_listen,
                "upstream": spec.proxy_upstream,
                "enabled": True,
            },
        )
    nodes = [CassandraNode(spec, lib=lib) for spec in specs]
    try:
        started = time.monotonic()
        for node in nodes:
            await node.start()
        # Both are seeds of an empty cluster, so they can boot side by side.
        await asyncio.gather(*(node.wait_ready(timeout=180) for node in nodes))
        # Gossip UP is not enough for a NetworkTopologyStrategy keyspace: each side
        # must have applied the other's tokens (NORMAL) to know its DC.
        await asyncio.gather(*(node.wait_ring({"us-east", "eu"}, timeout=240) for node in nodes))
        logger.info(
            "2-DC cluster up in %.1fs (nodes %s), RSS KiB %s",
            time.monotonic() - started,
            [round(n.ready_after or 0, 1) for n in nodes],
            [n.rss_kib() for n in nodes],
        )
        yield nodes, toxiproxy
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))


# --------------------------------------------------------------------- test


async def test_two_dcs_replicate_partition_and_converge(
    two_dcs: tuple[list[CassandraNode], Toxiproxy],
) -> None:
    (us, eu), proxy = two_dcs
    us_cluster, us_session = await asyncio.to_thread(connect, us.spec)
    eu_cluster, eu_session = await asyncio.to_thread(connect, eu.spec)
    try:
        # Schema from us-east; the driver waits for schema agreement across DCs.
        await run(
            us_session,
            "CREATE KEYSPACE chat WITH replication = "
            "{'class': 'NetworkTopologyStrategy', 'us-east': 1, 'eu': 1}",
            (),
            ConsistencyLevel.LOCAL_QUORUM,
        )
        await run(
            us_session,
            "CREATE TABLE chat.messages (room text, id int, body text, PRIMARY KEY (room, id))",
            (),
            ConsistencyLevel.LOCAL_QUORUM,
        )
        await wait_schema_agreement([us, eu], timeout=30)

        # 1. Healthy link: a us-east write reaches eu.
        await run(
            us_session,
            "INSERT INTO chat.messages (room, id, body) VALUES (%s, %s, %s)",
            ("lobby", 1, "hello from us-east"),
            ConsistencyLevel.LOCAL_QUORUM,
        )

        async def eu_sees_1() -> str | None:
            return await body_of(eu_session, "lobby", 1)

        assert await eventually(eu_sees_1, timeout=30, what="eu sees the write") == (
            "hello from us-east"
        )

        # 2. A figure, logged: with latency on the link, a write that waits for an eu
        # ack pays the round trip; a local one does not. Cassandra's internode
        # connections are one-way (a node sends on connections it opened itself), so
        # the delay must be on each proxy's *upstream* stream, towards its node: a
        # downstream-only toxic slows nothing (measured).
        for node in (us, eu):
            await proxy.call(
                "POST",
                f"/proxies/{node.spec.name}/toxics",
                {
                    "name": "wan",
                    "type": "latency",
                    "stream": "upstream",
                    "attributes": {"latency": WAN_LATENCY_MS},
                },
            )
        insert = "INSERT INTO chat.messages (room, id, body) VALUES (%s, %s, %s)"

        async def write_ms(msg_id: int, cl: int) -> float:
            t0 = time.monotonic()
            await run(us_session, insert, ("lobby", msg_id, "timed"), cl)
            return (time.monotonic() - t0) * 1000

        local_ms = min([await write_ms(100 + i, ConsistencyLevel.LOCAL_QUORUM) for i in range(3)])
        global_ms = min([await write_ms(200 + i, ConsistencyLevel.EACH_QUORUM) for i in range(3)])
        logger.info(
            "write latency with %d ms on the link: LOCAL_QUORUM %.0f ms, EACH_QUORUM %.0f ms",
            WAN_LATENCY_MS,
            local_ms,
            global_ms,
        )
        for node in (us, eu):
            await proxy.call("DELETE", f"/proxies/{node.spec.name}/toxics/wan")

        # 3. Cut the link (both directions) and write on both sides.
        us_log, eu_log = us.log_size(), eu.log_size()
        for node in (us, eu):
            await proxy.call("POST", f"/proxies/{node.spec.name}", {"enabled": False})
        cut_at = time.monotonic()
        await run(us_session, insert, ("lobby", 10, "us during cut"), ConsistencyLevel.LOCAL_QUORUM)
        await run(eu_session, insert, ("lobby", 11, "eu during cut"), ConsistencyLevel.LOCAL_QUORUM)
        # Wait until each side's failure detector convicts the other, so a stale read
        # below is the partition's doing, not a race with in-flight replication.
        await us.wait_peer_state(eu.spec, up=False, timeout=60, offset=us_log)
        await eu.wait_peer_state(us.spec, up=False, timeout=60, offset=eu_log)
        logger.info("peers marked DOWN %.1fs after the cut", time.monotonic() - cut_at)
        assert await body_of(eu_session, "lobby", 10) is None
        assert await body_of(us_session, "lobby", 11) is None
        assert await body_of(us_session, "lobby", 10) == "us during cut"
        assert await body_of(eu_session, "lobby", 11) == "eu during cut"
        # The ack of eu's replica can only come through the link: refused while it is cut.
        with pytest.raises((Unavailable, NoHostAvailable)) as refused:
            await run(us_session, insert, ("lobby", 12, "needs eu"), ConsistencyLevel.EACH_QUORUM)
        logger.info("EACH_QUORUM during the cut: %r", refused.value)

        # 4. Heal: hinted handoff replays the writes each side missed.
        us_log, eu_log = us.log_size(), eu.log_size()
        for node in (us, eu):
            await proxy.call("POST", f"/proxies/{node.spec.name}", {"enabled": True})
        healed_at = time.monotonic()

        async def converged() -> bool:
            seen = (await body_of(eu_session, "lobby", 10), await body_of(us_session, "lobby", 11))
            return seen == ("us during cut", "eu during cut")

        await eventually(converged, timeout=90, what="both DCs hold both writes")
        logger.info("both DCs converged %.1fs after the heal", time.monotonic() - healed_at)
        # Convergence came from hints (a LOCAL_ONE read never repairs across DCs).
        await us.wait_log("Finished hinted handoff of file", timeout=5, offset=us_log)
        await eu.wait_log("Finished hinted handoff of file", timeout=5, offset=eu_log)
    finally:
        await asyncio.to_thread(us_cluster.shutdown)
        await asyncio.to_thread(eu_cluster.shutdown)
