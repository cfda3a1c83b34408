"""The Fan-Out Service's route handling and delivery numbering, on the in-memory bus.

The test plays the notification instances (route snapshots, updates and heartbeats
as requests; deliveries collected from their subjects) and JetStream (which
EVENTS messages the consumer gets). The metadata store is embedded SQLite.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from chatmesh.internal.v1 import routing_pb2
from chatmesh.v1 import events_pb2, presence_pb2
from mesh.bus.subjects import EVENTS_STREAM, Subjects
from mesh.core.events import new_event
from mesh.stores import open_metadata
from services.fanout.service import Fanout
from tests.bus.fakes import FakeBus
from tests.helpers import eventually


class FakeInstance:
    """A notification instance as the Fan-Out Service sees it."""

    def __init__(self, bus: FakeBus, instance_id: str, region: str = "eu") -> None:
        self.bus = bus
        self.instance_id = instance_id
        self.region = region
        self.deliveries: list[routing_pb2.Delivery] = []

    async def listen(self) -> FakeInstance:
        async def on_delivery(msg: object) -> None:
            self.deliveries.append(routing_pb2.Delivery.FromString(msg.data))  # type: ignore[attr-defined]

        await self.bus.subscribe(Subjects.delivery(self.region, self.instance_id), on_delivery)
        return self

    async def _ask(self, subject: str, payload: bytes) -> routing_pb2.RouteAck:
        reply = await self.bus.request(subject, payload, timeout=5)
        return routing_pb2.RouteAck.FromString(reply.data)

    async def snapshot(self, version: int, users: list[str]) -> routing_pb2.RouteAck:
        snap = routing_pb2.RouteSnapshot(
            instance_id=self.instance_id, region=self.region, version=version, user_ids=users
        )
        return await self._ask(
            Subjects.route_snapshot(self.region, self.instance_id), snap.SerializeToString()
        )

    async def update(
        self, version: int, added: tuple[str, ...] = (), removed: tuple[str, ...] = ()
    ) -> routing_pb2.RouteAck:
        update = routing_pb2.RouteUpdate(
            instance_id=self.instance_id, region=self.region, version=version,
            added_user_ids=added, removed_user_ids=removed,
        )  # fmt: skip
        return await self._ask(
            Subjects.route_update(self.region, self.instance_id), update.SerializeToString()
        )

    async def heartbeat(self, version: int) -> routing_pb2.RouteAck:
        hb = routing_pb2.InstanceHeartbeat(
            instance_id=self.instance_id, region=self.region, version=version
        )
        return await self._ask(
            Subjects.route_heartbeat(self.region, self.instance_id), hb.SerializeToString()
        )

    def kinds(self) -> list[tuple[str, list[str]]]:
        return [(d.event.WhichOneof("payload") or "", sorted(d.user_ids)) for d in self.deliveries]


@pytest.fixture
async def bus() -> AsyncIterator[FakeBus]:
    bus = FakeBus()
    yield bus
    await bus.close()


@pytest.fixture
async def fanout(bus: FakeBus, tmp_path: Path) -> AsyncIterator[Fanout]:
    metadata = await open_metadata(f"sqlite:///{tmp_path}/metadata.db")
    fanout = Fanout(
        bus=bus, jetstream=bus, metadata=metadata, region="us-east",
        instance_timeout=3600, resync_grace=0,
    )  # fmt: skip
    await fanout.start()
    yield fanout
    await fanout.stop()
    await metadata.close()
    assert not bus.handler_errors


async def until(cond: Callable[[], object], what: str) -> None:
    async def check() -> bool:
        return bool(cond())

    await eventually(check, timeout=5, what=what)


class Events:
    """Publishes channel events into the fake EVENTS stream and has JetStream deliver them."""

    def __init__(self, bus: FakeBus, fanout: Fanout) -> None:
        self.bus = bus
        self.fanout = fanout

    async def send(self, event: events_pb2.Event) -> int:
        subject = (
            Subjects.channel_events(event.channel_id)
            if event.channel_id
            else Subjects.user_events(event.actor_user_id)
        )
        ack = await self.bus.publish_event(subject, event.SerializeToString(), event.event_id)
        await self.bus.deliver(EVENTS_STREAM, "fanout", [ack.seq])
        await until(
            lambda: self.fanout.consumer.last_stream_seq == ack.seq, f"stream seq {ack.seq}"
        )
        await self.bus.settle()
        return ack.seq

    async def created(self, channel_id: str, members: list[str]) -> int:
        event = new_event(channel_id, seq=1, origin_region="us-east", actor=members[0])
        event.channel_created.channel.channel_id = channel_id
        event.channel_created.channel.member_user_ids.extend(members)
        return await self.send(event)

    async def message(self, channel_id: str, seq: int, text: str = "hi") -> int:
        event = new_event(channel_id, seq=seq, origin_region="us-east", actor="alice")
        event.message_created.message.channel_id = channel_id
        event.message_created.message.seq = seq
        event.message_created.message.text = text
        return await self.send(event)

    async def member(self, channel_id: str, seq: int, user: str, *, joined: bool) -> int:
        event = new_event(channel_id, seq=seq, origin_region="us-east", actor=user)
        if joined:
            event.member_joined.user_id = user
        else:
            event.member_left.user_id = user
        return await self.send(event)


@pytest.fixture
def events(bus: FakeBus, fanout: Fanout) -> Events:
    return Events(bus, fanout)


async def test_start_asks_every_instance_for_its_routes(bus: FakeBus, fanout: Fanout) -> None:
    [request] = bus.published_on(Subjects.ROUTE_RESYNC)
    assert routing_pb2.ResyncRequest.FromString(request).fanout_id == fanout.epoch


async def test_deliveries_are_numbered_per_instance_and_carry_the_stream_seq(
    bus: FakeBus, fanout: Fanout, events: Events
) -> None:
    n1 = await FakeInstance(bus, "n1").listen()
    n2 = await FakeInstance(bus, "n2", "us-east").listen()
    ack1 = await n1.snapshot(1, ["bob"])
    ack2 = await n2.snapshot(1, ["carol", "alice"])
    assert ack1.fanout_epoch != ack2.fanout_epoch and ack1.fanout_epoch.startswith(fanout.epoch)
    assert (ack1.instance_seq, ack1.stream_seq) == (0, 0)

    s1 = await events.created("ch_1", ["alice", "bob", "carol"])
    s2 = await events.created("ch_2", ["alice", "carol"])  # nobody on n1
    s3 = await events.message("ch_1", 2)
    s4 = await events.message("ch_2", 2)
    s5 = await events.message("ch_1", 3)

    assert [(d.instance_seq, d.stream_seq) for d in n1.deliveries] == [(1, s1), (2, s3), (3, s5)]
    assert [(d.instance_seq, d.stream_seq) for d in n2.deliveries] == [
        (1, s1), (2, s2), (3, s3), (4, s4), (5, s5)
    ]  # fmt: skip
    assert {d.fanout_epoch for d in n1.deliveries} == {ack1.fanout_epoch}
    assert {d.fanout_epoch for d in n2.deliveries} == {ack2.fanout_epoch}
    assert [sorted(d.user_ids) for d in n2.deliveries] == [["alice", "carol"]] * 5
    assert [list(d.user_ids) for d in n1.deliveries] == [["bob"]] * 3
    assert n1.deliveries[1].event.message_created.message.seq == 2
    assert fanout.events_processed == 5 and fanout.deliveries == 8

    # The instance learns where the numbering stands from every answer.
    hb = await n1.heartbeat(1)
    assert (hb.instance_seq, hb.stream_seq, hb.resync_needed) == (3, s5, False)


async def test_route_versions_out_of_order_ask_for_a_resync(
    bus: FakeBus, fanout: Fanout, events: Events
) -> None:
    n1 = await FakeInstance(bus, "n1").listen()
    first = await n1.update(1, added=("bob",))
    assert first.resync_needed, "the table has never seen this instance's full route set"

    assert not (await n1.snapshot(1, ["bob"])).resync_needed
    ack = await n1.update(2, added=("alice",))
    assert (ack.version, ack.resync_needed) == (2, False)
    ack = await n1.update(4, added=("carol",))  # 3 never arrived
    assert (ack.version, ack.resync_needed) == (2, True)
    ack = await n1.heartbeat(4)
    assert ack.resync_needed, "the heartbeat's version is not the table's"
    ack = await n1.snapshot(4, ["alice", "bob", "carol"])
    assert (ack.version, ack.resync_needed) == (4, False)
    assert not (await n1.heartbeat(4)).resync_needed
    assert (await n1.update(5, removed=("carol",))).version == 5

    await events.created("ch_1", ["alice", "bob", "carol"])
    assert n1.kinds() == [("channel_created", ["alice", "bob"])]


async def test_a_leave_reaches_the_leaver_and_later_events_do_not(
    bus: FakeBus, fanout: Fanout, events: Events
) -> None:
    n1 = await FakeInstance(bus, "n1").listen()
    n2 = await FakeInstance(bus, "n2").listen()
    await n1.snapshot(1, ["bob", "carol"])
    await n2.snapshot(1, ["alice"])
    await events.created("ch_1", ["alice", "bob"])
    await events.member("ch_1", 2, "bob", joined=False)
    await events.message("ch_1", 3)
    await events.member("ch_1", 4, "carol", joined=True)
    await events.message("ch_1", 5)

    assert n1.kinds() == [
        ("channel_created", ["bob"]),
        ("member_left", ["bob"]),
        ("member_joined", ["carol"]),
        ("message_created", ["carol"]),
    ]
    assert [k for k, _ in n2.kinds()] == [
        "channel_created", "member_left", "message_created", "member_joined", "message_created"
    ]  # fmt: skip
    assert [d.instance_seq for d in n1.deliveries] == [1, 2, 3, 4]


async def test_membership_unknown_to_the_table_is_loaded_from_the_metadata_store(
    bus: FakeBus, fanout: Fanout, events: Events
) -> None:
    created = new_event("ch_9", seq=1, origin_region="us-east", actor="alice")
    created.channel_created.channel.channel_id = "ch_9"
    created.channel_created.channel.member_user_ids.extend(["alice", "bob"])
    await fanout.metadata.apply(created)  # in the store, but the consumer never saw it
    n1 = await FakeInstance(bus, "n1").listen()
    await n1.snapshot(1, ["bob"])
    await events.message("ch_9", 2)
    assert n1.kinds() == [("message_created", ["bob"])]


async def test_a_silent_instance_is_dropped_and_users_it_alone_held_go_offline(
    bus: FakeBus, fanout: Fanout, events: Events
) -> None:
    n1 = await FakeInstance(bus, "n1").listen()
    n2 = await FakeInstance(bus, "n2").listen()
    await n1.snapshot(1, ["bob", "dave"])
    await n2.snapshot(1, ["alice", "dave"])  # dave has streams on both
    await events.created("ch_1", ["alice", "bob", "dave"])
    slot = fanout.table.slot_of("n1")
    assert slot is not None
    fanout.table.instance(slot).last_seen = time.monotonic() - 2 * fanout.instance_timeout

    assert await fanout.expire(time.monotonic()) == ["bob"]
    await bus.settle()
    assert fanout.table.slot_of("n1") is None
    offline = n2.deliveries[-1]
    presence = offline.event.presence_changed.presence
    assert (presence.user_id, presence.status) == ("bob", presence_pb2.PRESENCE_STATUS_OFFLINE)
    assert sorted(offline.user_ids) == ["alice", "dave"] and offline.instance_seq == 2

    await events.message("ch_1", 2)
    assert len(n1.deliveries) == 1, "no deliveries to a dropped instance"
    # It comes back: re-registered under a new numbering epoch, counting from 1 again.
    ack = await n1.snapshot(2, ["bob"])
    assert ack.fanout_epoch != n1.deliveries[0].fanout_epoch and ack.instance_seq == 0
    await events.message("ch_1", 3)
    assert [(d.fanout_epoch, d.instance_seq) for d in n1.deliveries[1:]] == [(ack.fanout_epoch, 1)]


async def test_typing_reaches_the_channels_routed_members_without_a_stream_seq(
    bus: FakeBus, fanout: Fanout, events: Events
) -> None:
    n1 = await FakeInstance(bus, "n1").listen()
    await n1.snapshot(1, ["bob"])
    await events.created("ch_1", ["alice", "bob"])
    typing = new_event("ch_1", seq=0, origin_region="eu", actor="alice")
    typing.typing_changed.user_id = "alice"
    typing.typing_changed.typing = True
    await bus.publish(Subjects.typing("ch_1"), typing.SerializeToString())
    await bus.settle()
    assert n1.kinds()[-1] == ("typing_changed", ["bob"])
    assert (n1.deliveries[-1].stream_seq, n1.deliveries[-1].instance_seq) == (0, 2)


async def test_malformed_route_messages_are_ignored(bus: FakeBus, fanout: Fanout) -> None:
    for subject in (Subjects.route_update("eu", "n1"), Subjects.route_snapshot("eu", "n1")):
        await bus.publish(subject, b"\xff\xff not protobuf", reply="_INBOX.bad")
    await bus.settle()
    assert bus.published_on("_INBOX.bad") == [] and fanout.table.instances() == []


async def test_a_read_marker_reaches_only_its_reader_and_presence_only_the_users_peers(
    bus: FakeBus, fanout: Fanout, events: Events
) -> None:
    n1 = await FakeInstance(bus, "n1").listen()
    await n1.snapshot(1, ["alice", "bob", "carol"])
    await events.created("ch_1", ["alice", "bob"])  # carol shares no channel with them

    # A read marker is private to its reader, though it names a channel with peers.
    marker = new_event("ch_1", seq=0, origin_region="us-east", actor="bob")
    marker.read_marker_updated.user_id = "bob"
    marker.read_marker_updated.last_read_seq = 1
    ack = await bus.publish_event(
        Subjects.user_events("bob"), marker.SerializeToString(), marker.event_id
    )
    await bus.deliver(EVENTS_STREAM, "fanout", [ack.seq])
    await until(lambda: fanout.consumer.last_stream_seq == ack.seq, "the read marker")
    await bus.settle()
    assert n1.kinds()[-1] == ("read_marker_updated", ["bob"])

    # A presence change goes to the user and everyone sharing a channel, not to strangers.
    online = new_event("", seq=0, origin_region="us-east", actor="alice")
    online.presence_changed.presence.user_id = "alice"
    online.presence_changed.presence.status = presence_pb2.PRESENCE_STATUS_ONLINE
    await bus.publish(Subjects.presence("alice"), online.SerializeToString())
    await bus.settle()
    assert n1.kinds()[-1] == ("presence_changed", ["alice", "bob"])
    assert len(n1.deliveries) == 3
