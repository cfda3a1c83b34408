"""Helpers for building and inspecting ``chatmesh.v1.Event`` envelopes.

Example:
    >>> ev = new_event("ch_x", seq=3, origin_region="eu", actor="alice")
    >>> ev.event_id.startswith("evt_"), ev.seq
    (True, 3)
"""

from __future__ import annotations

import time

from chatmesh.v1 import events_pb2
from mesh.core import ids

__all__ = [
    "CHANNEL_LOG_KINDS",
    "is_channel_log_event",
    "is_origin_log_event",
    "new_event",
    "now_ms",
]

CHANNEL_LOG_KINDS = frozenset(
    {
        "message_created",
        "message_edited",
        "message_deleted",
        "member_joined",
        "member_left",
        "channel_created",
    }
)
"""Event kinds that take a seq in their channel's log (stored and replayed)."""


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def new_event(
    channel_id: str, *, seq: int, origin_region: str, actor: str, at_ms: int | None = None
) -> events_pb2.Event:
    """An envelope with a fresh id and timestamp; the caller sets the payload."""
    event = events_pb2.Event(
        event_id=ids.new("evt"),
        channel_id=channel_id,
        seq=seq,
        origin_region=origin_region,
        actor_user_id=actor,
    )
    event.occurred_at.FromMilliseconds(now_ms() if at_ms is None else at_ms)
    return event


def is_channel_log_event(event: events_pb2.Event) -> bool:
    """True for events that belong to a channel's durable log."""
    return event.WhichOneof("payload") in CHANNEL_LOG_KINDS and event.seq > 0


def is_origin_log_event(event: events_pb2.Event) -> bool:
    """True for channel-log events of the every-region write mode (ADR-026).

    They carry ``origin_seq`` (their position among their origin region's events
    of the channel) and ``seq`` 0, where the primary mode's carry ``seq``.
    """
    return (
        event.origin_seq > 0
        and event.seq == 0
        and bool(event.channel_id)
        and event.WhichOneof("payload") in CHANNEL_LOG_KINDS
    )
