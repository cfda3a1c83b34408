"""Command Service domain logic: authorize, sequence, log, project, publish.

Every channel event goes through :meth:`Commands._commit`, under the channel's
lock (one writer per channel, so the EVENTS stream holds each channel's events
in seq order):

1. publish whatever the channel's log still holds unpublished (a crash or a
   JetStream outage left it there), so order is never broken;
2. for idempotent commands, return the logged result if the key is known;
3. take the next seq and append the event to the command log — the single
   source of truth for ``(channel_id, seq)``; a unique key on
   ``(channel_id, seq)`` and on the idempotency key make a second writer or a
   concurrent retry fail instead of forking the log;
4. project it into the primary metadata store and message index (idempotent);
5. publish it to JetStream with ``Nats-Msg-Id`` = the event's dedup id, and
   return once JetStream acknowledged it; then mark it published.

A crash between any two steps is repaired by the next command on the channel
or the periodic republisher: steps 4 and 5 are idempotent, and the event bytes
come from the log, so a retry publishes the very same event.

**The every-region write mode** (ADR-026, ``writes="every-region"``): every
region runs this service for its own users and writes its own stream
``EVENTS_<REGION>``; the steps are the same. The command log holds this region's
events only, so a channel's log position is exactly the event's ``origin_seq``;
on the wire ``seq`` is 0, ``origin_region`` is this region and ``hlc`` comes
from a :class:`~mesh.core.hlc.Clock` that first observed the greatest hlc this
region has applied to the channel (the metadata store's
:meth:`~mesh.stores.MetadataStore.channel_clock`, kept by this service and by
the worker applying ``ALL_<REGION>``), so a reply sorts after what it answers.
Joins and leaves carry the region's version vector of the channel
(``observed``). Channels, members and messages written in other regions are
known from the same metadata store, so membership checks and edits or deletes
of a message written elsewhere work as for local ones; a send or a
``client_request_id`` creation already known from another region is answered
as a duplicate instead of being written again (and two concurrent ones converge
to one message or channel).

This module knows nothing of gRPC: it takes request messages and the caller's
id, and raises :mod:`mesh.core.errors` exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import Callable

from chatmesh.v1 import channel_pb2, command_service_pb2 as pb, events_pb2, message_pb2
from mesh.bus.interfaces import Bus, EventPublisher, JetStream
from mesh.bus.subjects import (
    EVENTS_STREAM,
    WRITES_EVERY_REGION,
    WRITES_PRIMARY,
    Subjects,
    origin_stream_name,
)
from mesh.core import ids
from mesh.core.convergence import cap_read_marker, merge_read_markers
from mesh.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from mesh.core.events import new_event, now_ms
from mesh.core.hlc import Clock, ClockSkewError
from mesh.core.ratelimit import RateLimiter
from mesh.stores import CommandStore, LogConflict, LogEntry, MessageRecord, MetadataStore

__all__ = ["Commands", "FairLock"]

logger = logging.getLogger(__name__)


def dedup_id(event: events_pb2.Event) -> str:
    """The ``Nats-Msg-Id`` of an event.

    For sends it is the message id (itself derived from the sender's
    idempotency key); for other events, the event id. In the every-region mode
    (ADR-026) it is the event's origin position, ``<origin>:<channel>:<origin_seq>``:
    a send retried through another region has the same message id in both, and
    ``ALL_<REGION>``'s sources de-duplicate by this header too, so a region-free id
    could drop one origin's copy in some regions and leave a hole in its positions.
    """
    if event.origin_seq > 0:
        return f"{event.origin_region}:{event.channel_id}:{event.origin_seq}"
    if event.WhichOneof("payload") == "message_created":
        return event.message_created.message.message_id
    return event.event_id


REPAIR = ""
"""The caller name of the republisher's turns at a channel lock (no user id is empty)."""


