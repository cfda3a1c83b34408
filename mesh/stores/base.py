"""The store interfaces every backend implements (SQLite, Cassandra, MongoDB-wire).

Three stores, by who writes them:

* :class:`CommandStore` — the write model, primary region only, written by the
  Command Service alone: each channel's command log (the authoritative
  ``(channel_id, seq)`` sequence, idempotency keys, publish state) and the
  message index used to authorize edits and deletes.
* :class:`MetadataStore` — channels, memberships and read markers. Written in
  the primary by the Command Service; read everywhere. Replicated by the
  database (MongoDB secondaries) or, for the embedded backend, by each region's
  worker applying the event stream (:meth:`MetadataStore.apply`).
* :class:`HistoryStore` — every channel's event log and message state. Written
  by workers applying events (idempotently: re-applying an event changes
  nothing), read by Query (pages) and Notification (replay) services.

Every write method is idempotent, because events are delivered at least once.
The shared contract suite (``tests/stores/test_contract.py``) runs against every
backend.

**The every-region write mode (ADR-026).** Each region writes its own events
(``seq`` 0, ``origin_seq`` 1, 2, ... per origin region and channel, an ``hlc``),
and every region applies every region's events in whatever order they arrive.
The stores tell the two kinds of event apart by their stamps (``origin_seq`` > 0
and ``seq`` 0), so ``apply`` needs no mode switch; an event of either kind is
applied idempotently by its position, ``(channel_id, seq)`` or ``(channel_id,
origin_region, origin_seq)``. Applied origin events are shown by the rules of
:mod:`mesh.core.convergence` (order by :data:`OrderKey`, last-writer-wins edits,
final deletes, one message per derived id, observed-remove membership), so two
regions holding the same events answer alike. The methods marked *every-region*
below serve that mode only; the SQLite backend implements them, Cassandra and
MongoDB raise :class:`NotImplementedError` (the services refuse the mode with
those backends at start-up, :func:`mesh.stores.check_write_mode`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from chatmesh.v1 import channel_pb2, events_pb2, message_pb2

__all__ = [
    "UNREAD_CAP",
    "ChannelClock",
    "CommandStore",
    "HistoryPage",
    "HistoryStore",
    "LogConflict",
    "LogEntry",
    "MessageRecord",
    "MetadataStore",
    "OrderKey",
    "OrderedPage",
]

UNREAD_CAP = 1000
"""Unread counts stop at this number (clients show "999+")."""


@dataclass(frozen=True)
class HistoryPage:
    """One page of :meth:`HistoryStore.history`."""

    messages: list[message_pb2.Message]
    """Ascending by seq."""
    has_more: bool
    """More messages lie beyond the page in the direction of travel."""
    last_seq: int
    """Newest seq of the channel's log in this store."""


OrderKey = tuple[int, str, str]
"""``(hlc, origin_region, event_id)``: where an event (or the message it creates) sits
in a channel in the every-region mode (:func:`mesh.core.convergence.order_key`)."""


@dataclass(frozen=True)
class OrderedPage:
    """One page of :meth:`HistoryStore.ordered_history` (every-region mode)."""

    messages: list[message_pb2.Message]
    """Ascending by order key (each message at its kept creation's key)."""
    has_more: bool
    """Older messages exist before ``messages[0]``."""
    oldest: OrderKey | None
    """Order key of ``messages[0]`` (None for an empty page): pass it as ``before``
    to read the next older page; no message is skipped or repeated, ties at one
    hlc included, because the key is a total order."""


@dataclass(frozen=True)
class ChannelClock:
    """What a region has applied of a channel (every-region mode)."""

    seen: dict[str, int]
    """Origin region -> the highest ``origin_seq`` up to which every event of that
    origin is applied (a hole stops it): the version vector a join or leave records."""
    max_hlc: int
    """The greatest ``hlc`` among the channel's applied events (0 if none): the clock
    of a region that writes to the channel observes it first, so a reply sorts after
    what it answers."""


@dataclass(frozen=True)
class LogEntry:
    """One entry of a channel's command log."""

    channel_id: str
    seq: int
    event: bytes
    """The serialized ``chatmesh.v1.Event`` exactly as published."""
    idempotency_key: str | None = None
    """``<kind>:<user>:<client key>`` for idempotent commands, else None."""
    published: bool = False
    """Whether JetStream has acknowledged the event."""


