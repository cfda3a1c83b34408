"""NatsBus against a real nats-server, as the services' NATS users (their permissions apply).

The unit tests of the domain run on the in-memory fake; this is where the fake's
claims about NATS are checked: de-duplicated acked publishes, direct gets (by seq
and last-by-subject), consumer info/creation, and PullConsumer end to end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js.api import StreamSource

from mesh.bus.eventbus import PullConsumer
from mesh.bus.interfaces import Message, StreamMsg
from mesh.bus.natsbus import NatsBus
from mesh.bus.subjects import EVENTS_STREAM, Subjects
from mesh.core.errors import Unavailable
from mesh.deploy.nats import FANOUT_CONSUMER
from mesh.harness.supervisor import Mesh
from mesh.topology import load
from tests.helpers import eventually

pytestmark = pytest.mark.mesh


@pytest.fixture(scope="module")
async def single(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    """A one-node mesh with the EVENTS stream and no services (the stream is the test's)."""
    run_dir: Path = tmp_path_factory.mktemp("natsbus")
    async with Mesh(load("single"), run_dir) as mesh:
        yield mesh


async def _bus(mesh: Mesh, user: str) -> NatsBus:
    return NatsBus(await mesh.nats_client(mesh.topology.primary, user=user))


async def test_publish_event_is_acked_and_deduplicated_by_message_id(single: Mesh) -> None:
    command = await _bus(single, "command")
    subject = Subjects.channel_events("ch_natsbus_dedup")
    first = await command.publish_event(subject, b"one", "natsbus-dedup-1")
    again = await command.publish_event(subject, b"one", "natsbus-dedup-1")
    other = await command.publish_event(subject, b"two", "natsbus-dedup-2")
    assert first.stream == EVENTS_STREAM and not first.duplicate  # nats-py: None, not False
    assert (again.seq, again.duplicate) == (first.seq, True)
    assert other.seq == first.seq + 1

    admin = (await _bus(single, "admin")).nc
    raw = await admin.jsm().get_msg(EVENTS_STREAM, first.seq, direct=True)
    assert raw.headers is not None and raw.headers["Nats-Msg-Id"] == "natsbus-dedup-1"


async def test_publish_event_outside_the_stream_is_unavailable(single: Mesh) -> None:
    admin = await _bus(single, "admin")
    with pytest.raises(Unavailable) as err:
        await admin.publish_event("natsbus.nowhere", b"x", "natsbus-nowhere", timeout=1)
    assert err.value.reason == "BACKEND_UNAVAILABLE"


async def test_the_command_user_reads_a_channels_last_event(single: Mesh) -> None:
    command = await _bus(single, "command")
    subject = Subjects.channel_events("ch_natsbus_last")
    assert await command.get_last_msg(EVENTS_STREAM, subject, timeout=2) is None
    await command.publish_event(subject, b"first", "natsbus-last-1")
    ack = await command.publish_event(subject, b"second", "natsbus-last-2")
    await command.publish_event(Subjects.channel_events("ch_natsbus_else"), b"x", "natsbus-last-3")
    last = await command.get_last_msg(EVENTS_STREAM, subject, timeout=2)
    assert last == StreamMsg(b"second", ack.seq, subject)


async def test_direct_gets_and_the_first_seq(single: Mesh) -> None:
    command = await _bus(single, "command")
    fanout = await _bus(single, "fanout")
    subject = Subjects.channel_events("ch_natsbus_get")
    ack = await command.publish_event(subject, b"payload", "natsbus-get-1")
    assert await fanout.get_msg(EVENTS_STREAM, ack.seq) == StreamMsg(b"payload", ack.seq, subject)
    assert await fanout.get_msg(EVENTS_STREAM, ack.seq + 10_000) is None
    assert 1 <= await fanout.first_seq(EVENTS_STREAM) <= ack.seq


async def test_core_request_reply_and_subscriptions(single: Mesh) -> None:
    admin = await _bus(single, "admin")

    async def answer(msg: Message) -> None:
        await admin.publish(msg.reply, b"pong:" + msg.data)

    sub = await admin.subscribe("natsbus.ping.*", answer, pending_msgs_limit=-1)
    await admin.flush()
    reply = await admin.request("natsbus.ping.1", b"x", timeout=2)
    assert reply.data == b"pong:x"
    await sub.unsubscribe()


async def test_a_pull_consumer_over_natsbus_creates_its_durable_and_consumes_in_order(
    single: Mesh,
) -> None:
    command = await _bus(single, "command")
    fanout = await _bus(single, "fanout")
    subject = Subjects.channel_events("ch_natsbus_consume")
    start = await command.publish_event(subject, b"m0", "natsbus-consume-0")
    got: list[StreamMsg] = []

    async def handle(msgs: list[StreamMsg]) -> None:
        got.extend(m for m in msgs if m.subject == subject)

    # The Fan-Out's own durable: its NATS user may run that consumer and no other
    # (least privilege, tests/harness/test_infra_security.py); no service runs here.
    durable = FANOUT_CONSUMER
    consumer = PullConsumer(fanout, fanout, EVENTS_STREAM, durable, handle, batch=16)
    assert await fanout.ack_floor(EVENTS_STREAM, durable) is None
    await consumer.ensure()
    await consumer.ensure()  # idempotent
    assert await fanout.ack_floor(EVENTS_STREAM, durable) == 0

    task = asyncio.create_task(consumer.run())
    for i in range(1, 4):
        await command.publish_event(subject, f"m{i}".encode(), f"natsbus-consume-{i}")

    async def all_arrived() -> bool:
        return len(got) == 4

    await eventually(all_arrived, timeout=10, what="4 messages")
    consumer.stop()
    await asyncio.wait_for(task, 10)
    assert [m.data for m in got] == [b"m0", b"m1", b"m2", b"m3"]
    assert [m.stream_seq for m in got] == list(range(start.seq, start.seq + 4))

    async def acked() -> bool:
        return await fanout.ack_floor(EVENTS_STREAM, durable) == consumer.last_stream_seq

    await eventually(acked, timeout=10, what="the ack-all")


async def test_messages_after_a_stream_seq_are_read_by_subject_from_the_stream(
    single: Mesh,
) -> None:
    # As the notification user: what a region's gap fill reads from the primary's EVENTS.
    command = await _bus(single, "command")
    a, b = (
        Subjects.channel_events("ch_natsbus_after_a"),
        Subjects.channel_events("ch_natsbus_after_b"),
    )
    acks = []
    for i, subject in enumerate((a, b, a, b, a)):
        acks.append(await command.publish_event(subject, f"m{i}".encode(), f"natsbus-after-{i}"))
    region = single.topology.primary
    notification = await _bus(single, f"notification-{region}")
    got = await notification.get_msgs_after(EVENTS_STREAM, a, acks[1].seq, batch=10)
    assert [(m.stream_seq, m.data) for m in got] == [(acks[2].seq, b"m2"), (acks[4].seq, b"m4")]
    assert [m.stream_seq for m in await notification.get_msgs_after(EVENTS_STREAM, a, 1, batch=2)][
        -1
    ] <= acks[2].seq  # a batch stops at its size
    assert await notification.get_msgs_after(EVENTS_STREAM, a, acks[4].seq + 1) == []


async def test_a_hole_in_a_mirror_is_read_from_the_origins_leader(single: Mesh) -> None:
    """A mirror lacking a message EVENTS holds: the consumer hands it over in place.

    nats-server can leave such a hole in a region's mirror after a WAN cut (the
    eu worker then applied past messages it never had). Here the hole is made by
    deleting one message from a mirror; the consumer skips deleted messages, so
    PullConsumer sees the gap, its direct get on the mirror finds nothing, and
    the leader of EVENTS supplies it.
    """
    command = await _bus(single, "command")
    admin = await _bus(single, "admin")
    subject = Subjects.channel_events("ch_natsbus_hole")
    acks = [
        await command.publish_event(subject, f"h{i}".encode(), f"natsbus-hole-{i}")
        for i in range(5)
    ]
    mirror = "EVENTS_HOLE_TEST"
    jsm = admin.nc.jsm()
    await jsm.add_stream(name=mirror, mirror=StreamSource(name=EVENTS_STREAM), allow_direct=True)

    async def mirrored() -> bool:
        return (await jsm.stream_info(mirror)).state.last_seq >= acks[-1].seq

    await eventually(mirrored, timeout=20, what="the mirror to catch up")
    hole = acks[2].seq
    await jsm.delete_msg(mirror, hole)
    assert await admin.get_msg(mirror, hole) is None

    got: list[StreamMsg] = []

    async def handle(msgs: list[StreamMsg]) -> None:
        got.extend(m for m in msgs if m.subject == subject)

    consumer = PullConsumer(admin, admin, mirror, "hole-test", handle, origin=EVENTS_STREAM)
    await consumer.ensure()
    task = asyncio.create_task(consumer.run())

    async def all_handed() -> bool:
        return len(got) == len(acks)

    try:
        await eventually(all_handed, timeout=20, what="every message of the channel")
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 10)
        await jsm.delete_stream(mirror)
    assert [m.stream_seq for m in got] == [a.seq for a in acks]
    assert [m.data for m in got] == [f"h{i}".encode() for i in range(5)]
    assert consumer.holes_filled == 1
