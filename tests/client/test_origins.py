"""The client in the every-region write mode (ADR-026): per-origin positions and display order.

Positions per channel and origin region (no I/O), a Subscription resuming with
``resume_from_origins`` against the scripted server, and :class:`Timeline`'s
(hlc, origin_region, message_id) order with late inserts. Events of this mode
carry ``seq`` 0: a client that kept positions by seq would resume with nothing
and yield duplicates, and these tests would fail.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from chatmesh.v1 import events_pb2, message_pb2, notification_service_pb2 as npb
from mesh.client import ChatClient, ResumePositions, RetryPolicy, Timeline, Verdict
from mesh.core.errors import Unavailable
from tests.client.conftest import HANG, Connection, Server, replay_complete

Serve = Callable[..., Awaitable[Server]]
FAST = RetryPolicy(initial_backoff=0.001, max_backoff=0.01, budget=20, attempt_timeout=5)
CH = "ch_eu_" + "a" * 26
OTHER = "ch_asia_" + "b" * 26


def ev(origin: str, n: int, channel: str = CH, hlc: int = 0, mid: str = "") -> events_pb2.Event:
    hlc = hlc or (1_000 + n) << 16
    mid = mid or f"msg_{origin}_{n}"
    message = message_pb2.Message(
        message_id=mid, channel_id=channel, text=f"{origin}#{n}", origin_region=origin,
        origin_seq=n, hlc=hlc,
    )  # fmt: skip
    return events_pb2.Event(
        event_id=f"evt_{origin}_{n}_{channel[-1]}", channel_id=channel, origin_region=origin,
        origin_seq=n, hlc=hlc, message_created=events_pb2.MessageCreated(message=message),
    )  # fmt: skip


def item(event: events_pb2.Event) -> npb.SubscribeResponse:
    return npb.SubscribeResponse(event=event)


# -- positions -------------------------------------------------------------------------


def test_positions_are_kept_per_channel_and_origin() -> None:
    positions = ResumePositions(origins={CH: {"eu": 2}})
    verdicts = [
        positions.admit_origin(CH, o, n)
        for o, n in [("eu", 2), ("eu", 3), ("asia", 1), ("asia", 1), ("us-east", 2)]
    ]
    assert verdicts == [Verdict.DUPLICATE, Verdict.NEW, Verdict.NEW, Verdict.DUPLICATE,
                        Verdict.GAP]  # fmt: skip
    assert positions.origin_snapshot() == {CH: {"eu": 3, "asia": 1, "us-east": 2}}
    assert positions.snapshot() == {}  # seq positions: none in this mode


def test_a_channel_started_live_takes_each_origins_first_event_until_the_next_connection() -> None:
    positions = ResumePositions()
    assert positions.admit_origin(OTHER, "asia", 7) is Verdict.NEW
    assert positions.admit_origin(OTHER, "eu", 4) is Verdict.NEW  # a new origin, live
    positions.origin_snapshot()  # a new connection resumes the channel from these positions
    assert positions.admit_origin(OTHER, "us-east", 2) is Verdict.GAP  # replayed from 1
    assert positions.admit_origin(OTHER, "asia", 7) is Verdict.DUPLICATE


def test_ephemeral_events_have_no_origin_position() -> None:
    positions = ResumePositions()
    assert positions.admit_origin(CH, "eu", 0) is Verdict.UNPOSITIONED
    assert positions.origin_snapshot() == {} and len(positions) == 0


# -- the subscription ---------------------------------------------------------------------


async def _collect(subscription: Any, count: int) -> list[tuple[str, str, int]]:
    """The first ``count`` events yielded; what came if fewer arrive (a skipped gap stalls)."""
    got: list[tuple[str, str, int]] = []

    async def read() -> None:
        async for e in subscription:
            got.append((e.channel_id[:5], e.origin_region, e.origin_seq))
            if len(got) == count:
                break

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(read(), 10)
    return got


def _origins_asked(server: Server) -> list[dict[str, dict[str, int]]]:
    return [
        {ch: dict(p.origin_seqs) for ch, p in c.request.resume_from_origins.items()}
        for c in server.script.of("Subscribe")
    ]


async def test_subscription_resumes_with_its_origin_positions_and_drops_duplicates(
    serve: Serve,
) -> None:
    server = await serve()
    server.script.connections = [
        Connection(
            [replay_complete(), item(ev("eu", 2)), item(ev("asia", 5, channel=OTHER))],
            Unavailable("SHUTTING_DOWN", "bye"),
        ),
        Connection(
            [item(ev("eu", 2)), item(ev("asia", 1)), replay_complete(), item(ev("eu", 3))], HANG
        ),
    ]
    async with ChatClient(server.target, stream_retry=FAST) as client:
        subscription = client.subscribe(resume_from_origins={CH: {"eu": 1}})
        got = await _collect(subscription, 4)
        await subscription.close()
    assert got == [(CH[:5], "eu", 2), (OTHER[:5], "asia", 5), (CH[:5], "asia", 1),
                   (CH[:5], "eu", 3)]  # fmt: skip
    assert _origins_asked(server) == [{CH: {"eu": 1}}, {CH: {"eu": 2}, OTHER: {"asia": 5}}]
    assert subscription.duplicates == 1 and subscription.gaps == 0


async def test_an_event_beyond_its_origins_next_is_not_yielded_the_stream_resumes_before_it(
    serve: Serve,
) -> None:
    server = await serve()
    server.script.connections = [
        Connection(
            [replay_complete(), item(ev("eu", 1)), item(ev("asia", 1)), item(ev("eu", 4))], HANG
        ),
        Connection(
            [item(ev("eu", 2)), item(ev("eu", 3)), item(ev("eu", 4)), replay_complete()], HANG
        ),
    ]
    async with ChatClient(server.target, stream_retry=FAST) as client:
        subscription = client.subscribe(resume_from_origins={CH: {}})
        got = await _collect(subscription, 5)
        await subscription.close()
    assert [(o, n) for _, o, n in got] == [("eu", 1), ("asia", 1), ("eu", 2), ("eu", 3), ("eu", 4)]
    assert _origins_asked(server)[1] == {CH: {"eu": 1, "asia": 1}}
    assert subscription.gaps == 1 and subscription.gap_waits == 1


async def test_a_stream_gap_of_one_origin_resubscribes_from_the_positions(serve: Serve) -> None:
    server = await serve()
    gap = Unavailable("STREAM_GAP", "asia 2..3 not here yet", channel_id=CH, origin_region="asia",
                      last_delivered_origin_seq="1", first_missing_origin_seq="2",
                      last_missing_origin_seq="3")  # fmt: skip
    server.script.connections = [
        Connection([replay_complete(), item(ev("asia", 1)), item(ev("eu", 1))], gap),
        Connection([item(ev("asia", 2)), item(ev("asia", 3)), replay_complete()], HANG),
    ]
    async with ChatClient(server.target, stream_retry=FAST) as client:
        subscription = client.subscribe(resume_from_origins={CH: {}})
        got = await _collect(subscription, 4)
        await subscription.close()
    assert [(o, n) for _, o, n in got] == [("asia", 1), ("eu", 1), ("asia", 2), ("asia", 3)]
    assert _origins_asked(server)[1] == {CH: {"asia": 1, "eu": 1}}
    [asked] = server.script.of("GetHistory")  # how far the region's history reaches per origin
    assert asked.request.channel_id == CH
    assert isinstance(subscription.last_error, Unavailable)
    assert subscription.last_error.metadata["origin_region"] == "asia"


# -- display order --------------------------------------------------------------------------


def test_a_timeline_inserts_late_messages_where_their_timestamp_puts_them() -> None:
    timeline = Timeline(CH)
    at = [timeline.apply(e) for e in (ev("eu", 1, hlc=10), ev("eu", 2, hlc=30),
                                      ev("asia", 1, hlc=20), ev("us-east", 1, hlc=20))]  # fmt: skip
    assert at == [0, 1, 1, 2]
    assert [m.text for m in timeline.messages()] == ["eu#1", "asia#1", "us-east#1", "eu#2"]
    assert timeline.apply(ev("asia", 1, hlc=20)) is None  # a repeat changes nothing
    assert timeline.apply(ev("eu", 1, channel=OTHER)) is None and len(timeline) == 4


def _edit(origin: str, hlc: int, mid: str, text: str) -> events_pb2.Event:
    message = message_pb2.Message(message_id=mid, channel_id=CH, text=text)
    return events_pb2.Event(
        event_id=f"evt_edit_{origin}_{hlc}", channel_id=CH, origin_region=origin, hlc=hlc,
        origin_seq=9, message_edited=events_pb2.MessageEdited(message=message),
    )  # fmt: skip


def _delete(origin: str, hlc: int, mid: str) -> events_pb2.Event:
    return events_pb2.Event(
        event_id=f"evt_del_{origin}_{hlc}", channel_id=CH, origin_region=origin, hlc=hlc,
        origin_seq=9, message_deleted=events_pb2.MessageDeleted(message_id=mid),
    )  # fmt: skip


def test_a_timeline_applies_last_writer_wins_and_final_deletes_in_any_arrival_order() -> None:
    created = ev("eu", 1, hlc=10, mid="msg_1")
    newer, older = _edit("asia", 40, "msg_1", "newer"), _edit("eu", 30, "msg_1", "older")
    for order in ([created, newer, older], [older, newer, created], [newer, created, older]):
        timeline = Timeline(CH)
        for e in order:
            timeline.apply(e)
        assert [m.text for m in timeline.messages()] == ["newer"]
    timeline.apply(_delete("us-east", 20, "msg_1"))  # older than both edits: still final
    [shown] = timeline.messages()
    assert shown.deleted and shown.text == ""
    assert timeline.apply(_edit("eu", 50, "msg_1", "back?")) is None


def test_the_same_message_created_in_two_regions_is_shown_once_where_it_was_first() -> None:
    timeline = Timeline(CH)
    timeline.apply(ev("eu", 1, hlc=10, mid="msg_a"))
    timeline.apply(ev("eu", 2, hlc=30, mid="msg_retry"))  # the retry's copy, through eu
    assert timeline.apply(ev("asia", 1, hlc=20, mid="msg_retry")) == 1  # the first copy
    assert [m.origin_region for m in timeline.messages()] == ["eu", "asia"]
