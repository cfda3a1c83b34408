"""The Command Service in the every-region write mode (ADR-026), two regions, nothing started.

Each region has its own Commands over its own SQLite files (command log,
metadata, history); one in-memory bus holds both regions' streams,
``EVENTS_EU`` and ``EVENTS_US``. :meth:`Region.receive` plays the region's
worker reading ``ALL_<REGION>``: it hands the chosen regions' new stream
messages to the real :class:`~services.worker.service.Projector`, so a test
decides exactly what each region has seen when it writes.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from chatmesh.v1 import channel_pb2, command_service_pb2 as pb, events_pb2
from mesh.bus.interfaces import StreamMsg
from mesh.bus.subjects import EVENTS_STREAM, Subjects, origin_stream_name
from mesh.core.errors import FailedPrecondition, NotFound, PermissionDenied
from mesh.core.hlc import Clock, unpack
from mesh.stores import open_command, open_history, open_metadata
from services.command.service import Commands
from services.worker.service import Projector
from tests.bus.fakes import FakeBus

PUBLIC = channel_pb2.CHANNEL_VISIBILITY_PUBLIC


class Region:
    """One region's Command Service, worker projection and stores."""

    def __init__(self, name: str, bus: FakeBus, tmp: Path, wall_ms: Callable[[], int]) -> None:
        self.name, self.bus, self.dir, self.wall_ms = name, bus, tmp / name, wall_ms
        self.received: dict[str, int] = {}
        bus.add_stream(origin_stream_name(name), [Subjects.origin_events_all(name)])

    async def open(self) -> None:
        self.log = await open_command(f"sqlite:///{self.dir}/command.db")
        self.metadata = await open_metadata(f"sqlite:///{self.dir}/metadata.db", primary_reads=True)
        self.history = await open_history(f"sqlite:///{self.dir}/history.db")
        self.commands = Commands(
            bus=self.bus, events=self.bus, jetstream=self.bus, command_store=self.log,
            metadata=self.metadata, region=self.name, publish_timeout=1,
            writes="every-region", clock=Clock(wall_ms=self.wall_ms),
        )  # fmt: skip
        self.projector = Projector(self.history, self.metadata)

    async def close(self) -> None:
        for store in (self.log, self.metadata, self.history):
            await store.close()

    def written(self) -> list[events_pb2.Event]:
        """This region's events in its own stream, in stream order."""
        return [
            events_pb2.Event.FromString(m.data)
            for m in self.bus.stored(origin_stream_name(self.name))
        ]

    async def receive(self, *regions: Region) -> None:
        """Applies what ``regions`` wrote since the last call (this region's worker)."""
        for region in regions:
            stream = origin_stream_name(region.name)
            new = [
                StreamMsg(m.data, m.seq, m.subject)
                for m in self.bus.stored(stream)
                if m.seq > self.received.get(stream, 0)
            ]
            if new:
                await self.projector.handle(new)
                self.received[stream] = new[-1].stream_seq

    async def send(self, user: str, channel_id: str, text: str, key: str) -> pb.SendMessageResponse:
        req = pb.SendMessageRequest(channel_id=channel_id, text=text, client_msg_id=key)
        return await self.commands.send_message(user, req, self.name)

    async def shown(self, channel_id: str) -> list[tuple[str, str, bool]]:
        """The channel's history as this region shows it: (id, text, deleted)."""
        page = await self.history.ordered_history(channel_id, limit=200)
        return [(m.message_id, m.text, m.deleted) for m in page.messages]


@pytest.fixture
async def regions(tmp_path: Path) -> AsyncIterator[tuple[Region, Region]]:
    bus = FakeBus()
    del bus.streams[EVENTS_STREAM]  # the every-region mode has none
    # us-east's wall clock runs 4 s behind eu's.
    eu = Region("eu", bus, tmp_path, lambda: 1_800_000_005_000)
    us = Region("us-east", bus, tmp_path, lambda: 1_800_000_001_000)
    for region in (eu, us):
        await region.open()
    yield eu, us
    for region in (eu, us):
        await region.close()
    await bus.close()


async def create(region: Region, user: str, members: list[str], **kw: object) -> str:
    req = pb.CreateChannelRequest(name="room", member_user_ids=members, **kw)  # type: ignore[arg-type]
    return (await region.commands.create_channel(user, req, region.name)).channel.channel_id


