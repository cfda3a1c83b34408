"""A client stream's ordering rules (``Subscriber``) and the Hub's replay/live seam, without servers.

Per channel: strictly increasing seq, no duplicates, gaps filled from the region's
history before anything beyond them is sent; the user's own leave ends the
channel on their stream; a client that falls behind is cut off with
RESOURCE_EXHAUSTED (SLOW_CONSUMER). History and metadata are embedded SQLite,
the bus is the in-memory fake (the test plays the Fan-Out Service's deliveries).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from chatmesh.internal.v1 import routing_pb2
from chatmesh.v1 import events_pb2, notification_service_pb2 as pb
from mesh.bus.subjects import Subjects
from mesh.core.errors import ResourceExhausted, Unavailable
from mesh.core.events import new_event
from mesh.stores import HistoryStore, open_history, open_metadata
from services.notification.hub import Hub, Subscriber
from tests.bus.fakes import FakeBus
from tests.helpers import eventually

USER = "bob"


class FakePresence:
    """Presence is best effort and not what these tests are about: nobody is ever offline."""

    async def heartbeat(self) -> None:
        return None

    async def stream_opened(self, user: str) -> bool:
        return False

    async def stream_closed(self, user: str) -> bool:
        return False

    async def instance_gone(self, counts: dict[str, int]) -> list[str]:
        return []

    async def close(self) -> None:
        return None


def msg(channel: str, seq: int, text: str = "") -> events_pb2.Event:
    event = new_event(channel, seq=seq, origin_region="us-east", actor="alice")
    m = event.message_created.message
    m.channel_id, m.seq, m.text = channel, seq, text or f"{channel}#{seq}"
    return event


def left(channel: str, seq: int, user: str) -> events_pb2.Event:
    event = new_event(channel, seq=seq, origin_region="us-east", actor=user)
    event.member_left.user_id = user
    return event


def queued(sub: Subscriber) -> list[tuple[str, int]]:
    """What the stream's writer will send, in order ((channel, seq); ("close", 0) for the end)."""
    items = []
    while not sub.queue.empty():
        item = sub.queue.get_nowait()
        if isinstance(item, pb.SubscribeResponse):
            items.append((item.event.channel_id, item.event.seq))
        else:
            items.append(("close", 0))
    return items


async def until(cond: Callable[[], object], what: str) -> None:
    async def check() -> bool:
        return bool(cond())

    await eventually(check, timeout=5, what=what)


@pytest.fixture
async def bus() -> AsyncIterator[FakeBus]:
    bus = FakeBus()
    yield bus
    await bus.close()


@pytest.fixture
async def history(tmp_path: Path) -> AsyncIterator[HistoryStore]:
    store = await open_history(f"sqlite:///{tmp_path}/history.db")
    yield store
    await store.close()


@pytest.fixture
async def hub(bus: FakeBus, history: HistoryStore, tmp_path: Path) -> AsyncIterator[Hub]:
    metadata = await open_metadata(f"sqlite:///{tmp_path}/metadata.db")
    hub = Hub(
        bus=bus, history=history, metadata=metadata, presence=FakePresence(),  # type: ignore[arg-type]
        region="eu", instance_id="n1", route_heartbeat=3600, buffer_size=4, replay_page=2,
        catchup_timeout=5,
    )  # fmt: skip
    await hub.start()
    yield hub
    await hub.stop()
    await metadata.close()
    assert not bus.handler_errors


def live(hub: Hub, capacity: int = 10, last: dict[str, int] | None = None) -> Subscriber:
    """A stream past its replay, having sent ``last`` per channel."""
    sub = Subscriber(hub, USER, capacity)
    sub.replaying = False
    sub.last.update(last or {})
    return sub


async def test_each_channel_goes_out_in_strictly_increasing_seq_and_duplicates_are_dropped(
    hub: Hub,
) -> None:
    sub = live(hub, last={"ch_a": 2, "ch_b": 5})
    for event in (msg("ch_a", 3), msg("ch_b", 6), msg("ch_a", 3), msg("ch_a", 2), msg("ch_b", 6),
                  msg("ch_a", 4), msg("ch_b", 7)):  # fmt: skip
        sub.offer(event)
    typing = new_event("ch_a", seq=0, origin_region="eu", actor="alice")
    typing.typing_changed.user_id = "alice"
    sub.offer(typing)  # ephemeral: no seq, always passes

    assert queued(sub) == [("ch_a", 3), ("ch_b", 6), ("ch_a", 4), ("ch_b", 7), ("ch_a", 0)]
    assert sub.last == {"ch_a": 4, "ch_b": 7} and not sub.pending


