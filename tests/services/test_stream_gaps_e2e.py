"""A gap nothing can fill yet: the stream says so, the client waits and resumes, nothing is lost.

A mesh of its own (``dev``) whose eu notification service may neither wait long
(``gap_timeout`` 1 s) nor read the primary's EVENTS (``fill_from_primary`` off),
so the only way not to lose messages is the contract's STREAM_GAP ending and the
client's reaction to it. The NATS gateways are cut while alice (us-east) keeps
sending and eu's worker is stopped, so when the link heals bob's stream in eu
gets live events beyond a range eu's history does not have. The server must end
the stream with UNAVAILABLE (STREAM_GAP) rather than skip; the client asks
GetHistory until the region has the range (the worker is restarted), resumes,
and hands bob every message once, in order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh.core.auth import KeyDirectory
from mesh.harness.edges import edges_hook
from mesh.harness.services import ServiceSettings, services_hook
from mesh.harness.supervisor import Mesh
from mesh.topology import load
from tests.conftest import TEST_SETTINGS
from tests.helpers import Auth, eventually
from tests.services.client import User

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture
async def strict_mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    settings = ServiceSettings(
        stream_heartbeat=TEST_SETTINGS.stream_heartbeat,
        route_heartbeat=TEST_SETTINGS.route_heartbeat,
        instance_timeout=TEST_SETTINGS.instance_timeout,
        resync_grace=TEST_SETTINGS.resync_grace,
        extra={"notification": {"gap_timeout": 1.0, "fill_from_primary": False,
                                "catchup_timeout": 2.0}},
    )  # fmt: skip
    mesh = Mesh(load("dev"), tmp_path / "mesh", hooks=[services_hook(settings), edges_hook()])
    async with mesh:
        yield mesh


async def _gateways(mesh: Mesh, enabled: bool) -> None:
    for proxy in mesh.wan.proxies:
        if "__nats-gw-" in proxy.name:
            await mesh.wan.toxiproxy.set_enabled(proxy.name, enabled)


@pytest.mark.timeout(300)
async def test_an_unfillable_gap_ends_the_stream_and_the_client_resumes_without_loss(
    strict_mesh: Mesh,
) -> None:
    mesh = strict_mesh
    auth = Auth(KeyDirectory(mesh.run_dir / "keys"))
    alice, bob = User(mesh, auth, "alice", "us-east"), User(mesh, auth, "bob", "eu")
    try:
        channel = await alice.create_channel("gaps", "bob")

        async def eu_has_channel() -> bool:
            return (await bob.history(channel)).last_seq >= 1

        await eventually(eu_has_channel, timeout=30, what="the channel in eu")
        stream = await bob.subscribe({channel: 0})
        await stream.replayed()
        sent = [(await alice.send(channel, f"before {i}")).message.seq for i in range(3)]

        worker = mesh.services["worker-eu"]
        await _gateways(mesh, False)
        sent += [(await alice.send(channel, f"during {i}")).message.seq for i in range(10)]
        await worker.stop()  # eu's history cannot fill the gap when the link heals
        await _gateways(mesh, True)

        async def stream_said_gap() -> bool:
            # Traffic goes on after the heal: live events beyond the range eu lacks.
            sent.append((await alice.send(channel, f"after {len(sent)}")).message.seq)
            err = stream.subscription.last_error
            return err is not None and err.reason == "STREAM_GAP"

        await eventually(
            stream_said_gap, timeout=60, interval=0.5, what="the stream ending with STREAM_GAP"
        )
        await worker.start()
        got: list[int] = []
        while len(got) < len(sent):
            event = await stream.next_event(timeout=90)
            if event.WhichOneof("payload") == "message_created":
                got.append(event.seq)
        assert got == sent, f"lost {sorted(set(sent) - set(got))}"
        assert stream.subscription.gap_waits >= 1
        assert stream.subscription.gaps == 0  # the server never sent an event beyond a gap
        assert stream.subscription.duplicates == 0
        gap = stream.subscription.last_error
        assert gap is not None and gap.metadata["channel_id"] == channel
        # It named what it could not deliver: from after its last seq, at least the cut's messages.
        last = int(gap.metadata["last_delivered_seq"])
        assert last < sent[3] and int(gap.metadata["first_missing_seq"]) == last + 1
        assert int(gap.metadata["last_missing_seq"]) >= sent[12]
    finally:
        await alice.close()
        await bob.close()
