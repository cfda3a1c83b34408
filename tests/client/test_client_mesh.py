"""ChatClient against the real dev mesh, through the regional edges, with real faults.

* a send whose first attempt was committed but whose reply was lost (Toxiproxy drops
  the replies on eu's link to the primary's Command Service, which is then killed and
  restarted) is retried with the same idempotency key: one stored message;
* a subscription keeps going across a Notification Service restart (graceful and
  kill -9) while messages keep flowing: nothing lost, nothing twice;
* refusals arrive as typed errors with their reason.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from chatmesh.v1 import events_pb2
from mesh.client import ChatClient, RetryPolicy, Subscription
from mesh.core.auth import mint
from mesh.core.errors import NotFound, PermissionDenied
from mesh.harness.supervisor import Mesh
from tests.helpers import Auth, eventually

pytestmark = pytest.mark.services

# Long enough for a kill, a restart and the edge reconnecting to the new process.
PATIENT = RetryPolicy(max_attempts=None, budget=120, attempt_timeout=60)


@pytest.fixture
async def clients(dev_mesh: Mesh, auth: Auth) -> AsyncIterator[dict[str, ChatClient]]:
    """ada in eu, ben in us-east, each through their region's edge."""
    made = {
        "ada": ChatClient.from_edge(
            dev_mesh.endpoints["eu"]["edge"], token=mint(auth.keys, "cli-ada"), retry=PATIENT
        ),
        "ben": ChatClient.from_edge(
            dev_mesh.endpoints["us-east"]["edge"], token=mint(auth.keys, "cli-ben"), retry=PATIENT
        ),
    }
    yield made
    for client in made.values():
        await client.close()


async def _reader(subscription: Subscription, into: list[events_pb2.Event]) -> None:
    async for event in subscription:
        into.append(event)


def _created(events: list[events_pb2.Event], channel: str) -> list[events_pb2.Event]:
    return [e for e in events if e.channel_id == channel and e.HasField("message_created")]


async def test_send_retried_after_a_lost_reply_and_a_crash_is_stored_once(
    dev_mesh: Mesh, clients: dict[str, ChatClient]
) -> None:
    ada, ben = clients["ada"], clients["ben"]
    channel = (await ada.create_channel("retry-after-crash", ["cli-ben"])).channel.channel_id
    seen: list[events_pb2.Event] = []
    subscription = ben.subscribe({channel: 1})
    reader = asyncio.create_task(_reader(subscription, seen))

    command = dev_mesh.services[f"command-{dev_mesh.topology.primary}"]
    toxiproxy = dev_mesh.wan.toxiproxy
    # eu's edge reaches the primary's Command Service through this WAN proxy.
    link = next(
        p for p in dev_mesh.wan.proxies if p.address == dev_mesh.endpoints["eu"]["grpc"]["command"]
    )
    await toxiproxy.add_toxic(link.name, "drop_replies", "timeout", "downstream", {"timeout": 0})
    dropping = True
    try:
        send = asyncio.create_task(ada.send_message(channel, "exactly once after a crash"))
        # The command is committed (ben sees it) while ada's reply is being dropped.
        await eventually(lambda: bool(_created(seen, channel)), timeout=30, what="commit")
        assert not send.done(), "the reply should still be lost"
        await command.kill()  # mid-flight: ada's attempt is still waiting for its reply
        await toxiproxy.remove_toxic(link.name, "drop_replies")
        dropping = False
        await command.restart()
        response = await send
    finally:
        if dropping:
            await toxiproxy.remove_toxic(link.name, "drop_replies")
        if not command.process.running:
            await command.restart()
    [committed] = _created(seen, channel)
    # The retry carried the first attempt's key: the service answered with that message.
    assert response.duplicate
    assert response.message.message_id == committed.message_created.message.message_id
    assert response.message.seq == committed.seq

    async def history_has_it() -> bool:
        page = await ada.get_history(channel, limit=200)
        return bool(page.messages)

    await eventually(history_has_it, timeout=30, what="eu history")
    for client in (ada, ben):  # both regions' replicas
        await eventually(
            lambda c=client: _async_history_len(c, channel, 1), timeout=30, what="history"
        )
        page = await client.get_history(channel, limit=200)
        assert [m.text for m in page.messages] == ["exactly once after a crash"]
    await subscription.close()
    await asyncio.wait_for(reader, 10)
    assert subscription.duplicates == 0


