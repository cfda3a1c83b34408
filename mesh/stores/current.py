"""Channel events as they may be shown today: each message in its current state.

A history store keeps every channel event as it was published, so a
``message_created`` event still holds the text its author later edited or
deleted. Anything that sends stored events to clients (the Notification
Service's replay, gap fills and sweeps) reads them through
:class:`CurrentHistory`, which puts the message's current state from the same
store into each message event: a deleted message is a tombstone (``deleted``,
no text) and an edited one carries only its latest text. The event's seq, kind
and order do not change, so positions, gap detection and dedup are unaffected.

Example:
    >>> async def replay(store: HistoryStore) -> None:  # doctest: +SKIP
    ...     history = CurrentHistory(store)
    ...     events = await history.events_after("ch_x", 0)   # no deleted text in them
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chatmesh.v1 import events_pb2, message_pb2
from mesh.stores.base import UNREAD_CAP, HistoryPage, HistoryStore, OrderedPage, OrderKey

__all__ = ["CurrentHistory", "current_events", "current_origin_events"]


def _message_of(event: events_pb2.Event) -> message_pb2.Message | None:
    kind = event.WhichOneof("payload")
    if kind == "message_created":
        return event.message_created.message
    if kind == "message_edited":
        return event.message_edited.message
    return None


async def _current_messages(
    store: HistoryStore, channel_id: str, seqs: set[int], lo: int, hi: int
) -> dict[int, message_pb2.Message]:
    """Current state of the messages with the given seqs (one range query, plus one per outlier)."""
    found: dict[int, message_pb2.Message] = {}
    if lo <= hi:
        page = await store.history(
            channel_id, after_seq=lo - 1, before_seq=hi + 1, limit=hi - lo + 1
        )
        found.update((m.seq, m) for m in page.messages)
    for seq in sorted(s for s in seqs if s < lo or s > hi):  # edits of older messages
        page = await store.history(channel_id, after_seq=seq - 1, before_seq=seq + 1, limit=1)
        found.update((m.seq, m) for m in page.messages)
    return found


async def current_events(
    store: HistoryStore, channel_id: str, events: list[events_pb2.Event]
) -> list[events_pb2.Event]:
    """``events`` of one channel with every message replaced by its current state in ``store``.

    A message the store does not (yet) know is left as the event has it.
    """
    messages = [_message_of(e) for e in events]
    referenced = {m.seq for m in messages if m is not None}
    if not referenced:
        return events
    lo, hi = min(e.seq for e in events), max(e.seq for e in events)
    current = await _current_messages(store, channel_id, referenced, lo, hi)
    out: list[events_pb2.Event] = []
    for event, message in zip(events, messages, strict=True):
        now = current.get(message.seq) if message is not None else None
        if message is None or now is None or now == message:
            out.append(event)
            continue
        out.append(_shown(event, now))
    return out


def _shown(event: events_pb2.Event, now: message_pb2.Message) -> events_pb2.Event:
    shown = events_pb2.Event()
    shown.CopyFrom(event)
    target = _message_of(shown)
    assert target is not None
    key = target.client_msg_id  # the event's own idempotency key (edits clear it)
    target.CopyFrom(now)
    target.client_msg_id = key
    return shown


async def current_origin_events(
    store: HistoryStore, channel_id: str, events: list[events_pb2.Event]
) -> list[events_pb2.Event]:
    """Every-region mode (ADR-026): :func:`current_events` for events stamped by origin.

    Messages are found by id (they have no seq); the event's stamps (``hlc``,
    ``origin_seq``, ``origin_region``) do not change.
    """
    messages = [_message_of(e) for e in events]
    wanted = sorted({m.message_id for m in messages if m is not None})
    if not wanted:
        return events
    current = await store.messages_by_id(channel_id, wanted)
    out: list[events_pb2.Event] = []
    for event, message in zip(events, messages, strict=True):
        now = current.get(message.message_id) if message is not None else None
        out.append(
            event if message is None or now is None or now == message else _shown(event, now)
        )
    return out


class CurrentHistory:
    """A :class:`HistoryStore` whose replays show messages in their current state.

    ``events_after`` and ``origin_events_after`` do; everything else is the
    wrapped store's.
    """

    def __init__(self, store: HistoryStore) -> None:
        """Args: store is the history store to read (and write) through."""
        self.store = store

    async def apply(self, events: Sequence[events_pb2.Event], stream_seq: int = 0) -> int:
        return await self.store.apply(events, stream_seq)

    async def history(
        self,
        channel_id: str,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int = 50,
    ) -> HistoryPage:
        return await self.store.history(
            channel_id, before_seq=before_seq, after_seq=after_seq, limit=limit
        )

    async def events_after(
        self, channel_id: str, after_seq: int, limit: int = 500
    ) -> list[events_pb2.Event]:
        events = await self.store.events_after(channel_id, after_seq, limit)
        return await current_events(self.store, channel_id, events)

    async def last_seq(self, channel_id: str) -> int:
        return await self.store.last_seq(channel_id)

    async def unread_count(
        self, channel_id: str, after_seq: int, user_id: str, cap: int = UNREAD_CAP
    ) -> int:
        return await self.store.unread_count(channel_id, after_seq, user_id, cap)

    async def applied_stream_seq(self) -> int:
        return await self.store.applied_stream_seq()

    async def last_origin_seqs(self, channel_id: str) -> dict[str, int]:
        return await self.store.last_origin_seqs(channel_id)

    async def origin_unread_count(
        self,
        channel_id: str,
        read_through: Mapping[str, int],
        user_id: str,
        cap: int = UNREAD_CAP,
    ) -> int:
        return await self.store.origin_unread_count(channel_id, read_through, user_id, cap)

    async def origin_events_after(
        self, channel_id: str, origin_region: str, after_origin_seq: int, limit: int = 500
    ) -> list[events_pb2.Event]:
        events = await self.store.origin_events_after(
            channel_id, origin_region, after_origin_seq, limit
        )
        return await current_origin_events(self.store, channel_id, events)

    async def ordered_history(
        self, channel_id: str, *, before: OrderKey | None = None, limit: int = 50
    ) -> OrderedPage:
        return await self.store.ordered_history(channel_id, before=before, limit=limit)

    async def messages_by_id(
        self, channel_id: str, message_ids: Sequence[str]
    ) -> dict[str, message_pb2.Message]:
        return await self.store.messages_by_id(channel_id, message_ids)

    async def close(self) -> None:
        await self.store.close()
