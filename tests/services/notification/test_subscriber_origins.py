"""The every-region write mode's ordering rules (ADR-026) on a client stream, without servers.

Per channel *and origin region*: strictly increasing ``origin_seq``, no duplicates,
a gap of one origin filled from the region's history (per-origin read), else from
``ALL_<REGION>``, never skipped; other origins are not held up by it. Events of
this mode carry ``seq`` 0, so a stream that fell back to per-channel seq would send
duplicates and events around gaps: every test here would fail.

History is the embedded SQLite store (its per-origin reads, through
CurrentHistory as the hub reads it); the bus is the in-memory fake (the test
plays the Fan-Out Service's deliveries).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from chatmesh.internal.v1 import routing_pb2
from chatmesh.v1 import events_pb2, notification_service_pb2 as pb
from mesh.bus.subjects import EVENTS_STREAM, WRITES_EVERY_REGION, Subjects, all_stream_name
from mesh.core.errors import Unavailable
from mesh.core.events import new_event
from mesh.stores import HistoryStore, open_history
from services.notification.hub import Hub, Subscriber
from tests.bus.fakes import FakeBus
from tests.helpers import eventually
from tests.services.notification.test_subscriber import FakePresence

USER = "bob"
CH = "ch_eu_01jc0000000000000000000000"
OTHER = "ch_asia_01jc000000000000000000000"
ALL = all_stream_name("eu")


class Members:
    """Everyone is a member of every channel (authorization is not what these tests are about)."""

    async def is_member(self, channel_id: str, user_id: str) -> bool:
        return True

    async def channel(self, channel_id: str) -> Any:
        return object()

    async def close(self) -> None:
        return None


def ev(origin: str, n: int, channel: str = CH, hlc: int = 0) -> events_pb2.Event:
    """A message written in ``origin``: the every-region stamps (seq 0, origin_seq ``n``)."""
    event = new_event(channel, seq=0, origin_region=origin, actor="alice")
    event.origin_seq = n
    event.hlc = hlc or (1_000 + n) << 16
    m = event.message_created.message
    m.message_id = f"msg_{channel[-4:]}_{origin}_{n}"
    m.channel_id, m.text, m.origin_seq, m.hlc = channel, f"{origin}#{n}", n, event.hlc
    m.sender_user_id, m.origin_region = "alice", origin
    return event


def left(origin: str, n: int, user: str) -> events_pb2.Event:
    event = new_event(CH, seq=0, origin_region=origin, actor=user)
    event.origin_seq = n
    event.member_left.user_id = user
    return event


def queued(sub: Subscriber) -> list[tuple[str, str, int]]:
    """What the stream's writer will send: (channel, origin, origin_seq); ("close", "", 0) ends."""
    items = []
    while not sub.queue.empty():
        item = sub.queue.get_nowait()
        if isinstance(item, pb.SubscribeResponse):
            e = item.event
            items.append((e.channel_id[:5], e.origin_region, e.origin_seq))
        else:
            items.append(("close", "", 0))
    return items


async def until(cond: Callable[[], object], what: str) -> None:
    async def check() -> bool:
        return bool(cond())

    await eventually(check, timeout=5, what=what)


async def spin(times: int = 20) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


@pytest.fixture
async def bus() -> AsyncIterator[FakeBus]:
    bus = FakeBus()
    # The every-region mode has no EVENTS: the region reads ALL_EU, sourcing every EVENTS_<R>.
    del bus.streams[EVENTS_STREAM]
    bus.add_stream(ALL, ["chatmesh.evt.*.>"])
    yield bus
    await bus.close()


@pytest.fixture
async def history(tmp_path: Path) -> AsyncIterator[HistoryStore]:
    store = await open_history(f"sqlite:///{tmp_path}/history.db")
    yield store
    await store.close()


@pytest.fixture
async def hub(bus: FakeBus, history: HistoryStore) -> AsyncIterator[Hub]:
    hub = Hub(
        bus=bus, history=history, metadata=Members(), presence=FakePresence(),  # type: ignore[arg-type]
        region="eu", instance_id="n1", route_heartbeat=3600, buffer_size=8, replay_page=2,
        catchup_timeout=5, events_stream=ALL, writes=WRITES_EVERY_REGION,
    )  # fmt: skip
    await hub.start()
    yield hub
    await hub.stop()
    assert not bus.handler_errors


def live(hub: Hub, positions: dict[str, dict[str, int]] | None = None) -> Subscriber:
    """A stream past its replay, resumed at ``positions`` (channel -> origin -> origin_seq)."""
    sub = Subscriber(hub, USER, 10)
    sub.replaying = False
    for channel, at in (positions or {}).items():
        sub.origin_state().last[channel] = dict(at)
    return sub


