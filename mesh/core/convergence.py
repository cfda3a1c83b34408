"""How regions that all write agree on one channel state (ADR-026, issue 15).

In the autonomous write mode every region writes its own events and receives
the others' late, in any interleaving. These rules are pure functions of the
*set* of a channel's events, so every region that holds the same events shows
the same state, whatever order they arrived in.

- **Order.** A channel is shown in :func:`order_key` order: (HLC timestamp,
  origin region, event id), a total order every region computes alike.
- **Messages** (:func:`resolve_message`). Edits: last writer wins by order key.
  A delete is final: it beats every edit, older or newer (deleted text never
  comes back). The same message id created in two regions (a client retrying
  through another region with the same ``client_msg_id``, which derives the
  id) is one message: the copy first in order is kept, later copies are dropped.
- **Members** (:func:`is_member`): observed-remove, remove wins. Each join and
  leave records what its region had seen of the channel (a version vector:
  origin region -> the highest per-origin seq applied). A user is a member iff
  some join has seen every leave of that user; a leave the join had not seen
  (concurrent, or later) removes.
- **Read markers** (:func:`merge_read_marker`, per origin
  :func:`merge_read_markers`): the maximum (per origin region), so markers
  written in any region converge and never move back.
- **Channel settings** (:func:`last_writer`): last writer wins by order key.

Example:
    >>> a = Stamp(hlc=10, origin="eu", event_id="evt_a", origin_seq=1)
    >>> b = Stamp(hlc=10, origin="asia", event_id="evt_b", origin_seq=1)
    >>> [s.origin for s in sorted([a, b], key=order_key)]
    ['asia', 'eu']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = [
    "MembershipChange",
    "MessageOp",
    "MessageState",
    "Stamp",
    "cap_read_marker",
    "is_member",
    "last_writer",
    "merge_read_marker",
    "merge_read_markers",
    "order_key",
    "resolve_message",
]

_T = TypeVar("_T")


@dataclass(frozen=True)
class Stamp:
    """Where an event sits: its HLC timestamp, origin region, id and per-origin seq."""

    hlc: int
    origin: str
    event_id: str
    origin_seq: int = 0
    """The event's seq among its origin region's events of the channel (1, 2, ...)."""


def order_key(stamp: Stamp) -> tuple[int, str, str]:
    """The total order every region shows a channel in."""
    return stamp.hlc, stamp.origin, stamp.event_id


def last_writer(values: Iterable[tuple[Stamp, _T]]) -> _T | None:
    """The value written last by order key (a channel setting); None if none was written."""
    latest: tuple[Stamp, _T] | None = None
    for stamp, value in values:
        if latest is None or order_key(stamp) > order_key(latest[0]):
            latest = (stamp, value)
    return None if latest is None else latest[1]


@dataclass(frozen=True)
class MessageOp:
    """One event about a message: ``create``, ``edit`` or ``delete``."""

    kind: str
    message_id: str
    stamp: Stamp
    text: str = ""


@dataclass(frozen=True)
class MessageState:
    """A message as every region shows it."""

    message_id: str
    created: Stamp
    """The kept create (the first in order); where the message sits in the channel."""
    text: str
    """The current text ("" once deleted)."""
    deleted: bool
    last_change: Stamp
    """The edit or delete that decided ``text`` (``created`` if none)."""
    dropped_creates: tuple[Stamp, ...] = field(default=())
    """Creates of the same id later in order: the same message, not shown again."""


def resolve_message(ops: Iterable[MessageOp]) -> MessageState | None:
    """The state of one message from all its events (any order, repeats allowed).

    Returns:
        None while no create has arrived (edits and deletes wait for it).
    """
    by_kind: dict[str, list[MessageOp]] = {"create": [], "edit": [], "delete": []}
    message_id = ""
    for op in ops:
        message_id = op.message_id
        by_kind[op.kind].append(op)
    creates, edits, deletes = by_kind["create"], by_kind["edit"], by_kind["delete"]
    if not creates:
        return None
    creates.sort(key=lambda op: order_key(op.stamp))
    first = creates[0]
    dropped = tuple(dict.fromkeys(op.stamp for op in creates[1:] if op.stamp != first.stamp))
    if deletes:
        decider = min(deletes, key=lambda op: order_key(op.stamp))
        return MessageState(message_id, first.stamp, "", True, decider.stamp, dropped)
    latest = max([first, *edits], key=lambda op: order_key(op.stamp))
    return MessageState(message_id, first.stamp, latest.text, False, latest.stamp, dropped)


@dataclass(frozen=True)
class MembershipChange:
    """A join or leave of ``user_id``, with what its region had seen of the channel."""

    kind: str
    """``join`` or ``leave`` (a kick is a leave written by someone else)."""
    user_id: str
    stamp: Stamp
    seen: Mapping[str, int] = field(default_factory=dict)
    """Origin region -> the highest per-origin seq of the channel its region had applied."""


def _saw(change: MembershipChange, other: Stamp) -> bool:
    return change.seen.get(other.origin, 0) >= other.origin_seq


def is_member(user_id: str, changes: Iterable[MembershipChange]) -> bool:
    """Whether ``user_id`` belongs to the channel, from every join and leave of it."""
    mine = [c for c in changes if c.user_id == user_id]
    leaves = [c.stamp for c in mine if c.kind == "leave"]
    return any(c.kind == "join" and all(_saw(c, leave) for leave in leaves) for c in mine)


def merge_read_marker(current: int, incoming: int) -> int:
    """A user's read marker after another region's update: the maximum."""
    return max(current, incoming)


def merge_read_markers(*markers: Mapping[str, int]) -> dict[str, int]:
    """Per-origin read markers merged: per origin region the maximum (origins at 0 left out).

    Commutative, associative and idempotent (a join-semilattice), so the updates of
    one user's marker, written in any region and applied in any order or repeated,
    end as the same marker everywhere.

    Example:
        >>> merge_read_markers({"eu": 4, "asia": 2}, {"eu": 3, "us-east": 7})
        {'asia': 2, 'eu': 4, 'us-east': 7}
    """
    merged: dict[str, int] = {}
    for marker in markers:
        for origin, seq in marker.items():
            if seq > merged.get(origin, 0):
                merged[origin] = seq
    return dict(sorted(merged.items()))


def cap_read_marker(requested: Mapping[str, int], known: Mapping[str, int]) -> dict[str, int]:
    """A requested per-origin marker capped at what a region has applied of each origin.

    A position beyond ``known`` (origin -> applied ``origin_seq`` with no hole below)
    is lowered to it, and an origin the region knows nothing of is dropped: nobody
    marks read what the region has not shown (the primary mode caps at the channel's
    end alike).

    Example:
        >>> cap_read_marker({"eu": 9, "asia": 2, "mars": 5}, {"eu": 6, "asia": 3})
        {'asia': 2, 'eu': 6}
    """
    capped = {o: min(seq, known.get(o, 0)) for o, seq in requested.items()}
    return dict(sorted((o, seq) for o, seq in capped.items() if seq > 0))
