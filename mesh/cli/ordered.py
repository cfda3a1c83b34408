"""The terminal's channel view in the every-region write mode (ADR-026, issue 15).

Every region writes, so a channel has no single seq: it is shown in
:func:`mesh.core.convergence.order_key` order of each message's creation,
``(hlc, origin_region, message_id)``, and a message from a region that was cut
off arrives late. A terminal can only append, so a late message is printed when
it arrives followed by a marker line saying where it belongs (before which
message); ``/view`` reprints the channel in order. A message's state is
:func:`mesh.core.convergence.resolve_message` of every event about it (the same
rules as every region's history: last edit wins, a delete is final, a creation
repeated through another region is one message), so the view does not depend
on the order events come in.

Example:
    >>> from chatmesh.v1 import events_pb2
    >>> view = OrderedChannel()
    >>> def sent(text, hlc, origin, n):
    ...     e = events_pb2.Event(event_id=f"evt_{n}", channel_id="ch_x", hlc=hlc,
    ...                          origin_region=origin, origin_seq=1)
    ...     m = e.message_created.message
    ...     m.message_id, m.sender_user_id, m.text, m.hlc, m.origin_region = (
    ...         f"msg_{n}", "amy", text, hlc, origin)
    ...     return e
    >>> view.apply(sent("second", 2 << 16, "eu", 2))
    ['[00:00:00.002] amy@eu: second']
    >>> view.apply(sent("first", 1 << 16, "asia", 1))[1]
    '  ^ arrived late: it comes before [00:00:00.002] amy@eu (/view shows the channel in order)'
    >>> [line.split("] ")[1] for line in view.render()]
    ['amy@asia: first', 'amy@eu: second']
"""

from __future__ import annotations

import bisect
import datetime as dt
from dataclasses import dataclass, field

from chatmesh.v1 import events_pb2, message_pb2
from mesh.core.convergence import MessageOp, MessageState, Stamp, order_key, resolve_message
from mesh.core.hlc import unpack

__all__ = ["OrderedChannel", "is_ordered_event"]

_Key = tuple[int, str, str]


def is_ordered_event(event: events_pb2.Event) -> bool:
    """Whether the every-region view handles ``event``: a message event stamped by its origin."""
    return (
        event.seq == 0
        and event.origin_seq > 0
        and event.WhichOneof("payload") in ("message_created", "message_edited", "message_deleted")
    )


def _stamp(event: events_pb2.Event) -> Stamp:
    return Stamp(event.hlc, event.origin_region, event.event_id, event.origin_seq)


def _clock(hlc: int) -> str:
    """The wall-clock part of an hlc as ``HH:MM:SS.mmm`` (UTC)."""
    millis, _ = unpack(hlc)
    return dt.datetime.fromtimestamp(millis / 1000, dt.UTC).strftime("%H:%M:%S.%f")[:-3]


@dataclass
class _Entry:
    """One message: every event about it, and the message as last shown."""

    ops: list[MessageOp] = field(default_factory=list)
    message: message_pb2.Message | None = None
    """The newest copy seen (sender, region, hlc of its kept creation)."""
    state: MessageState | None = None
    key: _Key | None = None
    """Where it sits: ``order_key`` of (kept creation's hlc, origin, message id)."""


class OrderedChannel:
    """One channel's messages in ``(hlc, origin_region, message_id)`` order, with late inserts."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._keys: list[_Key] = []
        """The shown messages' keys, sorted."""
        self._by_key: dict[_Key, str] = {}
        self.late = 0
        """Messages that arrived after a message that sorts after them."""

    def __len__(self) -> int:
        return len(self._keys)

    def add_history(self, messages: list[message_pb2.Message]) -> None:
        """Takes a GetHistory page (current state, any page order); prints nothing."""
        for m in messages:
            if m.hlc <= 0:
                continue
            # The page shows the kept creation's place and the current text.
            stamp = Stamp(m.hlc, m.origin_region, "", m.origin_seq)
            ops = [MessageOp("create", m.message_id, stamp, m.text)]
            if m.deleted:
                ops.append(MessageOp("delete", m.message_id, stamp))
            self._update(m.message_id, ops, m)

    def apply(self, event: events_pb2.Event) -> list[str]:
        """Takes one stream event of the channel; returns the lines to print (maybe none)."""
        kind = event.WhichOneof("payload")
        stamp = _stamp(event)
        if kind == "message_created":
            m = event.message_created.message
            return self._update(m.message_id, [MessageOp("create", m.message_id, stamp, m.text)], m)
        if kind == "message_edited":
            m = event.message_edited.message
            return self._update(
                m.message_id, [MessageOp("edit", m.message_id, stamp, m.text)], None
            )
        if kind == "message_deleted":
            message_id = event.message_deleted.message_id
            return self._update(message_id, [MessageOp("delete", message_id, stamp)], None)
        return []

    def render(self) -> list[str]:
        """Every shown message, in order (for ``/view`` and the start of a chat)."""
        return [self._line(self._entries[self._by_key[key]]) for key in self._keys]

    def _update(
        self, message_id: str, ops: list[MessageOp], copy: message_pb2.Message | None
    ) -> list[str]:
        entry = self._entries.setdefault(message_id, _Entry())
        entry.ops.extend(ops)
        if copy is not None and entry.message is None:
            entry.message = copy
        before = entry.state
        entry.state = resolve_message(entry.ops)
        if entry.state is None or entry.message is None:
            return []  # an edit or delete waiting for its message's creation
        created = entry.state.created
        key = order_key(Stamp(created.hlc, created.origin, message_id))
        if key != entry.key:  # new, or a repeated creation earlier in order
            if entry.key is not None:
                self._keys.remove(entry.key)
                del self._by_key[entry.key]
            entry.key = key
            bisect.insort(self._keys, key)
            self._by_key[key] = message_id
        if before is None:
            return self._shown(entry)
        if entry.state.deleted and not before.deleted:
            return [f"[{_clock(key[0])}] (deleted)"]
        if entry.state.text != before.text and not entry.state.deleted:
            return [f"[{_clock(key[0])}] {entry.message.sender_user_id} edited: {entry.state.text}"]
        return []

    def _shown(self, entry: _Entry) -> list[str]:
        """The lines of a message shown for the first time; a late one says where it belongs."""
        assert entry.key is not None
        lines = [self._line(entry)]
        index = bisect.bisect_left(self._keys, entry.key)
        if index < len(self._keys) - 1:
            self.late += 1
            after = self._keys[index + 1]
            lines.append(
                f"  ^ arrived late: it comes before {self._ref(after)} "
                "(/view shows the channel in order)"
            )
        return lines

    def _ref(self, key: _Key) -> str:
        message = self._entries[self._by_key[key]].message
        assert message is not None
        return f"[{_clock(key[0])}] {message.sender_user_id}@{key[1]}"

    def _line(self, entry: _Entry) -> str:
        assert entry.key is not None and entry.message is not None and entry.state is not None
        text = "(deleted)" if entry.state.deleted else entry.state.text
        return f"[{_clock(entry.key[0])}] {entry.message.sender_user_id}@{entry.key[1]}: {text}"
