"""A Subscribe stream that survives reconnects: resume by position, no duplicates.

:class:`Subscription` opens ``NotificationService.Subscribe`` with the positions it
holds (:class:`~mesh.client._positions.ResumePositions`), yields what arrives, and
when the stream ends in a way :func:`~mesh.client._retry.resumable` accepts (a
restart, a slow-consumer cut, a dead connection), waits with the client's backoff
and opens it again with ``resume_from`` = the last seq it yielded per channel.
Events at or below a channel's position are dropped, so the seam between two
connections shows neither a gap the server could fill nor a duplicate.

A stream whose heartbeat promised an item every ``timeout_ms`` and then fell
silent is presumed dead (a proxy or the network lost it without a reset) and
reconnected the same way.

Gaps: the server never skips a channel's events. When it cannot find the next
ones in time it ends the stream with UNAVAILABLE (``STREAM_GAP``) naming the
channel and the missing range; an event beyond a channel's next seq (which a
server should never send) is treated the same way and not yielded. Either way
:meth:`Subscription._await_range` asks ``QueryService.GetHistory`` until the
region holds the range (its ``last_seq``), then the stream resumes from the
last seq yielded and the server's replay delivers the range as events — edits,
joins and leaves included, which GetHistory's messages alone could not carry.
Nothing is lost and nothing is yielded out of order.

Every-region write mode (ADR-026): events carry ``origin_seq`` and positions are
kept per channel and origin region; the stream resumes with
``resume_from_origins``, and a gap (the server's STREAM_GAP naming
``origin_region`` and ``last_missing_origin_seq``, or a jump seen here) waits
until GetHistory's ``last_origin_seqs`` shows the region holds the range, then
resubscribes from the positions: the server replays each origin after them.
Events are yielded in per-origin order; a channel's display order across
origins is (hlc, origin_region, message_id): see :class:`~mesh.client.Timeline`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

import grpc

from chatmesh.v1 import events_pb2, notification_service_pb2 as npb
from mesh.client._positions import ResumePositions, Verdict
from mesh.client._retry import Budget, RetryPolicy, resumable
from mesh.core.errors import ChatmeshError, Unavailable
from mesh.rpc.status import from_rpc_error

__all__ = ["OpenStream", "Subscription"]

logger = logging.getLogger("mesh.client")

OpenStream = Callable[[dict[str, int], dict[str, dict[str, int]]], Awaitable[Any]]
"""Opens one Subscribe call with the given ``resume_from`` and ``resume_from_origins``
(a ``grpc.aio.UnaryStreamCall``)."""

LastSeq = Callable[[str, int], Awaitable[int]]
"""``(channel_id, after_seq)`` -> the newest seq of the channel the region holds (GetHistory)."""

LastOriginSeqs = Callable[[str], Awaitable[dict[str, int]]]
"""``channel_id`` -> per origin region, the newest origin_seq the region holds (GetHistory)."""

GAP_PATIENCE = 60.0
"""Seconds :meth:`Subscription._await_range` asks before resuming anyway (the server waits too)."""


class _Gap(Exception):
    """An event arrived beyond its channel's next seq: resume instead of yielding it."""

    def __init__(self, error: Unavailable) -> None:
        super().__init__(error.message)
        self.error = error


