"""A region's Fan-Out Service in the every-region write mode (ADR-026), on the in-memory bus.

It reads ``ALL_<REGION>``, takes routes from its own region's notification
instances only (so it delivers to them only), delivers typing from any region
to local streams, and decides membership by the convergence rules (events of
different origins arrive in any order and carry no channel seq).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chatmesh.internal.v1 import presence_pb2 as internal_presence_pb2, routing_pb2
from chatmesh.v1 import events_pb2, presence_pb2
from mesh.bus.subjects import EVENTS_STREAM, WRITES_EVERY_REGION, Subjects, all_stream_name
from mesh.core.events import new_event
from mesh.stores import open_metadata
from services.fanout.service import Fanout
from tests.bus.fakes import FakeBus
from tests.services.fanout.test_fanout_unit import FakeInstance, until

ALL = all_stream_name("eu")
CH = "ch_asia_01jc000000000000000000000"


@pytest.fixture
async def bus() -> AsyncIterator[FakeBus]:
    bus = FakeBus()
    del bus.streams[EVENTS_STREAM]
    bus.add_stream(ALL, ["chatmesh.evt.*.>"])
    yield bus
    await bus.close()


@pytest.fixture
async def fanout(bus: FakeBus, tmp_path: Path) -> AsyncIterator[Fanout]:
    metadata = await open_metadata(f"sqlite:///{tmp_path}/metadata.db")
    fanout = Fanout(
        bus=bus, jetstream=bus, metadata=metadata, region="eu", instance_timeout=3600,
        resync_grace=0, stream=ALL, writes=WRITES_EVERY_REGION, presence_index=True,
    )  # fmt: skip
    await fanout.start()
    yield fanout
    await fanout.stop()
    await metadata.close()
    assert not bus.handler_errors


class Writes:
    """Events as the regions write them (seq 0, per-origin origin_seq), delivered from ALL_EU."""

    def __init__(self, bus: FakeBus, fanout: Fanout) -> None:
        self.bus = bus
        self.fanout = fanout
        self.origin_seqs: dict[str, int] = {}
        self.hlc = 1_000 << 16

    def stamp(self, origin: str, actor: str) -> events_pb2.Event:
        self.origin_seqs[origin] = self.origin_seqs.get(origin, 0) + 1
        self.hlc += 1
        event = new_event(CH, seq=0, origin_region=origin, actor=actor)
        event.origin_seq, event.hlc = self.origin_seqs[origin], self.hlc
        return event

    async def send(self, event: events_pb2.Event) -> None:
        subject = Subjects.origin_channel_events(event.origin_region, CH)
        ack = await self.bus.publish_event(
            subject, event.SerializeToString(), event.event_id, expected_stream=ALL
        )
        await self.bus.deliver(ALL, "fanout", [ack.seq])
        await until(lambda: self.fanout.consumer.last_stream_seq == ack.seq, f"seq {ack.seq}")
        await self.bus.settle()

    async def created(self, origin: str, members: list[str]) -> None:
        event = self.stamp(origin, members[0])
        event.channel_created.channel.channel_id = CH
        event.channel_created.channel.member_user_ids.extend(members)
        await self.send(event)

    async def message(self, origin: str, text: str = "hi") -> None:
        event = self.stamp(origin, "alice")
        event.message_created.message.channel_id = CH
        event.message_created.message.text = text
        await self.send(event)

    def member(
        self, origin: str, user: str, *, joined: bool, observed: dict[str, int] | None = None
    ) -> events_pb2.Event:
        event = self.stamp(origin, user)
        change = event.member_joined if joined else event.member_left
        change.user_id = user
        change.observed.update(observed or {})
        return event


@pytest.fixture
def writes(bus: FakeBus, fanout: Fanout) -> Writes:
    return Writes(bus, fanout)


async def test_only_this_regions_instances_are_routed_to(
    bus: FakeBus, fanout: Fanout, writes: Writes
) -> None:
    local = await FakeInstance(bus, "n-eu-1", "eu").listen()
    remote = await FakeInstance(bus, "n-us-1", "us-east").listen()
    assert not (await local.snapshot(1, ["bob"])).resync_needed
    # Another region's instance is not ours to serve: its snapshot is overheard, not answered.
    snap = routing_pb2.RouteSnapshot(instance_id="n-us-1", region="us-east", version=1,
                                     user_ids=["carol"])  # fmt: skip
    await overhear(bus, Subjects.route_snapshot("us-east", "n-us-1"), snap)
    assert bus.published_on("_INBOX.theirs") == []
    await writes.created("asia", ["alice", "bob", "carol"])
    await writes.message("us-east")
    await writes.message("eu")
    assert local.kinds() == [("channel_created", ["bob"])] + [("message_created", ["bob"])] * 2
    assert remote.deliveries == [] and [i.region for i in fanout.table.instances()] == ["eu"]
    assert [d.instance_seq for d in local.deliveries] == [1, 2, 3]


async def test_typing_from_any_region_reaches_local_streams(
    bus: FakeBus, fanout: Fanout, writes: Writes
) -> None:
    n1 = await FakeInstance(bus, "n1", "eu").listen()
    await n1.snapshot(1, ["bob"])
    await writes.created("asia", ["alice", "bob"])
    typing = new_event(CH, seq=0, origin_region="asia", actor="alice")
    typing.typing_changed.user_id = "alice"
    await bus.publish(Subjects.typing(CH), typing.SerializeToString())
    await bus.settle()
    assert n1.kinds()[-1] == ("typing_changed", ["bob"])


async def test_a_join_arriving_before_the_channels_creation_is_kept(
    bus: FakeBus, fanout: Fanout, writes: Writes
) -> None:
    n1 = await FakeInstance(bus, "n1", "eu").listen()
    await n1.snapshot(1, ["bob", "carol"])
    created = writes.stamp("asia", "alice")
    created.channel_created.channel.channel_id = CH
    created.channel_created.channel.member_user_ids.extend(["alice", "bob"])
    # carol joined in us-east after it had the creation; the link from asia is slower.
    await writes.send(writes.member("us-east", "carol", joined=True, observed={"asia": 1}))
    await writes.send(created)
    await writes.message("eu")
    assert n1.kinds()[-1] == ("message_created", ["bob", "carol"])


async def test_a_leave_concurrent_with_a_rejoin_wins_and_a_later_rejoin_readds(
    bus: FakeBus, fanout: Fanout, writes: Writes
) -> None:
    n1 = await FakeInstance(bus, "n1", "eu").listen()
    await n1.snapshot(1, ["bob"])
    await writes.created("asia", ["alice", "bob"])
    # bob is kicked in asia (asia 2) while, in us-east, a join of bob is written
    # that has not seen the kick: remove wins, whichever arrives first.
    rejoin = writes.member("us-east", "bob", joined=True, observed={"asia": 1})
    kick = writes.member("asia", "bob", joined=False, observed={"asia": 1})
    await writes.send(rejoin)
    await writes.send(kick)
    await writes.message("eu")
    assert [k for k, _ in n1.kinds()] == ["channel_created", "member_joined", "member_left"]
    assert "bob" not in fanout.table.members(CH)
    # A join written after its region applied the kick re-adds him.
    await writes.send(writes.member("eu", "bob", joined=True, observed={"asia": 2, "us-east": 1}))
    await writes.message("asia")
    assert n1.kinds()[-2:] == [("member_joined", ["bob"]), ("message_created", ["bob"])]


def presence_of(n: FakeInstance) -> list[tuple[str, int, list[str]]]:
    """(user, status, recipients) of the presence deliveries an instance got."""
    return [
        (d.event.presence_changed.presence.user_id, d.event.presence_changed.presence.status,
         sorted(d.user_ids))
        for d in n.deliveries
        if d.event.WhichOneof("payload") == "presence_changed"
    ]  # fmt: skip


async def overhear(bus: FakeBus, subject: str, message: Any) -> None:
    """Another region's instance talking to its own Fan-Out: heard here, never answered here."""
    await bus.publish(subject, message.SerializeToString(), reply="_INBOX.theirs")
    await bus.settle()