async def test_events_carry_origin_stamps_on_the_regions_own_stream(
    regions: tuple[Region, Region],
) -> None:
    eu, _ = regions
    channel_id = await create(eu, "alice", ["bob"])
    assert re.fullmatch(r"ch_eu_[0-9a-z]{26}", channel_id)
    sent = await eu.send("alice", channel_id, "hello", "k1")
    await eu.send("bob", channel_id, "hi", "k2")
    events = eu.written()
    assert [e.WhichOneof("payload") for e in events] == [
        "channel_created",
        "message_created",
        "message_created",
    ]
    assert [(e.seq, e.origin_seq, e.origin_region) for e in events] == [
        (0, n, "eu") for n in (1, 2, 3)
    ]
    hlcs = [e.hlc for e in events]
    assert hlcs == sorted(set(hlcs)) and unpack(hlcs[0])[0] == 1_800_000_005_000
    assert [m.subject for m in eu.bus.stored("EVENTS_EU")] == [
        Subjects.origin_channel_events("eu", channel_id)
    ] * 3
    m = sent.message
    assert (m.seq, m.origin_seq, m.hlc, m.origin_region) == (0, 2, hlcs[1], "eu")
    assert events[0].channel_created.channel.last_seq == 0


async def test_a_reply_sorts_after_the_message_it_answers_though_its_clock_is_behind(
    regions: tuple[Region, Region],
) -> None:
    eu, us = regions
    channel_id = await create(eu, "alice", ["bob"])
    asked = await eu.send("alice", channel_id, "lunch?", "q")
    await us.receive(eu)
    answer = await us.send("bob", channel_id, "yes", "a")
    assert answer.message.hlc > asked.message.hlc  # us-east's wall clock alone would sort it first
    await eu.receive(eu, us)
    await us.receive(us)
    expected = [
        (asked.message.message_id, "lunch?", False),
        (answer.message.message_id, "yes", False),
    ]
    assert await eu.shown(channel_id) == await us.shown(channel_id) == expected


async def test_members_edits_and_deletes_of_another_regions_channel_and_message(
    regions: tuple[Region, Region],
) -> None:
    eu, us = regions
    channel_id = await create(eu, "alice", [], visibility=PUBLIC)
    sent = await eu.send("alice", channel_id, "v1", "k1")
    with pytest.raises(NotFound):  # us-east has not heard of the channel yet
        await us.commands.join_channel(
            "bob", pb.JoinChannelRequest(channel_id=channel_id), "us-east"
        )
    await us.receive(eu)
    joined = await us.commands.join_channel(
        "bob", pb.JoinChannelRequest(channel_id=channel_id), "us-east"
    )
    assert list(joined.channel.member_user_ids) == ["alice", "bob"]
    join = us.written()[-1]
    assert dict(join.member_joined.observed) == {"eu": 2} and join.origin_seq == 1
    with pytest.raises(PermissionDenied):
        await us.send("carol", channel_id, "let me in", "c1")

    # alice, now travelling, edits and deletes through us-east what she wrote in eu.
    message_id = sent.message.message_id
    edit = pb.EditMessageRequest(channel_id=channel_id, message_id=message_id, text="v2")
    edited = await us.commands.edit_message("alice", edit, "us-east")
    assert edited.message.text == "v2" and edited.message.origin_region == "eu"
    with pytest.raises(PermissionDenied):  # still only the author
        await us.commands.edit_message("bob", edit, "us-east")
    await us.commands.delete_message(
        "alice", pb.DeleteMessageRequest(channel_id=channel_id, message_id=message_id), "us-east"
    )
    with pytest.raises(FailedPrecondition):
        await us.commands.edit_message("alice", edit, "us-east")
    kinds = [(e.WhichOneof("payload"), e.origin_region, e.origin_seq) for e in us.written()]
    assert kinds == [
        ("member_joined", "us-east", 1),
        ("message_edited", "us-east", 2),
        ("message_deleted", "us-east", 3),
    ]
    assert us.written()[2].message_deleted.message_id == message_id

    await us.commands.leave_channel("bob", pb.LeaveChannelRequest(channel_id=channel_id), "us-east")
    assert dict(us.written()[-1].member_left.observed) == {"eu": 2, "us-east": 3}
    await eu.receive(eu, us)
    await us.receive(us)
    assert await eu.shown(channel_id) == await us.shown(channel_id) == [(message_id, "", True)]
    assert await eu.metadata.members(channel_id) == await us.metadata.members(channel_id)
    assert (await eu.metadata.members(channel_id))[0] == ["alice"]