class FairLock:
    """A mutex whose waiters are served round-robin by caller, FIFO within a caller.

    The channel lock of :meth:`Commands._commit`: every write to a channel holds it
    through its log append and JetStream's ack (a few milliseconds), so a channel's
    writes run one at a time. With a plain FIFO lock a user who gets a burst of
    commands admitted at once (the send bucket's burst, or a flood's refill) queues
    them all ahead of every other member's next message, which then waits for the
    whole burst: one flooder on a shared channel made a calm member's send take
    ~200 ms (docs/benchmarks.md, flood). Served round-robin, another user waits for
    at most one write of each user already queued, whatever their backlog; a
    user's own commands keep their order. Which waiter goes next changes nothing
    else: the seq is taken under the lock.

    Example:
        >>> async def demo() -> list[str]:
        ...     lock, order = FairLock(), []
        ...     async def write(who: str) -> None:
        ...         async with lock.hold(who):
        ...             order.append(who)
        ...             await asyncio.sleep(0)
        ...     await asyncio.gather(*(write(w) for w in ["hog", "hog", "hog", "calm"]))
        ...     return order
        >>> asyncio.run(demo())
        ['hog', 'hog', 'calm', 'hog']
    """

    def __init__(self) -> None:
        self._held = False
        self._waiters: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        """Callers with queued waiters, in the order they are served next."""

    def locked(self) -> bool:
        """True while held or waited for."""
        return self._held or bool(self._waiters)

    def hold(self, caller: str) -> _Hold:
        """Holds the lock for ``caller`` (queued behind one turn of each other caller)."""
        # A small class rather than @asynccontextmanager: every command takes this
        # lock, and the generator-based form cost a generator and a wrapper per call.
        return _Hold(self, caller)

    async def _acquire(self, caller: str) -> None:
        if not self.locked():
            self._held = True
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiters.get(caller)
        if queue is None:
            queue = self._waiters[caller] = deque()
        queue.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # granted just as it was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):  # already skipped by _release
                    queue.remove(future)
                if not queue and self._waiters.get(caller) is queue:
                    del self._waiters[caller]
            raise

    def _release(self) -> None:
        while self._waiters:
            caller, queue = next(iter(self._waiters.items()))
            future = queue.popleft()
            # This caller's next turn comes after every other queued caller's.
            del self._waiters[caller]
            if queue:
                self._waiters[caller] = queue
            if not future.done():
                future.set_result(None)  # stays held: handed over
                return
        self._held = False


class _Hold:
    """``async with lock.hold(caller)``: acquires on entry, releases on exit."""

    __slots__ = ("_caller", "_lock")

    def __init__(self, lock: FairLock, caller: str) -> None:
        self._lock = lock
        self._caller = caller

    async def __aenter__(self) -> None:
        await self._lock._acquire(self._caller)

    async def __aexit__(self, *exc: object) -> None:
        self._lock._release()


class _Locks:
    """One :class:`FairLock` per channel, forgetting idle ones (bounded memory)."""

    def __init__(self, keep: int = 50_000) -> None:
        self._locks: OrderedDict[str, FairLock] = OrderedDict()
        self._keep = keep

    def get(self, key: str) -> FairLock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = FairLock()
            while len(self._locks) > self._keep:
                oldest, old = next(iter(self._locks.items()))
                if old.locked():
                    break
                del self._locks[oldest]
        else:
            self._locks.move_to_end(key)
        return lock


