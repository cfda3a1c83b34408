"""One channel's messages in display order, with late inserts: :class:`Timeline`.

In the every-region write mode (ADR-026) a channel's events arrive in per-origin
order only: a message written in a region that was cut off arrives late and
belongs where its timestamp puts it. :class:`Timeline` keeps a channel's
messages ordered by ``(hlc, origin_region, message_id)`` and applies edits and
deletes by the convergence rules (:func:`mesh.core.convergence.resolve_message`):
last writer wins by order key, a delete is final, the same message id created
twice (a retry through another region) is one message, placed where its first
copy in order sits. Primary-mode events (``hlc`` 0) order by ``seq``.

Pure bookkeeping, no I/O (``chatmesh chat`` and the tests feed it).

Example:
    >>> from chatmesh.v1 import events_pb2
    >>> def sent(origin: str, hlc: int, mid: str) -> events_pb2.Event:
    ...     e = events_pb2.Event(event_id="evt_" + mid, channel_id="ch_x", hlc=hlc,
    ...                          origin_region=origin, origin_seq=1)
    ...     m = e.message_created.message
    ...     m.message_id, m.text, m.hlc, m.origin_region = mid, mid, hlc, origin
    ...     return e
    >>> timeline = Timeline("ch_x")
    >>> timeline.apply(sent("eu", 20, "b")), timeline.apply(sent("asia", 10, "a"))
    (0, 0)
    >>> [m.text for m in timeline.messages()]
    ['a', 'b']
"""

from __future__ import annotations

from bisect import bisect_left, insort

from chatmesh.v1 import events_pb2, message_pb2
from mesh.core.convergence import MessageOp, Stamp, resolve_message

__all__ = ["Timeline"]

_Key = tuple[int, str, str]
_HISTORY = "history:"
"""Stamp id prefix of a message placed from history (:meth:`Timeline.add`)."""


def _stamp(event: events_pb2.Event) -> Stamp:
    if event.hlc:
        return Stamp(event.hlc, event.origin_region, event.event_id, event.origin_seq)
    return Stamp(event.seq, "", event.event_id)  # primary mode: the channel seq orders


def _position(message: message_pb2.Message, stamp: Stamp) -> _Key:
    if message.hlc:
        return (message.hlc, message.origin_region, message.message_id)
    return (message.seq or stamp.hlc, "", message.message_id)


class Timeline:
    """A channel's messages by ``(hlc, origin_region, message_id)``, edits and deletes applied."""

    def __init__(self, channel_id: str) -> None:
        """Args: channel_id is the channel whose events :meth:`apply` takes (others are ignored)."""
        self.channel_id = channel_id
        self._ops: dict[str, list[MessageOp]] = {}
        self._bodies: dict[Stamp, message_pb2.Message] = {}
        """The message each create carried (by the create's stamp)."""
        self._shown: dict[str, tuple[_Key, message_pb2.Message]] = {}
        self._order: list[_Key] = []

    def apply(self, event: events_pb2.Event) -> int | None:
        """Takes one channel event; returns the index of the message it placed or changed.

        None: nothing shown changed (another kind of event, another channel, a
        repeat, or an edit or delete whose message has not arrived yet; it is kept
        and applied when the message arrives).
        """
        if event.channel_id != self.channel_id:
            return None
        kind = event.WhichOneof("payload")
        stamp = _stamp(event)
        if kind == "message_created":
            message = event.message_created.message
            self._bodies.setdefault(stamp, message)
            op = MessageOp("create", message.message_id, stamp, message.text)
        elif kind == "message_edited":
            message = event.message_edited.message
            op = MessageOp("edit", message.message_id, stamp, message.text)
        elif kind == "message_deleted":
            op = MessageOp("delete", event.message_deleted.message_id, stamp)
        else:
            return None
        ops = self._ops.setdefault(op.message_id, [])
        if op in ops:
            return None
        if op.kind == "create" and any(o.stamp.event_id.startswith(_HISTORY) for o in ops):
            return None  # history showed this message already, in a state at least as new
        ops.append(op)
        return self._refresh(op.message_id)

    def add(self, message: message_pb2.Message) -> int | None:
        """Places a message read from history (its state as of the read; later events refine it)."""
        if message.channel_id and message.channel_id != self.channel_id:
            return None
        stamp = Stamp(message.hlc or message.seq, message.origin_region if message.hlc else "",
                      f"{_HISTORY}{message.message_id}", message.origin_seq)  # fmt: skip
        ops = self._ops.setdefault(message.message_id, [])
        if any(op.kind == "create" for op in ops):
            return None  # the live copy (or an earlier page) has it already
        self._bodies[stamp] = message
        ops.append(MessageOp("create", message.message_id, stamp, message.text))
        if message.deleted:
            ops.append(MessageOp("delete", message.message_id, stamp))
        return self._refresh(message.message_id)

    def _refresh(self, message_id: str) -> int | None:
        state = resolve_message(self._ops[message_id])
        if state is None:
            return None  # an edit or delete ahead of its message
        body = self._bodies[state.created]
        shown = message_pb2.Message()
        shown.CopyFrom(body)
        shown.text = state.text
        shown.deleted = state.deleted
        key = _position(body, state.created)
        before = self._shown.get(message_id)
        if before is not None:
            if before[0] == key and before[1] == shown:
                return None
            if before[0] != key:  # an earlier copy of the same message arrived late
                del self._order[bisect_left(self._order, before[0])]
        if before is None or before[0] != key:
            insort(self._order, key)
        self._shown[message_id] = (key, shown)
        return bisect_left(self._order, key)

    def messages(self) -> list[message_pb2.Message]:
        """The channel's messages in display order (deleted ones as tombstones)."""
        return [self._shown[key[2]][1] for key in self._order]

    def __len__(self) -> int:
        return len(self._order)