async def test_a_retry_through_another_region_names_the_same_message_once(
    regions: tuple[Region, Region],
) -> None:
    eu, us = regions
    channel_id = await create(eu, "alice", ["bob"])
    await us.receive(eu)
    first = await eu.send("alice", channel_id, "once", "k")
    again_here = await eu.send("alice", channel_id, "once", "k")
    assert again_here.duplicate and again_here.message == first.message
    # The ack was lost and the client retried through us-east, which has not seen it:
    elsewhere = await us.send("alice", channel_id, "once", "k")
    assert elsewhere.message.message_id == first.message.message_id and not elsewhere.duplicate
    await eu.receive(eu, us)
    await us.receive(eu, us)
    shown = [(first.message.message_id, "once", False)]
    assert await eu.shown(channel_id) == await us.shown(channel_id) == shown
    # A later retry through us-east, which knows the message now, writes nothing.
    written = len(us.written())
    late = await us.send("alice", channel_id, "once", "k")
    assert late.duplicate and late.message.message_id == first.message.message_id
    assert len(us.written()) == written


async def test_a_retried_creation_through_another_region_is_the_same_channel(
    regions: tuple[Region, Region],
) -> None:
    eu, us = regions
    channel_id = await create(eu, "alice", ["bob"], client_request_id="room-1")
    await us.receive(eu)
    again = await create(us, "alice", ["bob"], client_request_id="room-1")
    assert again == channel_id and us.written() == []


async def test_concurrent_edits_and_a_delete_from_two_regions_converge(
    regions: tuple[Region, Region],
) -> None:
    eu, us = regions
    channel_id = await create(eu, "alice", ["bob"])
    kept = (await eu.send("alice", channel_id, "v1", "k1")).message.message_id
    gone = (await eu.send("alice", channel_id, "secret", "k2")).message.message_id
    await us.receive(eu)
    # Cut off from each other: both edit the first message, and us-east deletes the
    # second while eu edits it.
    for region, text in ((eu, "from eu"), (us, "from us")):
        edit = pb.EditMessageRequest(channel_id=channel_id, message_id=kept, text=text)
        await region.commands.edit_message("alice", edit, region.name)
    late_edit = pb.EditMessageRequest(channel_id=channel_id, message_id=gone, text="secret, edited")
    await eu.commands.edit_message("alice", late_edit, "eu")
    delete = pb.DeleteMessageRequest(channel_id=channel_id, message_id=gone)
    await us.commands.delete_message("alice", delete, "us-east")
    await eu.receive(eu, us)
    await us.receive(eu, us)
    # The last writer by (hlc, origin, event id) wins (here both clocks had reached the
    # same hlc, so the origin's name decides); the delete is final.
    edits = [
        e for r in (eu, us) for e in r.written()
        if e.WhichOneof("payload") == "message_edited" and e.message_edited.message.message_id == kept
    ]  # fmt: skip
    last = max(edits, key=lambda e: (e.hlc, e.origin_region, e.event_id))
    expected = [(kept, last.message_edited.message.text, False), (gone, "", True)]
    assert await eu.shown(channel_id) == await us.shown(channel_id) == expected
    for region in (eu, us):
        record = await region.metadata.known_message(gone)
        assert record is not None and record.deleted and record.body == b""


