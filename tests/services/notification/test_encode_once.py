"""Encode once: every stream of an event writes the same bytes, and a viewer gets only what they may see.

Also the streams' shared heartbeat ticker and their queue (``Outbox``). No
servers: the in-memory bus plays the Fan-Out Service, stores are embedded SQLite.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatmesh.internal.v1 import routing_pb2
from chatmesh.v1 import events_pb2, notification_service_pb2 as pb
from mesh.bus.subjects import Subjects
from mesh.stores import open_history, open_metadata
from services.notification.frames import Frames
from services.notification.hub import Hub, Outbox, Subscriber
from tests.bus.fakes import FakeBus
from tests.helpers import eventually
from tests.services.notification.test_subscriber import FakePresence, msg


def private(channel: str, seq: int, sender: str, key: str) -> events_pb2.Event:
    """A message whose client_msg_id only its sender may see."""
    event = msg(channel, seq)
    event.message_created.message.sender_user_id = sender
    event.message_created.message.client_msg_id = key
    return event


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    bus = FakeBus()
    history = await open_history(f"sqlite:///{tmp_path}/history.db")
    metadata = await open_metadata(f"sqlite:///{tmp_path}/metadata.db")
    hub = Hub(
        bus=bus, history=history, metadata=metadata, presence=FakePresence(),  # type: ignore[arg-type]
        region="eu", instance_id="n1", route_heartbeat=3600, stream_heartbeat=0.2,
        buffer_size=4,
    )  # fmt: skip
    await hub.start()
    yield hub
    await hub.stop()
    await metadata.close()
    await history.close()
    assert not bus.handler_errors
    await bus.close()


def streams_of(hub: Hub, *users: str) -> dict[str, list[Subscriber]]:
    """Two live streams per user, registered on the hub as Subscribe would."""
    subs: dict[str, list[Subscriber]] = {}
    for user in users:
        subs[user] = []
        for _ in range(2):
            sub = Subscriber(hub, user, 10)
            sub.replaying = False
            subs[user].append(sub)
        hub.users[user] = list(subs[user])
    return subs


async def deliver(hub: Hub, event: events_pb2.Event, users: list[str], n: int = 1) -> None:
    delivery = routing_pb2.Delivery(
        event=event, user_ids=users, stream_seq=n, fanout_epoch="fo.0", instance_seq=n
    )
    bus = hub.bus
    assert isinstance(bus, FakeBus)
    await bus.publish(Subjects.delivery("eu", "n1"), delivery.SerializeToString())
    await bus.settle()


def wire(sub: Subscriber, frames: Frames) -> list[bytes]:
    """What the stream's writer would put on the wire, through the Subscribe serializer."""
    out = []
    while not sub.queue.empty():
        item = sub.queue.get_nowait()
        assert isinstance(item, pb.SubscribeResponse)
        out.append(frames.encode(item))
    return out


async def test_one_delivery_is_serialized_once_per_viewer_variant_and_a_viewer_gets_only_what_they_may_see(
    hub: Hub,
) -> None:
    subs = streams_of(hub, "alice", "bob", "carol")
    event = private("ch_a", 1, "alice", "alice-key-1")
    await deliver(hub, event, ["alice", "bob", "carol"])

    sent = {user: [wire(s, hub.frames) for s in streams] for user, streams in subs.items()}
    [[a1], [a2]] = sent["alice"]
    [[b1], [b2]] = sent["bob"]
    [[c1], [c2]] = sent["carol"]
    # The sender's streams carry their key; everyone else's bytes do not hold it at all.
    assert pb.SubscribeResponse.FromString(a1).event.message_created.message.client_msg_id == (
        "alice-key-1"
    )
    for data in (b1, b2, c1, c2):
        assert b"alice-key-1" not in data
        parsed = pb.SubscribeResponse.FromString(data).event
        assert parsed.message_created.message.client_msg_id == ""
        assert parsed.message_created.message.text == "ch_a#1"
    # The same bytes object for every stream of a variant: serialized once each.
    assert a1 is a2 and b1 is b2 is c1 is c2 and a1 is not b1
    # And on the wire exactly what per-stream serialization produced before.
    assert a1 == pb.SubscribeResponse(event=event).SerializeToString()
    assert b1 == pb.SubscribeResponse(event=hub.visible(event, "bob")).SerializeToString()


