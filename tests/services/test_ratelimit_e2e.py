"""A flooding user is refused with RATE_LIMITED, and nobody else notices (issue 13, finding 2).

Everything enters through the regions' edges of the ``dev`` mesh, whose limits are the
topology's defaults (``mesh/topology/builtin/dev.toml``). The assertions count refusals
and stored messages, never time: how many of a flood pass depends on how fast the
machine sends it, so the tests assert "some refused, every refusal well-formed, exactly
the accepted ones stored", and that another user's calls all succeed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from chatmesh.v1 import command_service_pb2 as cpb
from mesh.client import ChatClient, RetryPolicy
from mesh.core import ids
from mesh.core.auth import mint
from mesh.core.errors import ChatmeshError, ResourceExhausted
from mesh.harness.supervisor import Mesh
from tests.helpers import Auth, eventually
from tests.services.client import User

pytestmark = pytest.mark.services


def _client(mesh: Mesh, auth: Auth, user: str, region: str) -> ChatClient:
    """A client that never retries: a refusal is seen, not waited out."""
    return ChatClient.from_edge(
        mesh.endpoints[region]["edge"], token=mint(auth.keys, user), retry=RetryPolicy.none()
    )


async def _rate_limited(mesh: Mesh, service: str, action: str) -> float:
    total = 0.0
    async with httpx.AsyncClient(timeout=10) as http:
        for name, proc in mesh.services.items():
            if not name.startswith(service) or not proc.metrics:
                continue
            for line in (await http.get(proc.metrics)).text.splitlines():
                if line.startswith("chatmesh_rate_limited_total{") and f'action="{action}"' in line:
                    total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
async def flooder(dev_mesh: Mesh, auth: Auth) -> AsyncIterator[ChatClient]:
    client = _client(dev_mesh, auth, "rl-flood", "eu")
    yield client
    await client.close()


def _refusals(results: list[object]) -> list[ResourceExhausted]:
    refused = [r for r in results if isinstance(r, ChatmeshError)]
    unexpected = [r for r in refused if not isinstance(r, ResourceExhausted)]
    assert not unexpected, f"unexpected failures: {unexpected[:3]}"
    return [r for r in refused if isinstance(r, ResourceExhausted)]


async def test_a_send_flood_is_refused_and_other_users_are_served(
    dev_mesh: Mesh, auth: Auth, flooder: ChatClient
) -> None:
    limits = dev_mesh.topology.limits
    calm = User(dev_mesh, auth, "rl-calm", "eu")
    try:
        channel = (await flooder.create_channel("flood", ["rl-calm"])).channel.channel_id
        before = await _rate_limited(dev_mesh, "command", "send")
        flood = 3 * limits.send_burst
        sends = [flooder.send_message(channel, f"flood {i}") for i in range(flood)]
        calm_sends = [calm.send(channel, f"calm {i}") for i in range(5)]
        results = await asyncio.gather(*sends, return_exceptions=True)
        calm_results = await asyncio.gather(*calm_sends)

        refused = _refusals(results)
        accepted = [r for r in results if isinstance(r, cpb.SendMessageResponse)]
        assert refused, "a flood of 3 bursts was not refused at all"
        assert len(accepted) >= limits.send_burst // 2
        for err in refused:
            assert err.reason == "RATE_LIMITED"
            assert err.retry_delay is not None and 0 < err.retry_delay <= 60
        # The other user's sends all went through, flood or not.
        assert all(not r.duplicate for r in calm_results)
        # Nothing was stored for a refused send: history holds exactly the accepted ones.
        # eu's history applies its mirror a moment after the acks: wait until it holds
        # every acknowledged message, then compare.
        acked = {r.message.message_id for r in [*accepted, *calm_results]}
        messages: list[object] = []

        async def applied() -> bool:
            nonlocal messages
            messages = await calm.all_history(channel, page=100)
            return acked <= {m.message_id for m in messages}

        await eventually(applied, timeout=30, what="eu's history to hold every acked send")
        flood_texts = {m.text for m in messages if m.sender_user_id == "rl-flood"}
        assert flood_texts == {r.message.text for r in accepted}
        assert sum(1 for m in messages if m.sender_user_id == "rl-calm") == 5
        # Refused where it is cheapest: the flooder's edge holds the send bucket too, so
        # most of the flood never reaches the Command Service (which counts the rest).
        at_edge = [r for r in refused if "at this edge" in r.message]
        assert at_edge, "the edge passed the whole flood to the Command Service"
        in_service = len(refused) - len(at_edge)
        assert await _rate_limited(dev_mesh, "command", "send") - before == in_service
    finally:
        await calm.close()


async def test_a_typing_flood_is_refused(dev_mesh: Mesh, flooder: ChatClient) -> None:
    channel = (await flooder.create_channel("typing flood", [])).channel.channel_id
    burst = dev_mesh.topology.limits.typing_burst
    results = await asyncio.gather(
        *(flooder.set_typing(channel, True) for _ in range(4 * burst)), return_exceptions=True
    )
    refused = _refusals(results)
    assert refused and all(e.reason == "RATE_LIMITED" for e in refused)


async def test_a_client_that_honours_retry_info_gets_through(dev_mesh: Mesh, auth: Auth) -> None:
    # The default client waits at least RetryInfo's delay and sends again with the same key.
    client = ChatClient.from_edge(
        dev_mesh.endpoints["us-east"]["edge"], token=mint(auth.keys, "rl-patient")
    )
    try:
        channel = (await client.create_channel("patient", [])).channel.channel_id
        burst = dev_mesh.topology.limits.send_burst
        results = await asyncio.gather(
            *(client.send_message(channel, f"m{i}") for i in range(burst + 10)),
            return_exceptions=True,
        )
        assert all(isinstance(r, cpb.SendMessageResponse) for r in results), [
            r for r in results if not isinstance(r, cpb.SendMessageResponse)
        ][:3]
    finally:
        await client.close()


async def test_concurrent_streams_per_user_are_capped(dev_mesh: Mesh, auth: Auth) -> None:
    limit = dev_mesh.topology.limits.streams_per_user
    hog = User(dev_mesh, auth, "rl-streams", "us-east")
    try:
        streams = [await hog.subscribe(reconnect=False) for _ in range(limit)]
        for stream in streams:
            await stream.replayed(timeout=30)
        extra = await hog.subscribe(reconnect=False)
        with pytest.raises(ResourceExhausted) as info:
            await extra.next(timeout=30)
        assert info.value.reason == "RATE_LIMITED" and info.value.retry_delay is not None
        # Another user is not affected, and a slot frees when a stream ends.
        other = User(dev_mesh, auth, "rl-streams-other", "us-east")
        try:
            await (await other.subscribe(reconnect=False)).replayed(timeout=30)
        finally:
            await other.close()
        await streams[0].close()

        async def reopened() -> bool:
            again = await hog.subscribe(reconnect=False)
            try:
                await again.replayed(timeout=30)
            except ResourceExhausted:
                await again.close()
                return False
            return True

        assert await eventually(reopened, timeout=30, what="a freed stream slot")
        assert await _rate_limited(dev_mesh, "notification", "subscribe") >= 1
    finally:
        await hog.close()


async def test_the_edge_refuses_a_flood_by_token_subject(dev_mesh: Mesh, auth: Auth) -> None:
    """More calls at once than the edge's per-user burst: the edge itself refuses some."""
    limits = dev_mesh.topology.limits
    flood = _client(dev_mesh, auth, "rl-edge", "us-east")
    calm = _client(dev_mesh, auth, "rl-edge-calm", "us-east")
    try:
        # GetHistory of a channel that does not exist: cheap for the services.
        nope = ids.new("ch")
        # Rounds of 3 bursts at once, until the edge refuses (on a loaded machine one
        # round may trickle out slower than the bucket refills); at most 5 rounds.
        results: list[object] = []
        edge_refusals: list[ResourceExhausted] = []
        for _ in range(5):
            calls = [flood.get_history(nope) for _ in range(3 * limits.edge_burst)]
            results += await asyncio.gather(*calls, return_exceptions=True)
            edge_refusals = [
                r
                for r in results
                if isinstance(r, ResourceExhausted) and "at this edge" in r.message
            ]
            if edge_refusals:
                break
        assert edge_refusals, "the edge let a flood of one user through"
        assert all(e.reason == "RATE_LIMITED" and e.retry_delay is not None for e in edge_refusals)
        others = {type(r).__name__ for r in results if r not in edge_refusals}
        assert others <= {"NotFound", "PermissionDenied"}
        # Another subject has a bucket of its own.
        with pytest.raises(ChatmeshError) as info:
            await calm.get_history(nope)
        assert not isinstance(info.value, ResourceExhausted)
    finally:
        await flood.close()
        await calm.close()
