"""The every-region write mode's rules as the stores apply them (ADR-026).

Backend-neutral helpers between stored events and :mod:`mesh.core.convergence`:
which events are stamped by origin, their :class:`~mesh.core.convergence.Stamp`,
and a message's current state from all of its events. A backend keeps a
channel's events by ``(origin_region, origin_seq)`` and recomputes a message
from every event about it whenever one arrives, so its state is a function of
the set of events, never of their arrival order.

Example:
    >>> from chatmesh.v1 import events_pb2
    >>> e = events_pb2.Event(event_id="evt_1", channel_id="ch_x", origin_region="eu",
    ...                      origin_seq=1, hlc=7)
    >>> e.message_created.message.message_id = "msg_1"
    >>> is_origin_event(e), message_id_of(e), order_key_of(e)
    (True, 'msg_1', (7, 'eu', 'evt_1'))
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from chatmesh.v1 import events_pb2, message_pb2
from mesh.core.convergence import MembershipChange, MessageOp, Stamp, resolve_message
from mesh.core.events import is_origin_log_event as is_origin_event
from mesh.stores.base import OrderKey

__all__ = [
    "HLC_LIMIT",
    "current_message",
    "is_origin_event",
    "membership_change",
    "message_id_of",
    "order_key_of",
    "stamp_of",
]

HLC_LIMIT = 1 << 63
"""Stamps at or above this do not fit a signed 64-bit column (the year ~4400): refused."""


def stamp_of(event: events_pb2.Event) -> Stamp:
    """Where an origin-stamped event sits."""
    return Stamp(event.hlc, event.origin_region, event.event_id, event.origin_seq)


def order_key_of(event: events_pb2.Event) -> OrderKey:
    """The event's :func:`mesh.core.convergence.order_key`."""
    return event.hlc, event.origin_region, event.event_id


def message_id_of(event: events_pb2.Event) -> str:
    """The message a create, edit or delete is about ("" for other events)."""
    kind = event.WhichOneof("payload")
    if kind == "message_created":
        return event.message_created.message.message_id
    if kind == "message_edited":
        return event.message_edited.message.message_id
    if kind == "message_deleted":
        return event.message_deleted.message_id
    return ""


def current_message(
    events: Iterable[events_pb2.Event],
) -> tuple[OrderKey, message_pb2.Message] | None:
    """A message as every region shows it, from all of its events (any order).

    Returns:
        ``(order key of the kept creation, the message)``: the first creation in
        order with the last edit's text (by order key) or, once any delete is
        applied, a tombstone (no text, ``deleted``); None until a creation is there.
    """
    ops: list[MessageOp] = []
    creates: dict[Stamp, message_pb2.Message] = {}
    edits: dict[Stamp, message_pb2.Message] = {}
    for event in events:
        stamp = stamp_of(event)
        kind = event.WhichOneof("payload")
        if kind == "message_created":
            m = event.message_created.message
            creates[stamp] = m
            ops.append(MessageOp("create", m.message_id, stamp, m.text))
        elif kind == "message_edited":
            m = event.message_edited.message
            edits[stamp] = m
            ops.append(MessageOp("edit", m.message_id, stamp, m.text))
        elif kind == "message_deleted":
            ops.append(MessageOp("delete", event.message_deleted.message_id, stamp))
    state = resolve_message(ops)
    if state is None:
        return None
    kept = state.created
    shown = message_pb2.Message()
    shown.CopyFrom(creates[kept])
    shown.seq = 0
    shown.hlc, shown.origin_region, shown.origin_seq = kept.hlc, kept.origin, kept.origin_seq
    if state.deleted:
        shown.text = ""
        shown.deleted = True
        shown.ClearField("edited_at")
    elif state.last_change != kept:
        shown.text = state.text
        shown.edited_at.CopyFrom(edits[state.last_change].edited_at)
    return (kept.hlc, kept.origin, kept.event_id), shown


def membership_change(kind: str, user_id: str, stamp: Stamp, seen_json: str) -> MembershipChange:
    """A stored join or leave (``seen`` as JSON) as the rule takes it."""
    seen = {str(k): int(v) for k, v in json.loads(seen_json).items()}
    return MembershipChange(kind, user_id, stamp, seen)
