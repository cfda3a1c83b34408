"""The harness restarts NATS, Valkey and Toxiproxy after a kill -9, as it does the services.

Each test kills one infrastructure process as a crash would (SIGKILL to its process
group, the harness not told) on a ``dev`` mesh of its own (so the session's mesh
never sees these faults), and checks what a user would notice afterwards:

* the primary's only NATS node: the watchdog restarts it (one crash counted, same
  ports), the JetStream store survives (the EVENTS stream still holds the messages
  sent before the kill), and a retrying client's ``SendMessage`` through the edge
  succeeds and is in history exactly once; the time from the kill to that first
  acknowledged write is measured and printed (``-s``), never asserted;
* the Valkey primary: restarted on the same port, and the eu replica replicates
  from it again;
* Toxiproxy: restarted with every link proxy and latency toxic restored, so eu's
  commands reach the primary and the NATS gateways connect again. (Whether eu's
  mirror then catches up promptly is nats-server's mirror behaviour after a link
  outage, issue 12's replication-health work, not asserted here.)

``.venv/bin/python -m pytest tests/harness/test_supervision.py -x -q -s``
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import valkey.asyncio as valkey_async

from mesh.bus.subjects import EVENTS_STREAM
from mesh.client import ChatClient, RetryPolicy
from mesh.core.auth import KeyDirectory, mint
from mesh.harness.edges import edges_hook
from mesh.harness.process import Supervised
from mesh.harness.services import services_hook
from mesh.harness.supervisor import Mesh
from mesh.topology import load
from tests.conftest import TEST_SETTINGS, assert_no_unexpected_crashes
from tests.helpers import eventually

pytestmark = pytest.mark.services

# Retries until the budget is spent, waits capped at 1 s so the measured figure is
# the outage, not the client's last backoff.
RETRYING = RetryPolicy(max_attempts=None, budget=90, attempt_timeout=10, max_backoff=1.0)


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    """A ``dev`` mesh with every service and both edges, for these faults only."""
    run_dir = tmp_path_factory.mktemp("supervision") / "dev"
    async with Mesh(
        load("dev"), run_dir, hooks=[services_hook(TEST_SETTINGS), edges_hook()]
    ) as running:
        yield running


@pytest.fixture(scope="module")
def keys(mesh: Mesh) -> KeyDirectory:
    return KeyDirectory(Path(mesh.run_dir) / "keys")


def _client(mesh: Mesh, keys: KeyDirectory, region: str, user: str) -> ChatClient:
    return ChatClient.from_edge(
        mesh.endpoints[region]["edge"], token=mint(keys, user), retry=RETRYING
    )


async def _crash(server: Supervised) -> int:
    """SIGKILLs ``server`` as a crash would; returns the killed pid once it is gone."""
    pid = server.process.pid
    assert pid is not None, f"{server.name} is not running"
    server.process.signal(signal.SIGKILL)
    return pid


async def _restarted(server: Supervised, old_pid: int, crashes_before: int) -> None:
    async def back() -> bool:
        pid = server.process.pid
        return server.crashes == crashes_before + 1 and pid is not None and pid != old_pid

    await eventually(back, timeout=30, what=f"{server.name} restarted by the watchdog")


async def _stream_messages(mesh: Mesh, region: str, stream: str) -> int:
    nc = await mesh.nats_client(region, user="admin")
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.state.messages)
    finally:
        await nc.close()


async def test_killed_primary_nats_node_comes_back_with_its_store_and_writes_resume(
    mesh: Mesh, keys: KeyDirectory
) -> None:
    primary = mesh.topology.primary
    node = mesh.nats_nodes[primary][0]
    client_port = node.plan.client_port
    async with _client(mesh, keys, primary, "sup-ann") as ann:
        channel = (await ann.create_channel("nats-kill", ["sup-bob"])).channel.channel_id
        before = [(await ann.send_message(channel, f"before {i}")).message.seq for i in range(3)]
        stored_before = await _stream_messages(mesh, primary, EVENTS_STREAM)

        crashes = node.crashes
        killed_at = time.monotonic()
        old_pid = await _crash(node)
        # A send issued right after the kill: the client retries through the outage.
        after = await ann.send_message(channel, "after the kill", client_msg_id="sup-after-1")
        resumed_s = time.monotonic() - killed_at
        await _restarted(node, old_pid, crashes)

        assert node.plan.client_port == client_port
        assert mesh.nats_urls(primary)[0].endswith(f":{client_port}")
        # The store dir survived: the stream still has every event from before the kill.
        assert await _stream_messages(mesh, primary, EVENTS_STREAM) >= stored_before + 1
        assert after.message.seq == before[-1] + 1

        async def in_history() -> bool:
            page = await ann.get_history(channel, limit=50)
            texts = [m.text for m in page.messages]
            return texts.count("after the kill") == 1 and texts[:3] == [
                f"before {i}" for i in range(3)
            ]

        await eventually(in_history, timeout=30, what="the write after the kill in history once")
    print(f"\n[measured] kill -9 of nats-{primary}-1 on dev: first acknowledged SendMessage "
          f"through the edge {resumed_s:.2f}s after the kill")  # fmt: skip
    _intended(mesh, node)


async def test_killed_valkey_primary_comes_back_and_the_replica_follows_it(mesh: Mesh) -> None:
    primary = mesh.valkey[mesh.topology.primary]
    replica = mesh.valkey["eu"]
    crashes = primary.crashes
    old_pid = await _crash(primary)
    await _restarted(primary, old_pid, crashes)
    await primary.wait_ready(timeout=30)

    writer = valkey_async.Valkey(
        host=primary.host, port=primary.port, password=primary.password, socket_timeout=2.0
    )
    reader = valkey_async.Valkey(
        host=replica.host, port=replica.port, password=replica.password, socket_timeout=2.0
    )
    try:
        await writer.set("sup:after-restart", "1")

        async def replicated() -> bool:
            return await reader.get("sup:after-restart") == b"1"

        await eventually(
            replicated, timeout=60, what="eu's replica following the restarted primary"
        )
    finally:
        await writer.aclose()
        await reader.aclose()
    _intended(mesh, primary)


async def test_killed_toxiproxy_comes_back_with_every_link(mesh: Mesh, keys: KeyDirectory) -> None:
    toxiproxy = mesh.toxiproxy
    links_before = await toxiproxy.proxies()
    crashes = toxiproxy.crashes
    old_pid = await _crash(toxiproxy)
    await _restarted(toxiproxy, old_pid, crashes)

    def shape(links: dict[str, Any]) -> dict[str, Any]:
        return {
            n: (p["listen"], p["upstream"], p["enabled"], sorted(t["name"] for t in p["toxics"]))
            for n, p in links.items()
        }

    # The harness puts back each proxy, then its toxics: wait until the last toxic
    # is back (checking only the proxy count raced the last proxy's toxics).
    async def restored() -> bool:
        return shape(await toxiproxy.proxies()) == shape(links_before)

    await eventually(restored, timeout=30, what="toxiproxy's proxies and toxics restored")
    assert shape(await toxiproxy.proxies()) == shape(links_before)
    # eu's commands cross the restored command link, and every NATS node has its
    # gateway to the other region again (they dial through the restored proxies).
    async with _client(mesh, keys, "eu", "sup-eve") as eve:
        channel = (await eve.create_channel("toxiproxy-kill", [])).channel.channel_id
        sent = await eve.send_message(channel, "across the restored link")
        assert sent.message.seq >= 1
    topo = mesh.topology
    for node in (n for nodes in mesh.nats_nodes.values() for n in nodes):
        await node.wait_ready(
            expected_routes=topo.region(node.plan.region).nats_nodes - 1,
            expected_gateways=set(topo.region_names) - {node.plan.region},
            timeout=60,
        )
    _intended(mesh, toxiproxy)


def _intended(mesh: Mesh, server: Supervised) -> None:
    """Every crash so far was this module's doing; nothing else crashed."""
    from tests.conftest import INTENDED_CRASHES

    INTENDED_CRASHES[server.name] = server.crashes
    assert_no_unexpected_crashes(mesh)