async def test_a_channel_seen_for_the_first_time_starts_where_its_events_start(hub: Hub) -> None:
    sub = live(hub)
    sub.offer(msg("ch_new", 5))
    sub.offer(msg("ch_new", 6))
    assert queued(sub) == [("ch_new", 5), ("ch_new", 6)]


async def test_events_beyond_a_gap_wait_until_history_fills_it(
    hub: Hub, history: HistoryStore
) -> None:
    await history.apply([msg("ch_a", 1), msg("ch_a", 2)], stream_seq=2)
    sub = live(hub, last={"ch_a": 1, "ch_b": 1})
    sub.offer(msg("ch_a", 4))  # 3 is missing: not in history yet either
    sub.offer(msg("ch_a", 5))
    sub.offer(msg("ch_b", 2))  # another channel is not held up
    for _ in range(20):
        await asyncio.sleep(0)
    # What history has of the gap goes out in order; 4 and 5 wait for 3.
    assert queued(sub) == [("ch_b", 2), ("ch_a", 2)]
    assert sorted(sub.pending["ch_a"]) == [4, 5]

    await history.apply([msg("ch_a", 3), msg("ch_a", 4)], stream_seq=4)
    await until(lambda: not sub.pending, "the gap fill")
    assert queued(sub) == [("ch_a", 3), ("ch_a", 4), ("ch_a", 5)]
    sub.offer(msg("ch_a", 4))  # the live copy of what history already sent
    sub.offer(msg("ch_a", 6))
    assert queued(sub) == [("ch_a", 6)]


async def test_events_beyond_a_second_gap_wait_for_that_gap_too(
    hub: Hub, history: HistoryStore
) -> None:
    await history.apply([msg("ch_a", s) for s in (1, 2, 3)], stream_seq=3)
    sub = live(hub, last={"ch_a": 1})
    sub.offer(msg("ch_a", 4))
    sub.offer(msg("ch_a", 6))  # 5 is missing as well
    await until(lambda: sorted(sub.pending.get("ch_a", {})) == [6], "the first gap filled")
    for _ in range(20):
        await asyncio.sleep(0)
    assert queued(sub) == [("ch_a", 2), ("ch_a", 3), ("ch_a", 4)]

    await history.apply([msg("ch_a", 5)], stream_seq=5)
    await until(lambda: not sub.pending, "the second gap filled")
    assert queued(sub) == [("ch_a", 5), ("ch_a", 6)]


async def test_a_catchup_waiting_for_the_client_does_not_resend_what_live_sent_meanwhile(
    hub: Hub,
) -> None:
    sub = live(hub, capacity=2, last={"ch_a": 1, "ch_b": 0})
    sub.offer(msg("ch_b", 1))
    sub.offer(msg("ch_b", 2))  # the buffer is full
    sweep = asyncio.create_task(sub.deliver_history([msg("ch_a", 2), msg("ch_a", 3)]))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not sweep.done(), "the catch-up waits for room"

    sent = []

    def client_reads_one() -> None:
        item = sub.queue.get_nowait()
        assert isinstance(item, pb.SubscribeResponse)
        sent.append((item.event.channel_id, item.event.seq))
        sub.space.set()

    client_reads_one()
    sub.offer(msg("ch_a", 2))  # live delivery takes the room first
    for _ in range(5):
        await asyncio.sleep(0)
    client_reads_one()
    await asyncio.wait_for(sweep, 5)
    sent += queued(sub)
    assert sent == [("ch_b", 1), ("ch_b", 2), ("ch_a", 2), ("ch_a", 3)]
    assert sub.closed_with is None


