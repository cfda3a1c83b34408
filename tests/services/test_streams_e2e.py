"""Stream behaviour users notice: heartbeats on idle streams, slow clients cut off alone.

Users enter through their region's edge (tests/services/client.py); only the slow
client's stream goes to the Notification Service directly (see that test).
"""

from __future__ import annotations

import asyncio
import os
import signal as signals
import time

import grpc
import pytest

from chatmesh.v1 import notification_service_pb2 as npb, notification_service_pb2_grpc as ngrpc
from mesh.harness.identity import internal_channel
from mesh.harness.supervisor import Mesh
from mesh.rpc.status import from_rpc_error
from tests.conftest import INTENDED_CRASHES
from tests.helpers import Auth, eventually
from tests.services.client import User

pytestmark = pytest.mark.services


async def test_idle_stream_gets_heartbeats(dev_mesh: Mesh, auth: Auth) -> None:
    """An idle stream keeps getting heartbeats, one after another, each with the timeout."""
    user = User(dev_mesh, auth, "idle-ivy", "eu")
    try:
        stream = await user.subscribe()
        await stream.replayed()
        beats: list[float] = []
        while len(beats) < 2:  # two in a row: they repeat while nothing else happens
            item = await stream.next(timeout=30)
            if not item.HasField("heartbeat"):  # her own "online" presence may come first
                assert item.HasField("event") and item.event.HasField("presence_changed"), item
                assert not beats, "an event came between the heartbeats of an idle stream"
                continue
            # The client's liveness budget: three intervals of the test's 2 s.
            assert item.heartbeat.timeout_ms == 6000
            beats.append(time.monotonic())
        print(f"\nheartbeats {beats[1] - beats[0]:.2f}s apart (interval 2 s)")
    finally:
        await user.close()


async def test_slow_client_is_disconnected_without_slowing_others(
    dev_mesh: Mesh, auth: Auth
) -> None:
    alice = User(dev_mesh, auth, "slow-alice", "us-east")
    quick = User(dev_mesh, auth, "slow-quick", "eu")
    try:
        channel = await alice.create_channel("slow", "slow-sloth", "slow-quick")
        # The sloth opens a stream and never reads it: HTTP/2 flow control stops
        # the server from writing, so its bounded queue fills up.
        # A small, fixed HTTP/2 window (no BDP probing) so a client that does
        # not read really stops the server's writes. Its stream goes straight to
        # the Notification Service: this tests that service's per-stream buffer, and a
        # proxy in between would add buffers of its own (sized by the proxy) before
        # the backpressure reaches it. A raw stub, because it must hold the call open
        # without reading, which no client layer does.
        sloth_channel = internal_channel(
            dev_mesh.extra_state["service_tls"],
            dev_mesh.endpoints["eu"]["grpc"]["notification"][0],
            options=[("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", 1 << 20)],
        )
        sloth_call = ngrpc.NotificationServiceStub(sloth_channel).Subscribe(
            npb.SubscribeRequest(), metadata=auth.md("slow-sloth")
        )
        quick_stream = await quick.subscribe()
        await quick_stream.replayed()
        await asyncio.sleep(0)  # let the sloth's call start
        text = "x" * 3900
        sent = [(await alice.send(channel, f"{i} {text}")).message.seq for i in range(600)]
        received = []
        while len(received) < len(sent):
            event = await quick_stream.next_event(20, kinds=("message_created",))
            received.append(event.seq)
        assert received == sent  # the quick reader got everything, in order

        # Now the sloth reads: what was queued, then the disconnect with a clear status.
        async def drain() -> None:
            async for _ in sloth_call:
                pass

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(drain(), 30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert from_rpc_error(info.value).reason == "SLOW_CONSUMER"
        assert "resume_from" in (info.value.details() or "")
    finally:
        await sloth_channel.close()
        await alice.close()
        await quick.close()


async def test_a_crashed_service_is_restarted_by_the_harness(dev_mesh: Mesh, auth: Auth) -> None:
    query = dev_mesh.services["query-eu"]
    before = query.crashes
    INTENDED_CRASHES[query.name] += 1
    os.kill(query.process.pid, signals.SIGSEGV)  # as a crash in a C extension would
    user = User(dev_mesh, auth, "crash-cora", "eu")
    try:

        async def answers() -> bool:
            resp = await user.client.get_presence(["crash-cora"])
            return len(resp.presences) == 1

        await eventually(answers, timeout=30, what="query-eu back after the crash")
        assert query.crashes == before + 1
        assert "Fatal Python error: Segmentation fault" in query.process.log_path.read_text()
    finally:
        await user.close()