async def test_presence_converges_after_another_region_is_cut_off_and_heals(
    bus: FakeBus, fanout: Fanout, writes: Writes
) -> None:
    n1 = await FakeInstance(bus, "n-eu-1", "eu").listen()
    await n1.snapshot(1, ["bob"])
    await writes.created("asia", ["alice", "bob"])
    snap = routing_pb2.RouteSnapshot(instance_id="n-us-1", region="us-east", version=3,
                                     user_ids=["alice"])  # fmt: skip
    await overhear(bus, Subjects.route_snapshot("us-east", "n-us-1"), snap)
    assert presence_of(n1) == []  # first sight: alice's own region announced her already
    assert bus.published_on("_INBOX.theirs") == []  # the us-east Fan-Out answers, not this one
    assert [r.region for r in fanout.remote.where("alice")] == ["us-east"]

    # us-east is cut off: its instance falls silent and alice shows offline here.
    later = time.monotonic() + 2 * fanout.instance_timeout
    slot = fanout.table.slot_of("n-eu-1")
    assert slot is not None
    fanout.table.instance(slot).last_seen = later  # the local instance keeps beating
    await fanout.expire(later)
    await bus.settle()
    assert presence_of(n1) == [("alice", presence_pb2.PRESENCE_STATUS_OFFLINE, ["bob"])]

    # Healed: its heartbeat is news here, so every instance is asked for its routes;
    # the snapshot shows alice still online.
    hb = routing_pb2.InstanceHeartbeat(instance_id="n-us-1", region="us-east", version=3)
    resyncs = len(bus.published_on(Subjects.ROUTE_RESYNC))
    await overhear(bus, Subjects.route_heartbeat("us-east", "n-us-1"), hb)
    assert len(bus.published_on(Subjects.ROUTE_RESYNC)) == resyncs + 1
    await overhear(bus, Subjects.route_snapshot("us-east", "n-us-1"), snap)
    assert presence_of(n1)[-1] == ("alice", presence_pb2.PRESENCE_STATUS_ONLINE, ["bob"])