class Subscription:
    """The caller's event stream, reconnected and resumed automatically.

    ``async for event in subscription`` yields channel and ephemeral events;
    :meth:`responses` yields every stream item (events, heartbeats, replay_complete,
    which follows every (re)connection's replay). Iterate one of them, once.

    Attributes:
        positions: The last seq yielded per channel (the next ``resume_from``).
        reconnects: How many times the stream was opened again.
        duplicates: Events dropped as at or below their channel's position. The server
            never sends those (it replays strictly after ``resume_from``), so a count
            above 0 is worth a log line; tests assert it stays 0.
        gaps: Events that arrived beyond their channel's next seq.
        last_error: Why the most recent connection ended (None: none has).
    """

    def __init__(
        self,
        open_stream: OpenStream,
        resume_from: Mapping[str, int] | None = None,
        *,
        retry: RetryPolicy,
        reconnect: bool = True,
        heartbeat_watchdog: bool = True,
        last_seq: LastSeq | None = None,
        resume_from_origins: Mapping[str, Mapping[str, int]] | None = None,
        last_origin_seqs: LastOriginSeqs | None = None,
    ) -> None:
        """Prepares the subscription; nothing is sent until iteration starts.

        Args:
            open_stream: Opens one call (the client supplies it, with auth metadata).
            resume_from: Channel -> last seq the caller has; replayed from there.
            retry: Backoff and budget between reconnects (reset once a connection delivers).
            reconnect: False: the first ending is final (an error is raised as is).
            heartbeat_watchdog: Reconnect a stream silent for longer than its heartbeat promised.
            last_seq: Asks the region's history how far a channel reaches (GetHistory);
                after a gap the stream resumes once it holds the missing range.
            resume_from_origins: Every-region mode: channel -> origin region -> last
                origin_seq the caller has; replayed from there.
            last_origin_seqs: Every-region mode's ``last_seq``: how far each origin of
                a channel reaches in the region's history.
        """
        self.positions = ResumePositions(resume_from, resume_from_origins)
        self.reconnects = 0
        self.duplicates = 0
        self.gaps = 0
        self.last_error: ChatmeshError | None = None
        self._open = open_stream
        self._retry = retry
        self._reconnect = reconnect
        self._watchdog_enabled = heartbeat_watchdog
        self._call: Any = None
        self._closed = False
        self._stale = False
        self._last_seen = 0.0
        self._dead_after: float | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._started = False
        self._last_seq = last_seq
        self._last_origin_seqs = last_origin_seqs
        self.gap_waits = 0
        """Times the stream resumed after a gap (server STREAM_GAP or a jump it saw)."""

    # -- iteration -------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[events_pb2.Event]:
        return self.events()

    async def events(self) -> AsyncIterator[events_pb2.Event]:
        """Every event, de-duplicated across reconnects."""
        async for item in self.responses():
            if item.WhichOneof("kind") == "event":
                yield item.event

    async def responses(self) -> AsyncIterator[npb.SubscribeResponse]:
        """Every stream item: events (de-duplicated), heartbeats, replay_complete.

        Raises:
            ChatmeshError: The stream ended with an error that is not resumable
                (e.g. :class:`~mesh.core.errors.PermissionDenied` for a channel in
                ``resume_from``), or reconnecting used up the retry budget.
        """
        if self._started:
            raise RuntimeError("a Subscription can be iterated once")
        self._started = True
        loop = asyncio.get_running_loop()
        budget: Budget | None = None
        while not self.closed():
            call = await self._open(self.positions.snapshot(), self.positions.origin_snapshot())
            self._call, self._stale, self._last_seen = call, False, loop.time()
            err: ChatmeshError | None = None
            cause: BaseException | None = None
            try:
                async for item in call:
                    self._last_seen = loop.time()
                    budget = None  # this connection works: a later failure starts afresh
                    kind = item.WhichOneof("kind")
                    if kind == "event" and item.event.origin_seq > 0 and item.event.channel_id:
                        event = item.event
                        at = self.positions.get_origin(event.channel_id, event.origin_region)
                        verdict = self.positions.admit_origin(
                            event.channel_id, event.origin_region, event.origin_seq
                        )
                        if verdict is Verdict.DUPLICATE:
                            self.duplicates += 1
                            continue
                        if verdict is Verdict.GAP:
                            self.gaps += 1
                            raise _Gap(self._on_origin_gap(item, at or 0))
                    elif kind == "event":
                        event = item.event
                        previous = self.positions.get(event.channel_id) or 0
                        verdict = self.positions.admit(event.channel_id, event.seq)
                        if verdict is Verdict.DUPLICATE:
                            self.duplicates += 1
                            continue
                        if verdict is Verdict.GAP:
                            self.gaps += 1
                            raise _Gap(self._on_gap(item, previous))
                    elif kind == "heartbeat" and self._watchdog_enabled:
                        self._arm_watchdog(call, item.heartbeat.timeout_ms / 1000)
                    yield item
            except grpc.aio.AioRpcError as exc:
                err, cause = from_rpc_error(exc), exc
            except _Gap as gap:
                err, cause = gap.error, None
            except asyncio.CancelledError:
                # Ours to handle only when we cancelled the call (close, watchdog),
                # never when the task iterating us is being cancelled.
                task = asyncio.current_task()
                if (task is not None and task.cancelling()) or not (self._stale or self._closed):
                    raise
                if not self._closed:
                    err = Unavailable(
                        "UNSPECIFIED",
                        f"nothing arrived within {self._dead_after}s of the last item; "
                        "the connection is presumed dead",
                    )
            finally:
                self._disarm_watchdog()
                call.cancel()
            if self.closed():
                return
            self.last_error = err
            if not (self._reconnect and resumable(err)):
                if err is None:
                    return
                raise err from cause
            if budget is None:
                budget = Budget(self._retry)
                budget.start_attempt()  # the connection that just ended
            wait = budget.next_wait(server_delay=err.retry_delay if err else None)
            if wait is None:
                if err is None:
                    err = Unavailable("UNSPECIFIED", "the stream kept ending; retry budget spent")
                raise err from cause
            if err is not None and err.reason == "STREAM_GAP":
                self.gap_waits += 1
                await self._await_range(err)
            logger.info(
                "subscription ended (%s); reconnecting in %.2fs with %d positions",
                f"{err.code} {err.reason}" if err else "end of stream",
                wait,
                len(self.positions),
            )
            await asyncio.sleep(wait)
            budget.start_attempt()
            self.reconnects += 1

    def _on_gap(self, item: npb.SubscribeResponse, previous: int) -> Unavailable:
        """An event beyond its channel's next seq: not yielded; the stream resumes before it."""
        event = item.event
        # admit() moved the position to the event; put it back where it was.
        self.positions.rewind(event.channel_id, previous)
        logger.warning(
            "gap in %s: got seq %d after %d; resuming from %d instead of skipping",
            event.channel_id, event.seq, previous, previous,
        )  # fmt: skip
        return Unavailable(
            "STREAM_GAP",
            f"the stream jumped from {previous} to {event.seq} in {event.channel_id}",
            channel_id=event.channel_id,
            last_delivered_seq=str(previous),
            first_missing_seq=str(previous + 1),
            last_missing_seq=str(event.seq - 1),
        )

    def _on_origin_gap(self, item: npb.SubscribeResponse, previous: int) -> Unavailable:
        """:meth:`_on_gap` for an every-region event beyond its origin's next origin_seq."""
        event = item.event
        channel, origin = event.channel_id, event.origin_region
        self.positions.rewind_origin(channel, origin, previous)
        logger.warning(
            "gap in %s from %s: got origin seq %d after %d; resuming instead of skipping",
            channel, origin, event.origin_seq, previous,
        )  # fmt: skip
        return Unavailable(
            "STREAM_GAP",
            f"the stream jumped from {previous} to {event.origin_seq} of {origin} in {channel}",
            channel_id=channel,
            origin_region=origin,
            last_delivered_origin_seq=str(previous),
            first_missing_origin_seq=str(previous + 1),
            last_missing_origin_seq=str(event.origin_seq - 1),
        )

    async def _await_origin_range(self, err: ChatmeshError) -> None:
        """:meth:`_await_range` for a gap of one origin (every-region mode).

        Asks GetHistory's ``last_origin_seqs``; then the stream resubscribes from
        its positions and the server replays the range.
        """
        channel = err.metadata.get("channel_id", "")
        origin = err.metadata.get("origin_region", "")
        try:
            want = int(err.metadata.get("last_missing_origin_seq", "0"))
        except ValueError:
            want = 0
        if self._last_origin_seqs is None or not channel or not origin or want <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GAP_PATIENCE
        delay = 0.2
        while not self.closed():
            try:
                known = await self._last_origin_seqs(channel)
            except ChatmeshError as exc:
                logger.info("GetHistory for the gap in %s failed (%s); resuming", channel, exc)
                return
            if not known:
                return  # the region tells nothing per origin: the resumed stream waits instead
            have = known.get(origin, 0)
            if have >= want or loop.time() + delay > deadline:
                return
            logger.info("gap in %s from %s: the region has %d of %d; waiting",
                        channel, origin, have, want)  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _await_range(self, err: ChatmeshError) -> None:
        """Waits until the region's history holds the range ``err`` names (GetHistory).

        Bounded by :data:`GAP_PATIENCE`; a failing GetHistory ends the wait early (the
        resumed stream waits on the server side as well, and may end with STREAM_GAP
        again: still nothing skipped).
        """
        if err.metadata.get("origin_region"):
            await self._await_origin_range(err)
            return
        channel = err.metadata.get("channel_id", "")
        try:
            want = int(err.metadata.get("last_missing_seq", "0"))
        except ValueError:
            want = 0
        if self._last_seq is None or not channel or want <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GAP_PATIENCE
        delay = 0.2
        while not self.closed():
            after = self.positions.get(channel) or 0
            try:
                have = await self._last_seq(channel, after)
            except ChatmeshError as exc:
                logger.info("GetHistory for the gap in %s failed (%s); resuming", channel, exc)
                return
            if have >= want or loop.time() + delay > deadline:
                return
            logger.info("gap in %s: the region has %d of %d; waiting", channel, have, want)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    # -- heartbeat watchdog -----------------------------------------------------------

    def _arm_watchdog(self, call: Any, dead_after: float) -> None:
        if dead_after <= 0:
            return
        self._dead_after = dead_after
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch(call))

    def _disarm_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def _watch(self, call: Any) -> None:
        # One timer per stream that wakes when the stream could first be stale,
        # instead of a timeout around every read (the read loop stays cheap).
        loop = asyncio.get_running_loop()
        while True:
            assert self._dead_after is not None
            idle = loop.time() - self._last_seen
            if idle >= self._dead_after:
                self._stale = True
                call.cancel()
                return
            await asyncio.sleep(self._dead_after - idle)

    # -- lifetime ----------------------------------------------------------------------

    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    async def close(self) -> None:
        """Ends the subscription: the current call is cancelled and iteration stops."""
        self._closed = True
        self._disarm_watchdog()
        if self._call is not None:
            self._call.cancel()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            await self.close()
