"""Write-path failover on ``ha``: two Command and two Fan-Out Services, active/standby (ADR-019).

On an ``ha`` mesh of its own (three NATS nodes per region, ``write_instances = 2``),
with a sender in each region sending without pause through its edge (retrying
client, one ``client_msg_id`` per message) and a subscriber in each region:

* exactly one instance of each kind holds its lease, and the standby Command
  Service refuses with UNAVAILABLE (and RetryInfo) rather than writing;
* kill -9 of the active Command Service: the standby takes the lease, every send
  is acknowledged, each acknowledged message is in both regions' history exactly
  once with consecutive seqs, and every subscriber got each exactly once, in order;
* the same for kill -9 of the active Fan-Out Service.

The time from the kill to the first acknowledged write (command) and to the first
delivered message sent after the kill (fan-out) is printed (``-s``), never asserted.

``.venv/bin/python -m pytest tests/services/test_write_path_ha.py -x -q -s``
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from chatmesh.v1 import command_service_pb2 as cpb, command_service_pb2_grpc as cgrpc, events_pb2
from mesh.bus.lease import LEASE_BUCKET
from mesh.client import ChatClient, RetryPolicy, Subscription
from mesh.core.auth import KeyDirectory, mint
from mesh.core.errors import Unavailable
from mesh.harness.edges import edges_hook
from mesh.harness.identity import internal_channel
from mesh.harness.services import ServiceProcess, services_hook
from mesh.harness.supervisor import Mesh
from mesh.rpc.status import from_rpc_error
from mesh.topology import load
from tests.conftest import INTENDED_CRASHES, TEST_SETTINGS, assert_no_unexpected_crashes
from tests.helpers import eventually

pytestmark = pytest.mark.services

RETRYING = RetryPolicy(max_attempts=None, budget=60, attempt_timeout=10, max_backoff=0.5)


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    run_dir = tmp_path_factory.mktemp("write-ha") / "ha"
    async with Mesh(
        load("ha"), run_dir, hooks=[services_hook(TEST_SETTINGS), edges_hook()]
    ) as running:
        yield running
        assert_no_unexpected_crashes(running)


@pytest.fixture(scope="module")
def keys(mesh: Mesh) -> KeyDirectory:
    return KeyDirectory(Path(mesh.run_dir) / "keys")


async def _holder(mesh: Mesh, kind: str) -> ServiceProcess:
    """The service instance whose lease key ``kind`` names."""
    nc = await mesh.nats_client(mesh.topology.primary, user="admin")
    try:
        kv = await nc.jetstream().key_value(LEASE_BUCKET)
        entry = await kv.get(kind)
    finally:
        await nc.close()
    holder = (entry.value or b"").decode()  # "<kind>-<region>-<n>/<pid>-<random>"
    instance = holder.split("/", 1)[0].rsplit("-", 1)[1]
    primary = mesh.topology.primary
    name = f"{kind}-{primary}" + ("" if instance == "1" else f"-{instance}")
    svc: ServiceProcess = mesh.services[name]
    assert (
        svc.process.pid is not None
        and int(holder.split("/", 1)[1].split("-")[0]) == svc.process.pid
    )
    return svc


def _instances(mesh: Mesh, kind: str) -> list[ServiceProcess]:
    primary = mesh.topology.primary
    return [mesh.services[f"{kind}-{primary}"], mesh.services[f"{kind}-{primary}-2"]]


@dataclass
class Traffic:
    """Senders in both regions and subscribers in both regions on one channel."""

    channel: str
    acked: dict[str, tuple[int, float]] = field(default_factory=dict)
    """text -> (seq, when acknowledged)."""
    failed: list[str] = field(default_factory=list)
    issued: dict[str, float] = field(default_factory=dict)
    """text -> when its send was issued."""
    received: dict[str, list[events_pb2.Event]] = field(default_factory=dict)
    received_at: dict[str, list[float]] = field(default_factory=dict)


async def _send_loop(client: ChatClient, traffic: Traffic, who: str, stop: asyncio.Event) -> None:
    i = 0
    while not stop.is_set():
        text = f"{who} #{i}"
        traffic.issued[text] = time.monotonic()
        try:
            sent = await client.send_message(traffic.channel, text, client_msg_id=f"ha-{who}-{i}")
            traffic.acked[text] = (sent.message.seq, time.monotonic())
        except Exception:  # noqa: BLE001 - counted; the test asserts there are none
            traffic.failed.append(text)
        i += 1
        await asyncio.sleep(0.05)


async def _read(subscription: Subscription, traffic: Traffic, who: str) -> None:
    events = traffic.received.setdefault(who, [])
    times = traffic.received_at.setdefault(who, [])
    async for event in subscription:
        if event.channel_id == traffic.channel and event.HasField("message_created"):
            events.append(event)
            times.append(time.monotonic())


@contextlib.asynccontextmanager
async def _traffic(mesh: Mesh, keys: KeyDirectory, name: str) -> AsyncIterator[Traffic]:
    primary, other = mesh.topology.primary, mesh.topology.secondaries[0]
    users = {primary: f"{name}-ann", other: f"{name}-eve"}
    clients = {
        r: ChatClient.from_edge(mesh.endpoints[r]["edge"], token=mint(keys, u), retry=RETRYING)
        for r, u in users.items()
    }
    try:
        created = await clients[primary].create_channel(name, [users[other]])
        traffic = Traffic(created.channel.channel_id)

        async def eu_knows_it() -> bool:
            got = await clients[other].get_channel(traffic.channel)
            return got.channel.channel_id == traffic.channel

        await eventually(eu_knows_it, timeout=30, what="the channel in eu")
        subs = {r: c.subscribe({traffic.channel: 1}) for r, c in clients.items()}
        readers = [asyncio.create_task(_read(s, traffic, r)) for r, s in subs.items()]
        stop = asyncio.Event()
        senders = [
            asyncio.create_task(_send_loop(c, traffic, f"{name}-{r}", stop))
            for r, c in clients.items()
        ]
        try:
            yield traffic
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*senders), 120)
        await _check_exact(clients, traffic)
        for s in subs.values():
            await s.close()
        for t in readers:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(t, 10)
    finally:
        for c in clients.values():
            await c.close()


async def _check_exact(clients: dict[str, ChatClient], traffic: Traffic) -> None:
    """Every send acknowledged; each once in both histories and on both streams, in order."""
    assert not traffic.failed, f"sends gave up: {traffic.failed[:5]}"
    acked = {text: seq for text, (seq, _) in traffic.acked.items()}
    expected = sorted(acked.values())
    for region, client in clients.items():

        async def complete(c: ChatClient = client) -> list[tuple[int, str]]:
            rows: list[tuple[int, str]] = []
            after = 0
            while True:
                page = await c.get_history(traffic.channel, after_seq=after, limit=200)
                rows += [(m.seq, m.text) for m in page.messages]
                if len(page.messages) < 200:
                    break
                after = page.messages[-1].seq
            return rows if len(rows) >= len(acked) else []

        rows = await eventually(complete, timeout=60, what=f"{region} history complete")
        texts = [t for _, t in rows]
        assert len(texts) == len(set(texts)), f"{region}: a message stored twice"
        assert sorted(texts) == sorted(acked), (
            f"{region}: history differs from the acknowledged sends"
        )
        assert (
            [s for s, _ in rows]
            == expected
            == list(range(expected[0], expected[0] + len(expected)))
        )

        async def delivered(r: str = region) -> bool:
            return len(traffic.received.get(r, [])) >= len(acked)

        await eventually(delivered, timeout=60, what=f"{region} subscriber got every message")
        got = traffic.received[region]
        assert [e.seq for e in got] == expected, f"{region}: stream lost, repeated or reordered"


async def test_one_active_instance_of_each_and_the_standby_refuses(
    mesh: Mesh, keys: KeyDirectory
) -> None:
    active = await _holder(mesh, "command")
    [standby] = [s for s in _instances(mesh, "command") if s is not active]
    await _holder(mesh, "fanout")
    assert standby.address is not None
    async with internal_channel(mesh.extra_state["service_tls"], standby.address) as channel:
        stub = cgrpc.CommandServiceStub(channel)
        md = (("authorization", f"Bearer {mint(keys, 'ha-direct')}"),)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateChannel(
                cpb.CreateChannelRequest(name="on-standby"), metadata=md, timeout=5
            )
    err = from_rpc_error(caught.value)
    assert isinstance(err, Unavailable)
    assert err.retry_delay is not None


async def test_kill_active_command_service_nothing_lost_or_duplicated(
    mesh: Mesh, keys: KeyDirectory
) -> None:
    active = await _holder(mesh, "command")
    killed_pid = active.process.pid
    async with _traffic(mesh, keys, "cmd-failover") as traffic:
        await eventually(lambda: _at_least(traffic, 20), timeout=60, what="traffic flowing")
        killed_at = time.monotonic()
        active.process.signal(signal.SIGKILL)
        INTENDED_CRASHES[active.name] += 1
        await eventually(lambda: _acked_after(traffic, killed_at, 20), timeout=90,
                         what="writes after the kill")  # fmt: skip
    new = await _holder(mesh, "command")
    # The standby usually takes over; on a loaded machine the harness may restart the
    # killed instance first, and it wins the expired lease: a new process either way.
    assert new is not active or new.process.pid != killed_pid
    first = min(t for text, (_, t) in traffic.acked.items() if traffic.issued[text] > killed_at)
    print(f"\n[measured] ha, kill -9 of the active Command Service ({active.name}): first write "
          f"issued after the kill acknowledged {first - killed_at:.2f}s after the kill; {len(traffic.acked)} sends")  # fmt: skip
    await eventually(lambda: _restarted(active), timeout=60, what="killed instance back as standby")


async def test_kill_active_fanout_service_nothing_lost_or_duplicated(
    mesh: Mesh, keys: KeyDirectory
) -> None:
    active = await _holder(mesh, "fanout")
    killed_pid = active.process.pid
    async with _traffic(mesh, keys, "fan-failover") as traffic:
        await eventually(lambda: _at_least(traffic, 20), timeout=60, what="traffic flowing")
        killed_at = time.monotonic()
        active.process.signal(signal.SIGKILL)
        INTENDED_CRASHES[active.name] += 1
        await eventually(lambda: _acked_after(traffic, killed_at, 20), timeout=90,
                         what="writes after the kill")  # fmt: skip
    new = await _holder(mesh, "fanout")
    # The standby usually takes over; on a loaded machine the harness may restart the
    # killed instance first, and it wins the expired lease: a new process either way.
    assert new is not active or new.process.pid != killed_pid
    sent_after = {text for text, t in traffic.issued.items() if t > killed_at}
    figures = []
    for region, events in traffic.received.items():
        times = traffic.received_at[region]
        first = min(
            (t for e, t in zip(events, times, strict=True)
             if e.message_created.message.text in sent_after),
            default=None,
        )  # fmt: skip
        if first is not None:
            figures.append(f"{region} {first - killed_at:.2f}s")
    print(f"\n[measured] ha, kill -9 of the active Fan-Out Service ({active.name}): first "
          f"delivery of a message sent after the kill: {', '.join(figures)}")  # fmt: skip
    await eventually(lambda: _restarted(active), timeout=60, what="killed instance back as standby")


async def _at_least(traffic: Traffic, n: int) -> bool:
    return len(traffic.acked) >= n and all(len(v) >= 1 for v in traffic.received.values())


async def _acked_after(traffic: Traffic, since: float, n: int) -> bool:
    return sum(1 for _, t in traffic.acked.values() if t > since) >= n


async def _restarted(svc: ServiceProcess) -> bool:
    return svc.process.running and svc.ready_path.exists()


async def test_graceful_restart_of_the_active_command_service_hands_the_lease_over(
    mesh: Mesh, keys: KeyDirectory
) -> None:
    active = await _holder(mesh, "command")
    async with _traffic(mesh, keys, "cmd-handover") as traffic:
        await eventually(lambda: _at_least(traffic, 20), timeout=60, what="traffic flowing")
        stopped_at = time.monotonic()
        await active.stop()  # SIGTERM: drains and releases the lease

        async def taken_over() -> ServiceProcess | None:
            holder = await _holder(mesh, "command")
            return holder if holder is not active else None

        new = await eventually(taken_over, timeout=30, what="the standby holding the lease")
        await eventually(lambda: _acked_after(traffic, stopped_at, 20), timeout=90,
                         what="writes after the hand-over")  # fmt: skip
        await active.restart()
        active.watch()
    first = min(t for text, (_, t) in traffic.acked.items() if traffic.issued[text] > stopped_at)
    print(f"\n[measured] ha, graceful stop of the active Command Service ({active.name}): first "
          f"write issued after the stop acknowledged {first - stopped_at:.2f}s after it")  # fmt: skip
    assert await _holder(mesh, "command") is new