async def test_an_event_without_private_fields_is_one_response_for_all(hub: Hub) -> None:
    subs = streams_of(hub, "alice", "bob")
    await deliver(hub, msg("ch_a", 1), ["alice", "bob"])
    items = [s.queue.get_nowait() for streams in subs.values() for s in streams]
    assert all(item is items[0] for item in items)


def test_frames_serialize_what_they_do_not_cache_and_stay_right_after_eviction() -> None:
    frames = Frames(size=2)
    events = [msg("ch_a", seq) for seq in range(1, 6)]
    responses = [frames.response(e) for e in events]
    # The oldest fell out of the cache: a stream far behind still gets the right bytes.
    for event, response in zip(events, responses, strict=True):
        assert frames.encode(response) == pb.SubscribeResponse(event=event).SerializeToString()
    assert frames.response(events[0]) is not responses[0]  # rebuilt, not a stale entry
    # Items of one stream (replay, heartbeats) and raw bytes pass through unchanged.
    beat = pb.SubscribeResponse(heartbeat=pb.Heartbeat(timeout_ms=3))
    assert frames.encode(beat) == beat.SerializeToString()
    assert frames.encode(b"\x01\x02") == b"\x01\x02"


async def test_an_idle_stream_gets_heartbeats_and_a_stalled_one_holds_at_most_one(
    hub: Hub,
) -> None:
    stream = hub.subscribe("dora", {})
    assert (await anext(stream)).HasField("replay_complete")
    kinds = [(await anext(stream)).WhichOneof("kind") for _ in range(2)]
    assert kinds == ["heartbeat", "heartbeat"]
    [sub] = hub.users["dora"]
    # The client stops reading: every later tick finds the stream idle, yet it holds one beat.
    await eventually(lambda: _ready(sub.queue.qsize() == 1), timeout=5, what="a queued heartbeat")
    later = asyncio.get_running_loop().time()
    for tick in range(1, 4):
        hub.beat_idle_streams(later + tick * hub.stream_heartbeat)
        assert sub.queue.qsize() == 1
    sub.offer(msg("ch_b", 1))
    assert (await anext(stream)).WhichOneof("kind") == "heartbeat"
    assert (await anext(stream)).event.seq == 1  # order kept: beat, then the event
    await stream.aclose()
    assert "dora" not in hub.users


async def _ready(value: bool) -> bool:
    return value


async def test_the_outbox_hands_items_over_in_order_and_wakes_its_reader() -> None:
    box = Outbox()
    assert box.empty() and box.qsize() == 0
    with pytest.raises(asyncio.QueueEmpty):
        box.get_nowait()
    reader = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    assert not reader.done()
    box.put_nowait("a")
    box.put_nowait("b")
    assert await reader == "a" and box.qsize() == 1
    assert await box.get() == "b"
    cancelled = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    box.put_nowait("c")  # a cancelled reader leaves nothing behind
    assert box.get_nowait() == "c"


async def test_deliveries_in_flight_behind_an_acknowledgement_are_not_taken_for_lost(
    hub: Hub,
) -> None:
    hub.in_flight_grace = 0.0  # any later acknowledgement counts as "a moment later"
    streams_of(hub, "bob")
    await deliver(hub, msg("ch_a", 1), ["bob"], n=1)

    def ack(instance_seq: int) -> routing_pb2.RouteAck:
        return routing_pb2.RouteAck(
            fanout_epoch="fo.0", instance_seq=instance_seq, stream_seq=instance_seq
        )

    # The Fan-Out says it sent 3 while 2 and 3 are still queued behind its reply.
    hub._check_ack(ack(3))
    assert hub._sweeping is None
    await deliver(hub, msg("ch_a", 2), ["bob"], n=2)
    await deliver(hub, msg("ch_a", 3), ["bob"], n=3)
    hub._check_ack(ack(3))
    assert hub._sweeping is None and hub.expected_seq == 4
    # 4 really is lost: still missing at an acknowledgement a moment later, it is swept.
    hub._check_ack(ack(4))
    assert hub._sweeping is None  # not yet: it may be in flight
    hub._check_ack(ack(4))
    assert hub._sweeping is not None and hub.expected_seq == 5