class Commands:
    """The write side of chatmesh."""

    def __init__(
        self,
        *,
        bus: Bus,
        events: EventPublisher,
        jetstream: JetStream,
        command_store: CommandStore,
        metadata: MetadataStore,
        region: str,
        publish_timeout: float = 5.0,
        typing_ttl: float = 6.0,
        max_initial_members: int = 100,
        fence: Callable[[], bool] | None = None,
        max_inflight: int = 512,
        limiter: RateLimiter | None = None,
        writes: str = WRITES_PRIMARY,
        events_stream: str = "",
        clock: Clock | None = None,
    ) -> None:
        """Wires the stores and the bus.

        Args:
            bus: Core NATS, for typing indicators.
            events: Publishes channel and user events into EVENTS.
            jetstream: Reads a channel's newest event from EVENTS (seq floor at start).
            command_store: The command log (the source of truth for seqs).
            metadata: The primary metadata store (authorization, projections).
            region: This service's region (the default origin of commands).
            publish_timeout: Seconds to wait for JetStream's ack.
            typing_ttl: Seconds a typing indicator lasts.
            max_initial_members: Most users CreateChannel may add besides the caller.
            fence: Whether this instance holds the write lease now (ADR-019), checked
                before every command and again right before the log append; None: the
                only writer.
            max_inflight: Commands in progress above which new ones are shed.
            limiter: Per-user token buckets (``send``, ``typing``, ``create_channel``,
                ``join``); None: no limits.
            writes: ``"primary"`` or ``"every-region"`` (ADR-026; see the module docstring).
            events_stream: The stream events are published to; empty: ``EVENTS``, or
                ``EVENTS_<REGION>`` in the every-region mode.
            clock: The region's hybrid logical clock (every-region mode; default a new one).
        """
        self.bus = bus
        self.events = events
        self.jetstream = jetstream
        self.log = command_store
        self.metadata = metadata
        self.region = region
        self.publish_timeout = publish_timeout
        self.typing_ttl = typing_ttl
        self.max_initial_members = max_initial_members
        self._locks = _Locks()
        self._last_seq: dict[str, int] = {}
        self._published_through: dict[str, int] = {}
        """Channel -> the seq this process last appended *and* published there. While it
        equals ``_last_seq`` nothing of the channel's can be unpublished (any other
        writer's append makes ours conflict first), so a send skips the pending read."""
        self.fence = fence
        self.max_inflight = max_inflight
        self.catching_up = False
        """True while start-up (or a takeover) republishes what the log holds unpublished:
        commands are shed with RetryInfo rather than left to queue behind it."""
        self.inflight = 0
        self.shed = 0
        """Commands refused by :meth:`admit` (standby, catching up, overloaded)."""
        self.limiter = limiter if limiter is not None else RateLimiter({})
        if writes not in (WRITES_PRIMARY, WRITES_EVERY_REGION):
            raise ValueError(
                f"writes = {writes!r}: expected {WRITES_PRIMARY!r} or {WRITES_EVERY_REGION!r}"
            )
        self.every_region = writes == WRITES_EVERY_REGION
        self.events_stream = events_stream or (
            origin_stream_name(region) if self.every_region else EVENTS_STREAM
        )
        self.clock = clock if clock is not None else Clock()

    # -- admission -------------------------------------------------------------

    SHED_RETRY_DELAY = 0.2
    """Seconds the RetryInfo of a shed command asks the client to wait."""

    def admit(self) -> None:
        """Refuses a command at once if this instance cannot take it now.

        Raises:
            Unavailable: With RetryInfo: this instance is a standby (another holds the
                write lease), is catching up after a start or takeover, or has
                ``max_inflight`` commands in progress. Nothing was done, so the
                client (or the edge) retries, possibly on another instance.
        """
        if self.fence is not None and not self.fence():
            self.shed += 1
            raise Unavailable("BACKEND_UNAVAILABLE", "standby: another Command Service "
                              "instance holds the write lease; retry", retry_delay=self.SHED_RETRY_DELAY)  # fmt: skip
        if self.catching_up:
            self.shed += 1
            raise Unavailable("BACKEND_UNAVAILABLE", "catching up after a restart; retry",
                              retry_delay=self.SHED_RETRY_DELAY)  # fmt: skip
        if self.inflight >= self.max_inflight:
            self.shed += 1
            raise Unavailable("BACKEND_UNAVAILABLE", "overloaded; retry",
                              retry_delay=self.SHED_RETRY_DELAY)  # fmt: skip

    async def take_over(self) -> int:
        """Becomes the writer (at start-up, or when the lease was just acquired).

        Forgets cached seqs (another instance may have written since) and publishes
        whatever the log holds unpublished, shedding commands meanwhile.

        Returns:
            The number of channels repaired.
        """
        self.catching_up = True
        try:
            self._last_seq.clear()
            self._published_through.clear()
            return await self.republish_pending()
        finally:
            self.catching_up = False

    def _check_fence(self) -> None:
        if self.fence is not None and not self.fence():
            raise Unavailable("BACKEND_UNAVAILABLE", "lost the write lease; retry",
                              retry_delay=self.SHED_RETRY_DELAY)  # fmt: skip

    # -- the write path --------------------------------------------------------

    async def _stream_last_seq(self, channel_id: str) -> int:
        """The seq of the channel's newest event in EVENTS (0 if none or unknown)."""
        try:
            msg = await self.jetstream.get_last_msg(
                self.events_stream, self._subject(channel_id), timeout=self.publish_timeout
            )
        except Exception:  # noqa: BLE001 - JetStream down: the log alone decides (see _next_seq)
            return 0
        if msg is None:
            return 0
        try:
            event = events_pb2.Event.FromString(msg.data)
        except Exception:  # noqa: BLE001
            return 0
        return event.origin_seq if self.every_region else event.seq

    def _subject(self, channel_id: str) -> str:
        """The subject of the channel's events this service writes."""
        if self.every_region:
            return Subjects.origin_channel_events(self.region, channel_id)
        return Subjects.channel_events(channel_id)

    async def _next_seq(self, channel_id: str) -> int:
        last = self._last_seq.get(channel_id)
        if last is None:
            # First use since start: the log decides, but never go below what
            # the stream already holds (a log restored from an old backup must
            # not hand out a seq twice).
            last = max(await self.log.last_seq(channel_id), await self._stream_last_seq(channel_id))
        return last + 1

    async def _publish(self, channel_id: str, seq: int, payload: bytes, msg_id: str) -> None:
        """Publishes a logged event's bytes and marks them published.

        ``msg_id`` is the event's :func:`dedup_id`, taken from the event the caller
        holds: the bytes it just serialized are not parsed again.
        """
        await self.events.publish_event(
            self._subject(channel_id),
            payload,
            msg_id,
            timeout=self.publish_timeout,
            expected_stream=self.events_stream,
        )
        await self.log.mark_published(channel_id, seq)

    async def _message_record(self, event: events_pb2.Event) -> MessageRecord | None:
        """The message-index record an event creates or changes (None for other events)."""
        kind = event.WhichOneof("payload")
        if kind in ("message_created", "message_edited"):
            m = (
                event.message_created.message
                if kind == "message_created"
                else event.message_edited.message
            )
            return MessageRecord(
                m.message_id, m.channel_id, m.seq, m.sender_user_id, False, m.SerializeToString()
            )
        if kind == "message_deleted":
            record = await self.log.message(event.message_deleted.message_id)
            if record is not None:
                return MessageRecord(
                    record.message_id,
                    record.channel_id,
                    record.seq,
                    record.sender_user_id,
                    True,
                    b"",
                )
        return None

    async def _project(self, event: events_pb2.Event, *, with_message: bool) -> None:
        """Applies an event to the primary metadata (and, when repairing, the message index)."""
        await self.metadata.apply(event)
        if with_message:
            record = await self._message_record(event)
            if record is not None:
                await self.log.put_message(record)

    async def _flush_channel(self, channel_id: str) -> None:
        for entry in await self.log.unpublished(channel_id=channel_id):
            event = events_pb2.Event.FromString(entry.event)
            await self._project(event, with_message=True)
            await self._publish(entry.channel_id, entry.seq, entry.event, dedup_id(event))

    async def republish_pending(self) -> int:
        """Publishes every logged-but-unacknowledged entry (start-up and periodic repair).

        Returns:
            The number of channels that had pending entries.
        """
        channels = sorted({entry.channel_id for entry in await self.log.unpublished()})
        for channel_id in channels:
            async with self._locks.get(channel_id).hold(REPAIR):
                await self._flush_channel(channel_id)
        return len(channels)

    async def _commit(
        self,
        channel_id: str,
        user: str,
        build: Callable[[int], events_pb2.Event],
        *,
        idempotency_key: str | None = None,
        check: Callable[[], object] | None = None,
    ) -> tuple[events_pb2.Event, bool]:
        """Runs the write path for one channel event; returns ``(event, was_duplicate)``.

        ``user`` is whose turn it is at the channel's lock (:class:`FairLock`).
        """
        self.admit()
        self.inflight += 1
        try:
            return await self._commit_locked(
                channel_id, user, build, idempotency_key=idempotency_key, check=check
            )
        finally:
            self.inflight -= 1

    async def _commit_locked(
        self,
        channel_id: str,
        user: str,
        build: Callable[[int], events_pb2.Event],
        *,
        idempotency_key: str | None,
        check: Callable[[], object] | None,
    ) -> tuple[events_pb2.Event, bool]:
        async with self._locks.get(channel_id).hold(user):
            last = self._last_seq.get(channel_id)
            if last is None or self._published_through.get(channel_id) != last:
                # A publish failed here, or this process has not written the
                # channel since it started: what the log holds unpublished goes first.
                await self._flush_channel(channel_id)
            if idempotency_key is not None:
                existing = await self.log.by_idempotency_key(idempotency_key)
                if existing is not None:
                    return await self._replay_existing(existing), True
            if check is not None:
                result = check()
                if asyncio.iscoroutine(result):
                    await result
            for attempt in range(2):
                seq = await self._next_seq(channel_id)
                event = build(seq)
                if self.every_region:
                    await self._stamp(event, seq)
                payload = event.SerializeToString()
                record = await self._message_record(event)
                # The fence (ADR-019): a paused old leader finds its lease run out here.
                self._check_fence()
                try:
                    # One durable write: the log entry and the message record together.
                    await self.log.append(
                        LogEntry(channel_id, seq, payload, idempotency_key), record
                    )
                    break
                except LogConflict:
                    if idempotency_key is not None:
                        existing = await self.log.by_idempotency_key(idempotency_key)
                        if existing is not None:
                            return await self._replay_existing(existing), True
                    # Someone else wrote this seq (a second writer or a stale
                    # cache): reload from the log and try once more, after
                    # publishing what that writer may have left unpublished, so
                    # EVENTS keeps the channel's order.
                    self._last_seq.pop(channel_id, None)
                    self._check_fence()
                    await self._flush_channel(channel_id)
                    if attempt:
                        raise Unavailable(
                            "BACKEND_UNAVAILABLE", "concurrent writers on this channel; retry"
                        ) from None
            self._last_seq[channel_id] = seq
            await self._project(event, with_message=False)
            await self._publish(channel_id, seq, payload, dedup_id(event))
            self._published_through[channel_id] = seq
            return event, False

    async def _stamp(self, event: events_pb2.Event, seq: int) -> None:
        """Every-region mode: turns a built event's log position into its origin stamps.

        ``seq`` (the log's position, this region's events only) becomes ``origin_seq``;
        ``seq`` fields become 0; the hlc follows everything the region applied to the
        channel; joins and leaves record the region's version vector of the channel.
        """
        applied = await self.metadata.channel_clock(event.channel_id)
        try:
            hlc = self.clock.observe(applied.max_hlc)
        except ClockSkewError as exc:
            # A remote clock far ahead must not drag this one along (ADR-026); the
            # write goes on with the local clock, possibly sorting before what it answers.
            logger.warning("channel %s: not following its newest hlc (%s)", event.channel_id, exc)
            hlc = self.clock.now()
        event.seq, event.origin_seq, event.hlc = 0, seq, hlc
        event.origin_region = self.region
        kind = event.WhichOneof("payload")
        if kind == "message_created":
            m = event.message_created.message
            m.seq, m.hlc, m.origin_seq, m.origin_region = 0, hlc, seq, self.region
        elif kind == "channel_created":
            event.channel_created.channel.last_seq = 0
        elif kind == "message_deleted":
            event.message_deleted.message_seq = 0
        elif kind in ("member_joined", "member_left"):
            seen = dict(applied.seen)
            # This region's own events are all in its log, below this one.
            seen[self.region] = seq - 1
            observed = (
                event.member_joined.observed
                if kind == "member_joined"
                else event.member_left.observed
            )
            observed.update({origin: n for origin, n in seen.items() if n > 0})

    async def _replay_existing(self, entry: LogEntry) -> events_pb2.Event:
        """Makes sure a logged entry is published, and returns its event."""
        if not entry.published:
            await self._flush_channel(entry.channel_id)
        return events_pb2.Event.FromString(entry.event)

    # -- authorization helpers -------------------------------------------------

    async def _require_member(self, channel_id: str, user: str) -> None:
        if await self.metadata.is_member(channel_id, user):
            return
        if await self.metadata.channel(channel_id) is None:
            raise NotFound(
                "CHANNEL_NOT_FOUND", f"channel {channel_id} does not exist", channel_id=channel_id
            )
        raise PermissionDenied(
            "NOT_A_MEMBER", f"you are not a member of channel {channel_id}", channel_id=channel_id
        )

    async def _message(self, message_id: str) -> MessageRecord | None:
        """A message by id: this region's (primary mode: the only) writes, or any region's."""
        if self.every_region:
            return await self.metadata.known_message(message_id)
        return await self.log.message(message_id)

    async def _own_message(self, channel_id: str, message_id: str, user: str) -> MessageRecord:
        await self._require_member(channel_id, user)
        record = await self._message(message_id)
        if record is None or record.channel_id != channel_id:
            raise NotFound("MESSAGE_NOT_FOUND", f"message {message_id} does not exist in channel {channel_id}",
                           message_id=message_id)  # fmt: skip
        if record.sender_user_id != user:
            raise PermissionDenied(
                "NOT_THE_AUTHOR", "only the author may change a message", message_id=message_id
            )
        return record

    # -- commands ----------------------------------------------------------------

    async def create_channel(
        self, user: str, req: pb.CreateChannelRequest, origin: str
    ) -> pb.CreateChannelResponse:
        """CommandService.CreateChannel."""
        self.limiter.take(user, "create_channel")
        key = f"create:{user}:{req.client_request_id}" if req.client_request_id else None
        if key:
            # Derived without a region (like message ids): a retry through another
            # region names the same channel (ADR-026).
            channel_id = ids.derived("ch", user, req.client_request_id)
        else:
            channel_id = ids.new(f"ch_{self.region}" if self.every_region else "ch")
        members = sorted({user, *req.member_user_ids})
        visibility = req.visibility or channel_pb2.CHANNEL_VISIBILITY_PRIVATE
        if len(members) - 1 > self.max_initial_members:
            # Members are added without being asked: one call must not put a
            # thousand strangers in a channel (and in each other's presence).
            raise InvalidArgument(
                [
                    FieldViolation(
                        "member_user_ids",
                        "member_user_ids.max_initial",
                        f"at most {self.max_initial_members} other members at creation",
                    )
                ]
            )

        def build(seq: int) -> events_pb2.Event:
            event = new_event(channel_id, seq=seq, origin_region=origin, actor=user)
            ch = event.channel_created.channel
            ch.channel_id = channel_id
            ch.name = req.name
            ch.member_user_ids.extend(members)
            ch.created_by_user_id = user
            ch.created_at.CopyFrom(event.occurred_at)
            ch.visibility = visibility
            ch.last_seq = seq
            return event

        known: list[channel_pb2.Channel] = []

        async def known_elsewhere() -> None:
            channel = await self.metadata.channel(channel_id)
            if channel is not None:  # created through another region (or its log is gone)
                known.append(channel)
                raise _Known

        try:
            event, duplicate = await self._commit(
                channel_id,
                user,
                build,
                idempotency_key=key,
                check=known_elsewhere if self.every_region and key else None,
            )
        except _Known:
            channel = known[0]
            if (
                channel.created_by_user_id != user
                or channel.name != req.name
                or channel.visibility != visibility
            ):
                raise AlreadyExists(
                    "IDEMPOTENCY_KEY_REUSED", "client_request_id was used for a different channel"
                ) from None
            return pb.CreateChannelResponse(channel=channel)
        created = event.channel_created.channel
        if duplicate and (
            created.name != req.name
            or list(created.member_user_ids) != members
            or created.visibility != visibility
        ):
            raise AlreadyExists(
                "IDEMPOTENCY_KEY_REUSED", "client_request_id was used for a different channel"
            )
        return pb.CreateChannelResponse(channel=created)

    async def join_channel(
        self, user: str, req: pb.JoinChannelRequest, origin: str
    ) -> pb.JoinChannelResponse:
        """CommandService.JoinChannel."""
        self.limiter.take(user, "join")

        async def check() -> None:
            channel = await self.metadata.channel(req.channel_id)
            if channel is None:
                raise NotFound(
                    "CHANNEL_NOT_FOUND",
                    f"channel {req.channel_id} does not exist",
                    channel_id=req.channel_id,
                )
            if user in channel.member_user_ids:
                raise AlreadyExists(
                    "ALREADY_MEMBER", f"you are already a member of {req.channel_id}"
                )
            if channel.visibility != channel_pb2.CHANNEL_VISIBILITY_PUBLIC:
                raise PermissionDenied("CHANNEL_PRIVATE", f"channel {req.channel_id} is private")

        def build(seq: int) -> events_pb2.Event:
            event = new_event(req.channel_id, seq=seq, origin_region=origin, actor=user)
            event.member_joined.user_id = user
            return event

        await self._commit(req.channel_id, user, build, check=check)
        channel = await self.metadata.channel(req.channel_id)
        assert channel is not None
        return pb.JoinChannelResponse(channel=channel)

    async def leave_channel(
        self, user: str, req: pb.LeaveChannelRequest, origin: str
    ) -> pb.LeaveChannelResponse:
        """CommandService.LeaveChannel."""

        def build(seq: int) -> events_pb2.Event:
            event = new_event(req.channel_id, seq=seq, origin_region=origin, actor=user)
            event.member_left.user_id = user
            return event

        await self._commit(
            req.channel_id, user, build, check=lambda: self._require_member(req.channel_id, user)
        )
        return pb.LeaveChannelResponse()

    async def send_message(
        self, user: str, req: pb.SendMessageRequest, origin: str
    ) -> pb.SendMessageResponse:
        """CommandService.SendMessage."""
        self.limiter.take(user, "send")
        key = f"send:{user}:{req.client_msg_id}"
        message_id = ids.derived("msg", user, req.client_msg_id)

        def build(seq: int) -> events_pb2.Event:
            event = new_event(req.channel_id, seq=seq, origin_region=origin, actor=user)
            m = event.message_created.message
            m.message_id = message_id
            m.channel_id = req.channel_id
            m.seq = seq
            m.sender_user_id = user
            m.text = req.text
            m.created_at.CopyFrom(event.occurred_at)
            m.origin_region = origin
            m.client_msg_id = req.client_msg_id
            return event

        known: list[MessageRecord] = []

        async def check() -> None:
            await self._require_member(req.channel_id, user)
            if self.every_region:
                record = await self.metadata.known_message(message_id)
                if record is not None:  # sent through another region (a retry)
                    known.append(record)
                    raise _Known

        try:
            event, duplicate = await self._commit(
                req.channel_id,
                user,
                build,
                idempotency_key=key,
                check=check
                if self.every_region
                else lambda: self._require_member(req.channel_id, user),
            )
        except _Known:
            return self._known_send(known[0], req)
        if event.WhichOneof("payload") != "message_created":
            raise AlreadyExists(
                "IDEMPOTENCY_KEY_REUSED", "client_msg_id was used for another kind of command"
            )
        message = event.message_created.message
        if duplicate and (message.channel_id != req.channel_id or message.text != req.text):
            raise AlreadyExists(
                "IDEMPOTENCY_KEY_REUSED",
                f"client_msg_id {req.client_msg_id!r} was already used for a different message",
                message_id=message.message_id,
            )
        return pb.SendMessageResponse(message=message, duplicate=duplicate)

    @staticmethod
    def _known_send(record: MessageRecord, req: pb.SendMessageRequest) -> pb.SendMessageResponse:
        """The answer to a send whose message another region wrote already (a duplicate)."""
        if record.body:
            message = message_pb2.Message.FromString(record.body)
        else:  # deleted meanwhile: the tombstone
            message = message_pb2.Message(
                message_id=record.message_id, channel_id=record.channel_id,
                sender_user_id=record.sender_user_id, deleted=True,
                client_msg_id=req.client_msg_id,
            )  # fmt: skip
        if message.channel_id != req.channel_id or (
            not message.deleted and message.text != req.text
        ):
            raise AlreadyExists(
                "IDEMPOTENCY_KEY_REUSED",
                f"client_msg_id {req.client_msg_id!r} was already used for a different message",
                message_id=message.message_id,
            )
        return pb.SendMessageResponse(message=message, duplicate=True)

    async def edit_message(
        self, user: str, req: pb.EditMessageRequest, origin: str
    ) -> pb.EditMessageResponse:
        """CommandService.EditMessage."""
        self.limiter.take(user, "send")
        current: dict[str, message_pb2.Message] = {}

        async def check() -> None:
            record = await self._own_message(req.channel_id, req.message_id, user)
            if record.deleted:
                raise FailedPrecondition("MESSAGE_DELETED", f"message {req.message_id} was deleted")
            current["message"] = message_pb2.Message.FromString(record.body)

        def build(seq: int) -> events_pb2.Event:
            event = new_event(req.channel_id, seq=seq, origin_region=origin, actor=user)
            m = event.message_edited.message
            m.CopyFrom(current["message"])
            m.text = req.text
            m.edited_at.CopyFrom(event.occurred_at)
            m.client_msg_id = ""
            return event

        event, _ = await self._commit(req.channel_id, user, build, check=check)
        return pb.EditMessageResponse(message=event.message_edited.message)

    async def delete_message(
        self, user: str, req: pb.DeleteMessageRequest, origin: str
    ) -> pb.DeleteMessageResponse:
        """CommandService.DeleteMessage (deleting twice is a no-op)."""
        self.limiter.take(user, "send")
        record = await self._own_message(req.channel_id, req.message_id, user)
        if record.deleted:
            return pb.DeleteMessageResponse()

        async def check() -> None:
            again = await self._own_message(req.channel_id, req.message_id, user)
            if again.deleted:
                raise _AlreadyDeleted

        def build(seq: int) -> events_pb2.Event:
            event = new_event(req.channel_id, seq=seq, origin_region=origin, actor=user)
            event.message_deleted.message_id = req.message_id
            event.message_deleted.message_seq = record.seq
            return event

        with contextlib.suppress(_AlreadyDeleted):
            await self._commit(req.channel_id, user, build, check=check)
        return pb.DeleteMessageResponse()

    async def set_typing(
        self, user: str, req: pb.SetTypingRequest, origin: str
    ) -> pb.SetTypingResponse:
        """CommandService.SetTyping: ephemeral, core NATS only."""
        self.admit()
        self.limiter.take(user, "typing")
        await self._require_member(req.channel_id, user)
        event = new_event(req.channel_id, seq=0, origin_region=origin, actor=user)
        event.typing_changed.user_id = user
        event.typing_changed.typing = req.typing
        event.typing_changed.expires_at.FromMilliseconds(now_ms() + int(self.typing_ttl * 1000))
        try:
            await self.bus.publish(Subjects.typing(req.channel_id), event.SerializeToString())
        except Exception as exc:  # noqa: BLE001 - connection closed / reconnecting
            raise Unavailable(
                "BACKEND_UNAVAILABLE", f"typing could not be sent ({type(exc).__name__})"
            ) from None
        return pb.SetTypingResponse()

    async def mark_read(
        self, user: str, req: pb.MarkReadRequest, origin: str
    ) -> pb.MarkReadResponse:
        """CommandService.MarkRead: the marker only moves forward, and never past the channel's end."""
        self.admit()
        await self._require_member(req.channel_id, user)
        channel = await self.metadata.channel(req.channel_id)
        last_seq = channel.last_seq if channel else 0
        current = await self.metadata.read_marker(user, req.channel_id)
        target = max(current, min(req.seq, last_seq))
        event = new_event(req.channel_id, seq=0, origin_region=origin, actor=user)
        event.read_marker_updated.user_id = user
        event.read_marker_updated.last_read_seq = target
        msg_id = f"rm:{user}:{req.channel_id}:{target}"
        if self.every_region:
            # Per origin the maximum of the stored and the requested position, each
            # capped at what this region has applied of that origin (ADR-026).
            known = (await self.metadata.channel_clock(req.channel_id)).seen
            merged = merge_read_markers(
                await self.metadata.origin_read_marker(user, req.channel_id),
                cap_read_marker(req.read_through_origins, known),
            )
            event.read_marker_updated.last_read_origins.update(merged)
            # One id per (writing region, marker): a repeat is de-duplicated, a move is not.
            msg_id = f"rm:{self.region}:{user}:{req.channel_id}:" + ",".join(
                f"{o}={n}" for o, n in merged.items()
            )
        await self.metadata.apply(event)
        await self.events.publish_event(
            Subjects.origin_user_events(self.region, user)
            if self.every_region
            else Subjects.user_events(user),
            event.SerializeToString(),
            msg_id,
            timeout=self.publish_timeout,
            expected_stream=self.events_stream,
        )
        response = pb.MarkReadResponse(last_read_seq=target)
        response.last_read_origins.update(event.read_marker_updated.last_read_origins)
        return response


class _AlreadyDeleted(Exception):
    """Raised inside the lock when a concurrent delete got there first."""


class _Known(Exception):
    """Raised inside the lock: what the command would create exists already (from another region)."""