async def test_a_gap_nothing_fills_ends_the_stream_naming_it_and_never_skips(
    hub: Hub, history: HistoryStore
) -> None:
    hub.gap_timeout = 0.2
    await history.apply([msg("ch_a", 1)], stream_seq=1)
    sub = live(hub, last={"ch_a": 1, "ch_b": 7})
    sub.offer(msg("ch_a", 4))
    sub.offer(msg("ch_b", 8))  # other channels keep flowing meanwhile
    await until(lambda: sub.closed_with is not None, "the stream ending")
    assert queued(sub) == [("ch_b", 8), ("close", 0)]  # ch_a 4 never went out around the gap
    assert sub.last["ch_a"] == 1
    err = sub.closed_with
    assert isinstance(err, Unavailable) and err.reason == "STREAM_GAP"
    assert err.metadata == {
        "channel_id": "ch_a", "last_delivered_seq": "1", "first_missing_seq": "2",
        "last_missing_seq": "3",
    }  # fmt: skip


async def test_a_gap_history_lacks_is_filled_from_the_primary_events_stream(
    bus: FakeBus, hub: Hub, history: HistoryStore
) -> None:
    # History (fed by the region's lagging mirror) has ch_a up to 1 (stream seq 1);
    # the primary's EVENTS has everything, interleaved with another channel.
    await history.apply([msg("ch_a", 1)], stream_seq=1)
    for seq, event in enumerate((msg("ch_a", 1), msg("ch_b", 1), msg("ch_a", 2), msg("ch_b", 2),
                                 msg("ch_a", 3), msg("ch_a", 4)), 1):  # fmt: skip
        await bus.publish_event(
            Subjects.channel_events(event.channel_id), event.SerializeToString(), f"m{seq}"
        )
    hub.events = bus
    bus.fail_direct_gets = True  # the gateway is still cut: the gap waits, nothing skips
    sub = live(hub, last={"ch_a": 1})
    sub.offer(msg("ch_a", 4))
    await asyncio.sleep(0.3)
    assert queued(sub) == [] and sub.closed_with is None
    bus.fail_direct_gets = False  # healed
    await until(lambda: "ch_a" not in sub.fills, "the fill")
    assert queued(sub) == [("ch_a", 2), ("ch_a", 3), ("ch_a", 4)]
    assert sub.closed_with is None


async def test_replay_and_live_events_meet_without_loss_or_repeat(
    bus: FakeBus, hub: Hub, history: HistoryStore
) -> None:
    created = new_event("ch_a", seq=1, origin_region="us-east", actor="alice")
    created.channel_created.channel.channel_id = "ch_a"
    created.channel_created.channel.member_user_ids.extend(["alice", USER])
    await hub.metadata.apply(created)
    await history.apply([created, msg("ch_a", 2), msg("ch_a", 3)], stream_seq=3)

    stream = hub.subscribe(USER, {"ch_a": 0})
    first = await anext(stream)
    assert first.event.seq == 1
    [sub] = hub.users[USER]
    assert sub.replaying
    # While replay reads history, the Fan-Out Service delivers 3 (which history has too), 4 and 5.
    for instance_seq, event in enumerate((msg("ch_a", 3), msg("ch_a", 4), msg("ch_a", 5)), 1):
        delivery = routing_pb2.Delivery(
            event=event, user_ids=[USER], stream_seq=instance_seq + 2, fanout_epoch="fo.0",
            instance_seq=instance_seq,
        )  # fmt: skip
        await bus.publish(Subjects.delivery("eu", "n1"), delivery.SerializeToString())
    await bus.settle()
    assert [e.seq for e in sub.held] == [3, 4, 5]

    got = []
    async for item in stream:
        got.append(
            ("complete", 0) if item.HasField("replay_complete") else ("event", item.event.seq)
        )
        if len(got) == 5:
            break
    await stream.aclose()
    assert got == [("event", 2), ("event", 3), ("complete", 0), ("event", 4), ("event", 5)]
    assert USER not in hub.users  # the closed stream detached


async def test_the_users_own_leave_ends_the_channel_on_their_stream(hub: Hub) -> None:
    sub = live(hub, last={"ch_a": 1, "ch_b": 1})
    sub.offer(left("ch_b", 2, "alice"))  # someone else leaving changes nothing
    sub.offer(left("ch_a", 2, USER))
    assert queued(sub) == [("ch_b", 2), ("ch_a", 2)]
    assert "ch_a" not in sub.last and sub.last["ch_b"] == 2
    # A later sweep must not send what was said after they left.
    await sub.deliver_history([msg("ch_a", 3), msg("ch_a", 4), msg("ch_b", 3)])
    assert queued(sub) == [("ch_b", 3)]