@dataclass(frozen=True)
class MessageRecord:
    """The command side's view of a message: enough to authorize edits and deletes."""

    message_id: str
    channel_id: str
    seq: int
    sender_user_id: str
    deleted: bool
    body: bytes = b""
    """The message's current state (serialized ``chatmesh.v1.Message``); empty once deleted."""


class LogConflict(Exception):
    """A log append collided with an existing ``(channel, seq)`` or idempotency key."""


class CommandStore(Protocol):
    """The Command Service's write model (primary region only)."""

    async def last_seq(self, channel_id: str) -> int:
        """Highest seq in the channel's log (0 if none)."""
        ...

    async def append(self, entry: LogEntry, message: MessageRecord | None = None) -> None:
        """Appends an entry and, with it, the message record it creates or changes.

        Both are written together (one durable commit where the backend allows),
        so a message record never describes an entry the log does not have.

        Raises:
            LogConflict: ``(channel_id, seq)`` or ``idempotency_key`` exists already
                (nothing is written).
        """
        ...

    async def by_idempotency_key(self, key: str) -> LogEntry | None:
        """The entry recorded under an idempotency key, if any."""
        ...

    async def mark_published(self, channel_id: str, seq: int) -> None:
        """Records that JetStream acknowledged the entry.

        Need not be durable: an entry wrongly left unpublished is published
        again, and JetStream de-duplicates it.
        """
        ...

    async def unpublished(self, limit: int = 1000, channel_id: str | None = None) -> list[LogEntry]:
        """Entries not yet acknowledged by JetStream, in ``(channel_id, seq)`` order."""
        ...

    async def put_message(self, record: MessageRecord) -> None:
        """Inserts or replaces a message record."""
        ...

    async def message(self, message_id: str) -> MessageRecord | None:
        """A message record by id."""
        ...

    async def close(self) -> None:
        """Releases connections."""
        ...


class MetadataStore(Protocol):
    """Channels, memberships and read markers."""

    async def apply(self, event: events_pb2.Event) -> None:
        """Applies a channel or user event (idempotent; older membership changes are ignored)."""
        ...

    async def channel(self, channel_id: str) -> channel_pb2.Channel | None:
        """A channel with its members (sorted), or None."""
        ...

    async def is_member(self, channel_id: str, user_id: str) -> bool:
        """Whether ``user_id`` is a member of the channel."""
        ...

    async def members(self, channel_id: str) -> tuple[list[str], int]:
        """``(sorted member ids, seq of the last membership change)``; ``([], 0)`` if unknown."""
        ...

    async def channels_of(self, user_id: str) -> list[channel_pb2.Channel]:
        """The user's channels (with members), most recently active first."""
        ...

    async def read_marker(self, user_id: str, channel_id: str) -> int:
        """The user's highest read seq in the channel (0 if never)."""
        ...

    async def read_markers(self, user_id: str) -> dict[str, int]:
        """channel_id -> the user's read marker, for every channel with one."""
        ...

    async def all_memberships(
        self, after_channel_id: str = "", limit: int = 10_000
    ) -> list[tuple[str, int, list[str]]]:
        """A page of ``(channel_id, membership_seq, members)`` ordered by channel id (for loading caches)."""
        ...

    async def channel_clock(self, channel_id: str) -> ChannelClock:
        """Every-region: the channel's applied positions and greatest hlc (empty, 0 if unknown)."""
        ...

    async def origin_read_marker(self, user_id: str, channel_id: str) -> dict[str, int]:
        """Every-region: the user's read marker in the channel, per origin.

        Origin region -> the highest ``origin_seq`` of that origin the user has read
        (``{}`` if never). :meth:`apply` merges a ``read_marker_updated`` event's
        ``last_read_origins`` into it per origin as the maximum, so it never moves back
        and ends alike in every region whatever order the updates arrive in.
        """
        ...

    async def origin_read_markers(self, user_id: str) -> dict[str, dict[str, int]]:
        """Every-region: channel_id -> :meth:`origin_read_marker`, for every channel with one."""
        ...

    async def known_message(self, message_id: str) -> MessageRecord | None:
        """Every-region: a message created in any region, as this region knows it.

        Enough to authorize an edit or delete of a message written elsewhere:
        channel, sender, whether deleted (a delete is final, even one applied
        before the creation arrived) and ``body``, the kept creation's message
        (empty once deleted). ``seq`` is 0. None until a creation is applied.
        """
        ...

    async def close(self) -> None:
        """Releases connections."""
        ...