async def _async_history_len(client: ChatClient, channel: str, n: int) -> bool:
    return len((await client.get_history(channel, limit=200)).messages) >= n


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_subscription_resumes_across_a_notification_restart_under_traffic(
    dev_mesh: Mesh, clients: dict[str, ChatClient], how: str
) -> None:
    ada, ben = clients["ada"], clients["ben"]
    channel = (await ben.create_channel(f"resume-{how}", ["cli-ada"])).channel.channel_id

    async def eu_knows_it() -> bool:  # until then eu answers NOT_FOUND for it
        return (await ada.get_channel(channel)).channel.channel_id == channel

    await eventually(eu_knows_it, timeout=20, what="eu replicating the channel")
    received: list[events_pb2.Event] = []
    subscription = ada.subscribe({channel: 1})  # eu: ada's stream is served by eu's instance
    reader = asyncio.create_task(_reader(subscription, received))
    sent: list[int] = []
    stop = asyncio.Event()

    async def sender() -> None:
        i = 0
        while not stop.is_set() or i < 30:
            sent.append((await ben.send_message(channel, f"r{i}")).message.seq)
            i += 1

    task = asyncio.create_task(sender())
    try:
        await eventually(lambda: len(_created(received, channel)) >= 5, what="live")
        notification = dev_mesh.services["notification-eu-1"]
        if how == "kill":
            await notification.kill()
        else:
            await notification.stop()
        at_restart = len(sent)
        await notification.restart()
        await eventually(
            lambda: len(sent) >= at_restart + 10, timeout=30, what="sends after restart"
        )
        stop.set()
        await task
        await eventually(
            lambda: len(_created(received, channel)) >= len(sent),
            timeout=60,
            what="every message on the resumed stream",
        )
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await task
        await subscription.close()
        await asyncio.wait_for(reader, 10)
    seqs = [e.seq for e in _created(received, channel)]
    assert seqs == sent, f"missing {sorted(set(sent) - set(seqs))}, extra {len(seqs) - len(sent)}"
    channel_seqs = [e.seq for e in received if e.channel_id == channel]
    assert channel_seqs == list(range(2, 2 + len(channel_seqs))), "contiguous, once each"
    assert subscription.reconnects >= 1 and subscription.duplicates == 0
    assert subscription.last_error is not None and subscription.last_error.code == "UNAVAILABLE"


async def test_refusals_are_typed_errors_with_their_reason(
    dev_mesh: Mesh, clients: dict[str, ChatClient], auth: Auth
) -> None:
    ben = clients["ben"]
    channel = (await ben.create_channel("members-only", ["cli-ada"])).channel.channel_id
    async with ChatClient.from_edge(
        dev_mesh.endpoints["us-east"]["edge"], token=mint(auth.keys, "cli-eve")
    ) as eve:
        with pytest.raises(PermissionDenied) as info:
            await eve.send_message(channel, "let me in")
        assert info.value.reason == "NOT_A_MEMBER"
        assert info.value.metadata == {"channel_id": channel}

        async def drain() -> None:
            async for _ in eve.subscribe({channel: 0}):
                pass

        with pytest.raises(PermissionDenied) as info:
            await asyncio.wait_for(drain(), 30)
        assert info.value.reason == "NOT_A_MEMBER"
        with pytest.raises(NotFound) as missing:
            await eve.get_history("ch_" + "0" * 26)
        assert missing.value.reason == "CHANNEL_NOT_FOUND"