async def test_a_user_dropped_here_but_online_in_another_region_is_not_announced_offline(
    bus: FakeBus, fanout: Fanout, writes: Writes
) -> None:
    n1 = await FakeInstance(bus, "n-eu-1", "eu").listen()
    n2 = await FakeInstance(bus, "n-eu-2", "eu").listen()
    await n1.snapshot(1, ["bob"])
    await n2.snapshot(1, ["dave"])
    await writes.created("asia", ["bob", "dave"])
    update = routing_pb2.RouteUpdate(instance_id="n-us-1", region="us-east", version=1,
                                     added_user_ids=["dave"])  # fmt: skip
    await overhear(bus, Subjects.route_update("us-east", "n-us-1"), update)
    slot = fanout.table.slot_of("n-eu-2")
    assert slot is not None
    fanout.table.instance(slot).last_seen = time.monotonic() - 2 * fanout.instance_timeout
    fanout.remote.heartbeat("n-us-1", "us-east", 1, now=time.monotonic() + 10)
    assert await fanout.expire(time.monotonic()) == []
    await bus.settle()
    assert presence_of(n1) == []


async def test_without_the_presence_index_only_this_regions_route_subjects_are_heard(
    bus: FakeBus, tmp_path: Path
) -> None:
    # The every-region NATS permissions confine fanout-<region> to its region's routes.
    metadata = await open_metadata(f"sqlite:///{tmp_path}/other.db")
    confined = Fanout(
        bus=bus, jetstream=bus, metadata=metadata, region="asia", resync_grace=0,
        stream=all_stream_name("asia"), writes=WRITES_EVERY_REGION, consumer_name="asia",
    )  # fmt: skip
    before = len(bus.subs)
    await confined.start()
    heard = [s.subject for s in bus.subs[before:] if s.subject.startswith("chatmesh.route")]
    await confined.stop()
    await metadata.close()
    assert sorted(heard) == [
        "chatmesh.route.hb.asia.>", "chatmesh.route.snapshot.asia.>", "chatmesh.route.update.asia.>"
    ]  # fmt: skip


# -- presence snapshots between regions (ADR-026) -------------------------------------


