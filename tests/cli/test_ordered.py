"""``chatmesh chat`` in the every-region write mode: the channel view's order (no servers)."""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator
from typing import Any

from chatmesh.v1 import events_pb2, message_pb2, notification_service_pb2 as npb
from mesh.cli.chat import _listen
from mesh.cli.ordered import OrderedChannel, is_ordered_event
from mesh.core.hlc import pack

BASE_MS = 1_780_000_000_000
_ids = itertools.count(1)


def _hlc(tick: int) -> int:
    return pack(BASE_MS + tick, 0)


def _message(
    mid: str, tick: int, origin: str, text: str, sender: str = "amy"
) -> message_pb2.Message:
    return message_pb2.Message(
        message_id=mid, channel_id="ch_x", sender_user_id=sender, text=text,
        hlc=_hlc(tick), origin_region=origin, origin_seq=1,
    )  # fmt: skip


def _event(tick: int, origin: str, origin_seq: int) -> events_pb2.Event:
    return events_pb2.Event(
        event_id=f"evt_{next(_ids):04d}", channel_id="ch_x", hlc=_hlc(tick),
        origin_region=origin, origin_seq=origin_seq,
    )  # fmt: skip


def created(m: message_pb2.Message, origin_seq: int = 1) -> events_pb2.Event:
    e = _event(int((m.hlc >> 16) - BASE_MS), m.origin_region, origin_seq)
    e.message_created.message.CopyFrom(m)
    return e


def edited(m: message_pb2.Message, text: str, tick: int, origin: str) -> events_pb2.Event:
    e = _event(tick, origin, 1)
    e.message_edited.message.CopyFrom(m)
    e.message_edited.message.text = text
    return e


def deleted(m: message_pb2.Message, tick: int, origin: str) -> events_pb2.Event:
    e = _event(tick, origin, 1)
    e.message_deleted.message_id = m.message_id
    return e


def texts(view: OrderedChannel) -> list[str]:
    return [line.split("] ", 1)[1] for line in view.render()]


def test_a_late_message_is_placed_by_its_hlc_and_marked_where_it_belongs() -> None:
    view = OrderedChannel()
    # eu's messages arrive first; asia was cut off and its older ones come after.
    # origin_seqs run against the hlc order, so neither arrival nor seq gives this order.
    lines = view.apply(created(_message("msg_b", 20, "eu", "eu two"), origin_seq=1))
    assert len(lines) == 1 and re.fullmatch(r"\[\d\d:\d\d:\d\d\.\d{3}\] amy@eu: eu two", lines[0])
    view.apply(created(_message("msg_d", 40, "eu", "eu four"), origin_seq=2))
    late = view.apply(created(_message("msg_a", 10, "asia", "asia one", "bo"), origin_seq=7))
    assert late[0].endswith("] bo@asia: asia one")
    eu_two = view.render()[1].split(": ")[0]  # "[time] amy@eu", the message it precedes
    assert (
        late[1] == f"  ^ arrived late: it comes before {eu_two} (/view shows the channel in order)"
    )
    on_time = view.apply(created(_message("msg_e", 50, "asia", "asia five", "bo"), origin_seq=8))
    assert len(on_time) == 1, "a message newer than all shown is not late"
    assert texts(view) == [
        "bo@asia: asia one",
        "amy@eu: eu two",
        "amy@eu: eu four",
        "bo@asia: asia five",
    ]
    assert view.late == 1


def test_ties_at_one_hlc_go_by_origin_region_then_message_id() -> None:
    view = OrderedChannel()
    for mid, origin in [("msg_2", "eu"), ("msg_1", "eu"), ("msg_0", "us-east"), ("msg_9", "asia")]:
        view.apply(created(_message(mid, 5, origin, f"{origin} {mid}")))
    assert texts(view) == [
        "amy@asia: asia msg_9",
        "amy@eu: eu msg_1",
        "amy@eu: eu msg_2",
        "amy@us-east: us-east msg_0",
    ]


def test_edits_and_deletes_converge_whatever_the_arrival_order() -> None:
    a = _message("msg_a", 1, "eu", "a1")
    b = _message("msg_b", 2, "asia", "b1")
    c = _message("msg_c", 3, "eu", "c1")
    events = [
        created(a), created(b), created(c),
        edited(a, "a2", 4, "asia"), edited(a, "a3", 5, "eu"),  # the later edit wins
        deleted(b, 6, "eu"), edited(b, "b2", 7, "asia"),  # a delete beats a newer edit
    ]  # fmt: skip
    views = set()
    for order in itertools.permutations(events):
        view = OrderedChannel()
        for event in order:
            view.apply(event)
        views.add(tuple(texts(view)))
    assert views == {("amy@eu: a3", "amy@asia: (deleted)", "amy@eu: c1")}