class HistoryStore(Protocol):
    """Channel event logs and message state."""

    async def apply(self, events: Sequence[events_pb2.Event], stream_seq: int = 0) -> int:
        """Applies channel events in order (idempotent) and records ``stream_seq`` as applied.

        Returns:
            How many events were new.
        """
        ...

    async def history(
        self,
        channel_id: str,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int = 50,
    ) -> HistoryPage:
        """A page of messages, ascending by seq.

        ``after_seq`` set (0 = from the start): the oldest ``limit`` messages with
        seq > after_seq (and < before_seq if set), ``has_more`` = newer ones exist
        in range. Otherwise: the newest ``limit`` messages with seq < before_seq
        (no bound if None), ``has_more`` = older ones exist.
        """
        ...

    async def events_after(
        self, channel_id: str, after_seq: int, limit: int = 500
    ) -> list[events_pb2.Event]:
        """Channel events with seq > ``after_seq``, ascending, at most ``limit``."""
        ...

    async def last_seq(self, channel_id: str) -> int:
        """Newest seq of the channel's log (0 if none)."""
        ...

    async def unread_count(
        self, channel_id: str, after_seq: int, user_id: str, cap: int = UNREAD_CAP
    ) -> int:
        """Undeleted messages by others with seq > ``after_seq``, at most ``cap``."""
        ...

    async def applied_stream_seq(self) -> int:
        """The highest EVENTS stream sequence applied to this store."""
        ...

    async def last_origin_seqs(self, channel_id: str) -> dict[str, int]:
        """Every-region: origin region -> the channel's applied ``origin_seq`` (no hole below).

        The highest ``origin_seq`` up to which every event of that origin is applied.
        A hole stops the count (events after it are applied, but not counted until it
        is filled), so resuming or gap-filling after these positions misses nothing.
        Origins with nothing applied are absent; ``{}`` for an unknown channel.
        """
        ...

    async def origin_events_after(
        self, channel_id: str, origin_region: str, after_origin_seq: int, limit: int = 500
    ) -> list[events_pb2.Event]:
        """Every-region: the channel's events of one origin after an ``origin_seq``.

        Those written in ``origin_region`` with ``origin_seq`` > ``after_origin_seq``,
        ascending by ``origin_seq``, at most ``limit``. The events as published (read them through :class:`mesh.stores.current.CurrentHistory`
        to show messages in their current state). Holes are not filled: the list may
        skip a position this store has not applied.
        """
        ...

    async def ordered_history(
        self, channel_id: str, *, before: OrderKey | None = None, limit: int = 50
    ) -> OrderedPage:
        """Every-region: a page of messages in order key order, newest page first.

        The newest ``limit`` messages with order key < ``before`` (no bound if None),
        ascending by order key, in their current state (edits by last writer,
        deletes as tombstones, one message per id).
        """
        ...

    async def origin_unread_count(
        self,
        channel_id: str,
        read_through: Mapping[str, int],
        user_id: str,
        cap: int = UNREAD_CAP,
    ) -> int:
        """Every-region: messages unread after a per-origin read marker, at most ``cap``.

        Messages shown in the channel (one per id: the kept creation's origin and
        ``origin_seq``), not deleted, not sent by ``user_id``, whose ``origin_seq`` is
        above ``read_through`` of their origin region (0 for an origin not in it). By
        position, not by hlc: a late message from a region that was cut off counts as
        unread even when its timestamp sorts it before messages already read.
        """
        ...

    async def messages_by_id(
        self, channel_id: str, message_ids: Sequence[str]
    ) -> dict[str, message_pb2.Message]:
        """Every-region: the current state of the channel's messages with these ids.

        Messages not created yet (in this store) are absent.
        """
        ...

    async def close(self) -> None:
        """Releases connections."""
        ...