async def test_each_origin_goes_out_in_origin_seq_order_and_duplicates_are_dropped(
    hub: Hub,
) -> None:
    sub = live(hub, {CH: {"eu": 2, "asia": 5}})
    for event in (ev("eu", 3), ev("asia", 6), ev("eu", 3), ev("eu", 2), ev("asia", 6),
                  ev("us-east", 1), ev("eu", 4), ev("asia", 7), ev("us-east", 1)):  # fmt: skip
        sub.offer(event)
    typing = new_event(CH, seq=0, origin_region="asia", actor="alice")
    typing.typing_changed.user_id = "alice"
    sub.offer(typing)  # ephemeral: no origin_seq, always passes

    assert queued(sub) == [
        (CH[:5], "eu", 3), (CH[:5], "asia", 6), (CH[:5], "us-east", 1), (CH[:5], "eu", 4),
        (CH[:5], "asia", 7), (CH[:5], "asia", 0),
    ]  # fmt: skip
    assert sub.origin_state().last == {CH: {"eu": 4, "asia": 7, "us-east": 1}}
    assert not sub.origin_state().pending and not sub.last


async def test_a_channel_seen_for_the_first_time_starts_live_for_each_origin(hub: Hub) -> None:
    sub = live(hub)
    for event in (ev("eu", 5), ev("asia", 9), ev("eu", 6), ev("asia", 9), ev("asia", 10)):
        sub.offer(event)
    assert queued(sub) == [(CH[:5], "eu", 5), (CH[:5], "asia", 9), (CH[:5], "eu", 6),
                           (CH[:5], "asia", 10)]  # fmt: skip


async def test_a_gap_of_one_origin_waits_for_history_and_holds_up_no_other_origin(
    hub: Hub, history: HistoryStore
) -> None:
    await history.apply([ev("eu", 1), ev("eu", 2), ev("asia", 1)])
    sub = live(hub, {CH: {"eu": 1, "asia": 1}, OTHER: {"eu": 4}})
    sub.offer(ev("eu", 4))  # eu 3 is missing, and history lacks it too
    sub.offer(ev("eu", 5))
    sub.offer(ev("asia", 2))  # another origin of the same channel is not held up
    sub.offer(ev("eu", 5, channel=OTHER))  # nor is another channel from the same origin
    await spin()
    # What history has of the gap goes out in order; 4 and 5 wait for 3.
    assert queued(sub) == [(CH[:5], "asia", 2), (OTHER[:5], "eu", 5), (CH[:5], "eu", 2)]
    assert sorted(sub.origin_state().pending[(CH, "eu")]) == [4, 5]

    await history.apply([ev("eu", 3)])
    await until(lambda: not sub.origin_state().pending, "the gap fill")
    assert queued(sub) == [(CH[:5], "eu", 3), (CH[:5], "eu", 4), (CH[:5], "eu", 5)]
    sub.offer(ev("eu", 4))  # the live copy of what the fill sent already
    sub.offer(ev("eu", 6))
    assert queued(sub) == [(CH[:5], "eu", 6)]
    assert sub.closed_with is None


async def test_a_gap_history_lacks_is_filled_from_the_regions_all_stream(
    bus: FakeBus, hub: Hub, history: HistoryStore
) -> None:
    # The worker has applied ALL_EU up to stream seq 1; the stream has the rest,
    # interleaved with another origin and another channel.
    stored = [ev("asia", 1), ev("eu", 1), ev("asia", 2), ev("asia", 1, channel=OTHER),
              ev("asia", 3), ev("asia", 4)]  # fmt: skip
    for i, event in enumerate(stored, 1):
        await bus.publish_event(
            Subjects.origin_channel_events(event.origin_region, event.channel_id),
            event.SerializeToString(), f"m{i}", expected_stream=ALL,
        )  # fmt: skip
    await history.apply(stored[:1], stream_seq=1)
    hub.events = bus
    bus.fail_direct_gets = True  # the stream's leader does not answer yet: nothing skips
    sub = live(hub, {CH: {"asia": 1}})
    sub.offer(ev("asia", 4))
    await asyncio.sleep(0.3)
    assert queued(sub) == [] and sub.closed_with is None
    bus.fail_direct_gets = False
    await until(lambda: not sub.origin_state().fills, "the fill")
    assert queued(sub) == [(CH[:5], "asia", 2), (CH[:5], "asia", 3), (CH[:5], "asia", 4)]


async def test_a_gap_nothing_fills_ends_the_stream_naming_channel_and_origin_range(
    hub: Hub, history: HistoryStore
) -> None:
    hub.gap_timeout = 0.2
    await history.apply([ev("eu", 1)])
    sub = live(hub, {CH: {"eu": 1, "asia": 7}})
    sub.offer(ev("eu", 4))
    sub.offer(ev("asia", 8))  # other origins keep flowing meanwhile
    await until(lambda: sub.closed_with is not None, "the stream ending")
    assert queued(sub) == [(CH[:5], "asia", 8), ("close", "", 0)]  # eu 4 never went around
    err = sub.closed_with
    assert isinstance(err, Unavailable) and err.reason == "STREAM_GAP"
    assert err.metadata == {
        "channel_id": CH, "origin_region": "eu", "last_delivered_origin_seq": "1",
        "first_missing_origin_seq": "2", "last_missing_origin_seq": "3",
    }  # fmt: skip