def test_what_is_printed_for_edits_deletes_and_ones_that_came_before_their_message() -> None:
    view = OrderedChannel()
    a = _message("msg_a", 1, "eu", "hello")
    b = _message("msg_b", 2, "eu", "typo")
    assert view.apply(edited(a, "hello all", 3, "asia")) == [], "waits for the creation"
    assert view.apply(deleted(b, 4, "asia")) == []
    assert view.apply(created(b))[0].endswith("] amy@eu: (deleted)")
    shown = view.apply(created(a))
    assert shown[0].endswith("] amy@eu: hello all") and "arrived late" in shown[1]
    assert view.apply(edited(a, "older edit", 2, "us-east")) == [], "an older edit changes nothing"
    assert view.apply(edited(a, "hi all", 9, "eu"))[0].endswith("] amy edited: hi all")
    assert view.apply(deleted(a, 10, "eu"))[0].endswith("] (deleted)")
    assert view.apply(deleted(a, 11, "asia")) == []
    assert texts(view) == ["amy@eu: (deleted)", "amy@eu: (deleted)"]


def test_history_then_replayed_events_show_each_message_once() -> None:
    a = _message("msg_a", 1, "eu", "kept")
    b = _message("msg_b", 2, "asia", "gone")
    b_deleted = message_pb2.Message()
    b_deleted.CopyFrom(b)
    b_deleted.deleted, b_deleted.text = True, ""
    view = OrderedChannel()
    view.add_history([b_deleted, a])  # any page order
    assert texts(view) == ["amy@eu: kept", "amy@asia: (deleted)"]
    assert view.apply(created(a)) == []
    assert view.apply(created(b)) == [], "the deleted text never comes back"
    assert texts(view) == ["amy@eu: kept", "amy@asia: (deleted)"]


def test_a_send_retried_through_another_region_is_one_message_at_its_first_creation() -> None:
    view = OrderedChannel()
    view.apply(created(_message("msg_n", 1, "eu", "first")))
    view.apply(created(_message("msg_r", 5, "us-east", "retried")))
    assert view.apply(created(_message("msg_r", 3, "asia", "retried"))) == []
    view.apply(created(_message("msg_r", 8, "eu", "retried")))
    assert texts(view) == ["amy@eu: first", "amy@asia: retried"]


def test_primary_mode_events_are_not_ordered_here() -> None:
    primary = events_pb2.Event(event_id="evt_1", channel_id="ch_x", seq=4, origin_region="eu")
    primary.message_created.message.text = "hi"
    assert not is_ordered_event(primary)
    joined = _event(1, "eu", 3)
    joined.member_joined.user_id = "bo"
    assert not is_ordered_event(joined)
    assert is_ordered_event(created(_message("msg_a", 1, "eu", "x")))


class _Term:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, text: str) -> None:
        self.lines.append(text)


class _Subscription:
    """Delivers scripted stream items, as :class:`mesh.client.Subscription` does."""

    def __init__(self, events: list[events_pb2.Event]) -> None:
        self.events = events
        self.reconnects = 0
        self.positions: dict[str, int] = {}

    async def responses(self) -> AsyncIterator[npb.SubscribeResponse]:
        for e in self.events:
            yield npb.SubscribeResponse(event=e)


async def test_the_listener_orders_every_region_messages_and_prints_primary_ones_as_before() -> (
    None
):
    late = created(_message("msg_a", 1, "asia", "from the cut-off region", "bo"))
    primary = events_pb2.Event(event_id="evt_p", channel_id="ch_x", seq=7, origin_region="eu")
    m = primary.message_created.message
    m.seq, m.sender_user_id, m.origin_region, m.text = 7, "amy", "eu", "primary"
    joined = _event(3, "eu", 2)
    joined.member_joined.user_id = "cy"
    events = [created(_message("msg_b", 2, "eu", "eu says hi")), late, joined, primary]
    term, view = _Term(), OrderedChannel()
    sub: Any = _Subscription(events)
    await _listen(sub, term, "amy", "ch_x", view)  # type: ignore[arg-type]
    assert term.lines[0].endswith("] amy@eu: eu says hi")
    assert term.lines[1].endswith("] bo@asia: from the cut-off region")
    assert term.lines[2].startswith("  ^ arrived late: it comes before [")
    assert term.lines[3:] == ["* cy joined", "[7] amy@eu: primary"]
    assert texts(view) == ["bo@asia: from the cut-off region", "amy@eu: eu says hi"]