async def test_three_regions_writing_through_a_partition_converge(tmp_path: Path) -> None:
    """Random writes in three regions that hear from each other late and partly, then fully.

    Sends (some retried through another region with the same key), edits and
    deletes of messages written anywhere, joins and leaves; after every region
    has received every stream, all three show the same history and members.
    """
    import random

    from mesh.core.errors import ChatmeshError

    rng = random.Random(15)
    bus = FakeBus()
    del bus.streams[EVENTS_STREAM]
    walls = {"eu": 5_000, "us-east": 1_000, "asia": 9_000}  # skewed clocks, seconds apart
    regions = [
        Region(name, bus, tmp_path, lambda n=name: 1_800_000_000_000 + walls[n])  # type: ignore[misc]
        for name in walls
    ]
    for region in regions:
        await region.open()
    try:
        users = ["alice", "bob", "carol", "dave"]
        channel_id = await create(regions[0], "alice", users[1:3], visibility=PUBLIC)
        for region in regions:
            await region.receive(regions[0])
        sent: list[tuple[str, str]] = []  # (sender, message id)
        for step in range(300):
            for name in walls:
                walls[name] += rng.choice((0, 0, 1, 7))
            region = rng.choice(regions)
            user = rng.choice(users)
            action = rng.random()
            try:
                if action < 0.45:
                    key = f"k{step}"
                    reply = await region.send(user, channel_id, f"{user} says {step}", key)
                    sent.append((user, reply.message.message_id))
                    if rng.random() < 0.2:  # the ack was lost: retried through another region
                        await rng.choice(regions).send(user, channel_id, f"{user} says {step}", key)
                elif action < 0.65 and sent:
                    author, message_id = rng.choice(sent[-3:])  # recent ones: edits collide
                    edit = pb.EditMessageRequest(
                        channel_id=channel_id, message_id=message_id, text=f"edit {step}"
                    )
                    await region.commands.edit_message(author, edit, region.name)
                elif action < 0.7 and sent:
                    author, message_id = rng.choice(sent)
                    delete = pb.DeleteMessageRequest(channel_id=channel_id, message_id=message_id)
                    await region.commands.delete_message(author, delete, region.name)
                elif action < 0.88:
                    await region.commands.join_channel(
                        user, pb.JoinChannelRequest(channel_id=channel_id), region.name
                    )
                else:
                    await region.commands.leave_channel(
                        user, pb.LeaveChannelRequest(channel_id=channel_id), region.name
                    )
            except ChatmeshError:
                pass  # not a member, not known here yet, already deleted...: refused, as a user would see
            # The partition: now and then a region hears some of the others.
            if rng.random() < 0.3:
                listener = rng.choice(regions)
                await listener.receive(*rng.sample(regions, rng.randint(1, 3)))
        assert len(sent) > 20
        for region in regions:
            await region.receive(*regions)
        histories = [await r.shown(channel_id) for r in regions]
        members = [await r.metadata.members(channel_id) for r in regions]
        assert histories[0] == histories[1] == histories[2]
        assert members[0] == members[1] == members[2]
        # Every acknowledged send is there exactly once (retries included).
        assert sorted(m for m, _, _ in histories[0]) == sorted({m for _, m in sent})
        assert any(deleted for _, _, deleted in histories[0])
        assert any(text.startswith("edit") for _, text, _ in histories[0])
    finally:
        for region in regions:
            await region.close()
        await bus.close()


async def test_mark_read_per_origin_converges_in_the_other_region_and_is_capped(
    regions: tuple[Region, Region],
) -> None:
    eu, us = regions
    channel_id = await create(eu, "alice", ["bob"])
    await eu.send("alice", channel_id, "one", "k1")  # eu 2
    await us.receive(eu)
    await us.send("alice", channel_id, "two", "k2")  # us-east 1
    await eu.receive(us)
    # bob names more of eu than eu has (eu 2 is its newest) and a region it never saw.
    req = pb.MarkReadRequest(
        channel_id=channel_id, read_through_origins={"eu": 9, "us-east": 1, "asia": 4}
    )
    resp = await eu.commands.mark_read("bob", req, "eu")
    assert dict(resp.last_read_origins) == {"eu": 2, "us-east": 1}
    assert resp.last_read_seq == 0
    # A lower marker later (another device's older view) does not move it back.
    older = pb.MarkReadRequest(channel_id=channel_id, read_through_origins={"eu": 1})
    resp = await eu.commands.mark_read("bob", older, "eu")
    assert dict(resp.last_read_origins) == {"eu": 2, "us-east": 1}
    markers = [e for e in eu.written() if e.WhichOneof("payload") == "read_marker_updated"]
    assert [dict(e.read_marker_updated.last_read_origins) for e in markers] == [
        {"eu": 2, "us-east": 1}
    ]  # the repeat carried the same marker: one event, de-duplicated by its id
    await us.receive(eu)
    assert await us.metadata.origin_read_marker("bob", channel_id) == {"eu": 2, "us-east": 1}
    # Written in us-east meanwhile: the two merge per origin in both regions.
    await us.send("alice", channel_id, "three", "k3")  # us-east 2
    await us.commands.mark_read(
        "bob",
        pb.MarkReadRequest(channel_id=channel_id, read_through_origins={"us-east": 2}),
        "us-east",
    )
    await eu.receive(us)
    for region in (eu, us):
        assert await region.metadata.origin_read_marker("bob", channel_id) == {
            "eu": 2,
            "us-east": 2,
        }


async def test_mark_read_needs_membership_in_this_mode_too(regions: tuple[Region, Region]) -> None:
    eu, _ = regions
    channel_id = await create(eu, "alice", ["bob"])
    req = pb.MarkReadRequest(channel_id=channel_id, read_through_origins={"eu": 1})
    with pytest.raises(PermissionDenied):
        await eu.commands.mark_read("mallory", req, "eu")