async def test_in_a_resumed_channel_an_origin_without_a_position_starts_at_one(
    hub: Hub, history: HistoryStore
) -> None:
    await history.apply([ev("asia", 1), ev("asia", 2)])
    sub = live(hub, {CH: {"eu": 3}})  # the client has seen nothing from asia
    sub.offer(ev("asia", 3))
    await until(lambda: not sub.origin_state().fills, "the fill")
    assert queued(sub) == [(CH[:5], "asia", 1), (CH[:5], "asia", 2), (CH[:5], "asia", 3)]


async def deliver(
    bus: FakeBus, instance_seq: int, event: events_pb2.Event, stream_seq: int
) -> None:
    delivery = routing_pb2.Delivery(
        event=event, user_ids=[USER], stream_seq=stream_seq, fanout_epoch="fo.0",
        instance_seq=instance_seq,
    )  # fmt: skip
    await bus.publish(Subjects.delivery("eu", "n1"), delivery.SerializeToString())


async def test_resume_from_origins_replays_each_origin_then_goes_live_without_loss_or_repeat(
    bus: FakeBus, hub: Hub, history: HistoryStore
) -> None:
    await history.apply([ev("eu", 1), ev("eu", 2), ev("eu", 3), ev("asia", 1), ev("asia", 2)])
    stream = hub.subscribe(USER, {}, {CH: {"eu": 1}})
    got: list[tuple[str, int]] = []
    first = await anext(stream)
    got.append((first.event.origin_region, first.event.origin_seq))
    [sub] = hub.users[USER]
    assert sub.replaying
    # While replay reads history, the Fan-Out delivers what history has too, and more.
    for i, event in enumerate((ev("eu", 3), ev("asia", 2), ev("eu", 4), ev("asia", 3)), 1):
        await deliver(bus, i, event, i + 5)
    await bus.settle()
    assert len(sub.held) == 4

    async for item in stream:
        if item.HasField("replay_complete"):
            got.append(("complete", 0))
        else:
            got.append((item.event.origin_region, item.event.origin_seq))
        if len(got) == 7:
            break
    await stream.aclose()
    assert got == [
        ("asia", 1), ("asia", 2), ("eu", 2), ("eu", 3), ("complete", 0), ("eu", 4), ("asia", 3)
    ]  # fmt: skip


async def test_a_hole_in_history_stops_that_origins_replay_until_it_is_filled(
    hub: Hub, history: HistoryStore
) -> None:
    # eu 3 reached history before eu 2 (its origin published them out of order).
    await history.apply([ev("eu", 1), ev("eu", 3)])
    stream = hub.subscribe(USER, {}, {CH: {}})
    first = await anext(stream)
    assert (first.event.origin_region, first.event.origin_seq) == ("eu", 1)
    assert (await anext(stream)).HasField("replay_complete")  # eu 3 did not go around 2
    [sub] = hub.users[USER]
    reading = asyncio.create_task(anext(stream))
    await spin()
    await history.apply([ev("eu", 2)])
    got = [(await reading).event.origin_seq, (await anext(stream)).event.origin_seq]
    await stream.aclose()
    assert got == [2, 3] and sub.closed_with is None


async def test_lost_deliveries_are_swept_per_origin_without_repeats(
    bus: FakeBus, hub: Hub, history: HistoryStore
) -> None:
    sub = live(hub, {CH: {"eu": 1, "asia": 0}})
    hub.users[USER] = [sub]
    await deliver(bus, 1, ev("eu", 2), 2)
    await bus.settle()
    # Delivery 2 (asia 1) was lost; nothing later from asia would reveal it.
    await history.apply([ev("eu", 2), ev("asia", 1), ev("eu", 3)], stream_seq=4)
    await deliver(bus, 3, ev("eu", 3), 4)
    await bus.settle()
    await until(lambda: hub._sweeping is not None and hub._sweeping.done(), "the sweep")
    assert queued(sub) == [(CH[:5], "eu", 2), (CH[:5], "eu", 3), (CH[:5], "asia", 1)]


async def test_the_users_own_leave_ends_the_channel_on_their_stream(hub: Hub) -> None:
    sub = live(hub, {CH: {"eu": 1, "asia": 1}})
    sub.offer(left("asia", 2, "alice"))  # someone else leaving changes nothing
    sub.offer(left("eu", 2, USER))
    assert queued(sub) == [(CH[:5], "asia", 2), (CH[:5], "eu", 2)]
    assert CH not in sub.origin_state().last
    # A later sweep must not send what was said after they left.
    await sub.deliver_origin_history([ev("eu", 3), ev("asia", 3)])
    assert queued(sub) == []