async def test_a_client_that_falls_behind_is_cut_off_with_slow_consumer(
    hub: Hub, history: HistoryStore
) -> None:
    created = new_event("ch_a", seq=1, origin_region="us-east", actor="alice")
    created.channel_created.channel.channel_id = "ch_a"
    created.channel_created.channel.member_user_ids.extend(["alice", USER])
    await hub.metadata.apply(created)
    await history.apply([created], stream_seq=1)
    stream = hub.subscribe(USER, {"ch_a": 1})
    assert (await anext(stream)).HasField("replay_complete")
    [sub] = hub.users[USER]
    reading = asyncio.create_task(anext(stream))  # the client reads once more, then stalls
    await until(lambda: not sub.replaying, "live mode")
    for seq in range(2, 9):  # seven events at once; the buffer holds four
        sub.offer(msg("ch_a", seq))

    got = [(await reading).event.seq]
    with pytest.raises(ResourceExhausted) as err:
        async for item in stream:
            got.append(item.event.seq)
    assert (err.value.code, err.value.reason) == ("RESOURCE_EXHAUSTED", "SLOW_CONSUMER")
    assert got == [2, 3, 4, 5]  # what was queued still arrives, in order, then the end
    assert USER not in hub.users


async def test_too_many_events_during_replay_end_the_stream(hub: Hub) -> None:
    sub = Subscriber(hub, USER, 2)
    for seq in (1, 2, 3):
        sub.offer(msg("ch_a", seq))
    assert isinstance(sub.closed_with, ResourceExhausted)
    assert sub.closed_with.reason == "SLOW_CONSUMER" and queued(sub) == [("close", 0)]


async def test_lost_deliveries_are_swept_from_history_without_repeats(
    bus: FakeBus, hub: Hub, history: HistoryStore
) -> None:
    sub = live(hub, last={"ch_a": 1, "ch_b": 0})
    hub.users[USER] = [sub]

    async def deliver(instance_seq: int, event: events_pb2.Event, stream_seq: int) -> None:
        delivery = routing_pb2.Delivery(
            event=event, user_ids=[USER], stream_seq=stream_seq, fanout_epoch="fo.0",
            instance_seq=instance_seq,
        )  # fmt: skip
        await bus.publish(Subjects.delivery("eu", "n1"), delivery.SerializeToString())
        await bus.settle()

    await deliver(1, msg("ch_a", 2), 2)
    # Delivery 2 (ch_a 3) was lost on the link; nothing later in ch_a would reveal the gap.
    await history.apply([msg("ch_a", 2), msg("ch_a", 3), msg("ch_b", 1)], stream_seq=4)
    await deliver(3, msg("ch_b", 1), 4)
    await until(lambda: hub._sweeping is not None and hub._sweeping.done(), "the sweep")
    assert queued(sub) == [("ch_a", 2), ("ch_b", 1), ("ch_a", 3)]
    assert hub.expected_seq == 4


async def test_a_held_event_the_fill_sent_meanwhile_is_dropped_not_waited_for(
    hub: Hub, history: HistoryStore
) -> None:
    await history.apply([msg("ch_a", s) for s in (1, 2, 3, 4)], stream_seq=4)
    gate, reads = asyncio.Event(), []
    read_gap = hub.read_gap

    async def gated(sub: Subscriber, channel: str, target_seq: int) -> bool:
        reads.append(target_seq)
        if len(reads) > 10:
            raise RuntimeError("the fill keeps reading a range it already has")
        await gate.wait()
        return await read_gap(sub, channel, target_seq)

    hub.read_gap = gated  # type: ignore[method-assign]
    sub = live(hub, last={"ch_a": 1})
    sub.offer(msg("ch_a", 5))  # 2..4 missing: a fill starts
    for _ in range(5):
        await asyncio.sleep(0)
    assert reads == [4], "the fill is reading history"
    sub.offer(msg("ch_a", 3))  # the live copy of what the fill is about to send: held meanwhile
    assert sorted(sub.pending["ch_a"]) == [3, 5]

    gate.set()
    await until(lambda: "ch_a" not in sub.fills, "the fill")
    assert sub.closed_with is None and not sub.pending and reads == [4]
    assert queued(sub) == [("ch_a", 2), ("ch_a", 3), ("ch_a", 4), ("ch_a", 5)]
    sub.offer(msg("ch_a", 6))  # the channel flows again, not held behind a stale entry
    assert queued(sub) == [("ch_a", 6)]