async def presence_snapshot(
    bus: FakeBus, region: str, seq: int, users: list[str], *, epoch: str = "fo_x"
) -> None:
    """Another region's Fan-Out announcing its online users."""
    snap = internal_presence_pb2.PresenceSnapshot(
        region=region, epoch=epoch, seq=seq, taken_at_ms=seq * 1000,
        users=[internal_presence_pb2.OnlineUser(user_id=u, online_since_ms=1) for u in users],
    )  # fmt: skip
    await bus.publish(Subjects.presence_snapshot(region), snap.SerializeToString())
    await bus.settle()


async def presence_event(bus: FakeBus, user: str, origin: str, *, online: bool) -> None:
    """A notification instance of ``origin`` telling every region that ``user`` changed."""
    event = new_event("", seq=0, origin_region=origin, actor=user)
    event.presence_changed.presence.user_id = user
    event.presence_changed.presence.status = (
        presence_pb2.PRESENCE_STATUS_ONLINE if online else presence_pb2.PRESENCE_STATUS_OFFLINE
    )
    await bus.publish(Subjects.presence(user), event.SerializeToString())
    await bus.settle()


async def test_the_fanout_publishes_its_regions_online_users(bus: FakeBus, fanout: Fanout) -> None:
    n1 = await FakeInstance(bus, "n-eu-1", "eu").listen()
    await n1.snapshot(1, ["bob", "amy"])

    def users() -> list[list[str]]:
        snaps = [
            internal_presence_pb2.PresenceSnapshot.FromString(d)
            for d in bus.published_on(Subjects.presence_snapshot("eu"))
        ]
        return [[u.user_id for u in s.users] for s in snaps if s.region == "eu"]

    await until(lambda: ["amy", "bob"] in users(), "a snapshot with amy and bob")
    snaps = [
        internal_presence_pb2.PresenceSnapshot.FromString(d)
        for d in bus.published_on(Subjects.presence_snapshot("eu"))
    ]
    assert [s.seq for s in snaps] == list(range(1, len(snaps) + 1))  # numbered, no gaps
    assert {s.epoch for s in snaps} == {fanout.epoch}


async def test_an_offline_event_is_held_back_while_another_region_has_the_user_online(
    bus: FakeBus, fanout: Fanout, writes: Writes
) -> None:
    n1 = await FakeInstance(bus, "n-eu-1", "eu").listen()
    await n1.snapshot(1, ["bob"])
    await writes.created("asia", ["alice", "bob"])
    await presence_snapshot(bus, "us-east", 1, ["alice"])
    # alice closed her last asia stream; she is still online in us-east.
    await presence_event(bus, "alice", "asia", online=False)
    assert presence_of(n1) == []
    # us-east's next snapshot no longer has her (its own offline event tells bob).
    await presence_snapshot(bus, "us-east", 2, [])
    assert presence_of(n1) == []  # in sequence: the live events carry the changes
    await presence_event(bus, "alice", "us-east", online=False)
    assert presence_of(n1) == [("alice", presence_pb2.PRESENCE_STATUS_OFFLINE, ["bob"])]


async def test_a_region_silent_past_the_timeout_goes_offline_here_and_its_heal_comes_back(
    bus: FakeBus, fanout: Fanout, writes: Writes
) -> None:
    n1 = await FakeInstance(bus, "n-eu-1", "eu").listen()
    await n1.snapshot(1, ["bob"])
    await writes.created("asia", ["alice", "bob"])
    await presence_snapshot(bus, "asia", 1, ["alice"])
    assert presence_of(n1) == []  # first sight: asia announced her itself
    slot = fanout.table.slot_of("n-eu-1")
    assert slot is not None
    later = time.monotonic() + 2 * fanout.presence_view.timeout
    fanout.table.instance(slot).last_seen = later  # the local instance keeps beating
    await fanout.expire(later)
    await bus.settle()
    assert presence_of(n1) == [("alice", presence_pb2.PRESENCE_STATUS_OFFLINE, ["bob"])]
    assert fanout.presence_view.regions_of("alice") == []
    # Healed: asia's snapshots go on from where they are (a gap here).
    await presence_snapshot(bus, "asia", 40, ["alice"])
    assert presence_of(n1)[-1] == ("alice", presence_pb2.PRESENCE_STATUS_ONLINE, ["bob"])
