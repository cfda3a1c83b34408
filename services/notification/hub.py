"""The notification instance: client streams, routes, ordering and catch-up.

Guarantees to each stream, per channel: events in strictly increasing seq, no
duplicates, no gaps — across the replay/live seam, Fan-Out restarts and WAN
partitions. How:

* **Dedup and order.** A :class:`Subscriber` remembers the last seq it sent per
  channel; anything at or below it is dropped; anything beyond ``last + 1`` is
  held while the missing range is read from the region's history store, else
  from the primary's EVENTS stream (its mirror may be behind). Nothing is ever
  sent around a gap: a range no source has within ``gap_timeout`` ends the
  stream with UNAVAILABLE (STREAM_GAP) naming it, and the client fetches it and
  resumes (ADR-017, ``docs/replication.md``).
* **Seam.** A new stream registers (and its route is acknowledged by the
  Fan-Out Service) *before* replay reads history, and holds live events until
  replay ends; the held events then pass the dedup/gap rules above.
* **Lost deliveries.** The Fan-Out Service numbers deliveries per instance. A
  jump in that number (the link was cut), a new Fan-Out epoch (it restarted),
  or a heartbeat reply saying more was sent than arrived (and still missing at
  a reply a moment later: deliveries may be queued behind the reply) triggers a sweep: once
  the region's history has applied the stream position the Fan-Out had
  reached (or, while it has not, from the primary), every stream re-reads its
  channels after its last seq; it repeats until history has that position.
* **Slow clients.** Each stream has a bounded queue; overflowing it ends that
  stream with RESOURCE_EXHAUSTED (SLOW_CONSUMER) — the dispatcher never waits
  for a client. The client resumes with ``resume_from`` and loses nothing.

Every-region write mode (ADR-026): channel events carry ``seq`` 0 and a
per-origin ``origin_seq``, and every rule above applies per (channel, origin
region) instead of per channel (:class:`Origins`): a gap of one origin holds
back only that origin's later events, is filled from the region's history
(per-origin read), else from ``ALL_<REGION>``, and past ``gap_timeout`` ends the
stream with STREAM_GAP naming the channel, the origin and its origin_seq range.
``resume_from_origins`` replays each origin after its position (an origin the
client has no position for starts at 1), then goes live across the same seam.
Across origins the client orders a channel by (hlc, origin_region, event_id).

Presence: a user is online while they have a stream anywhere; the first stream
on this instance counts them in Valkey (primary, across the WAN) and publishes
a PresenceChanged event if they were offline everywhere.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram

from chatmesh.internal.v1 import routing_pb2
from chatmesh.v1 import events_pb2, notification_service_pb2 as pb, presence_pb2
from mesh.bus.interfaces import Bus, JetStream, Message, StreamMsg
from mesh.bus.subjects import EVENTS_STREAM, WRITES_EVERY_REGION, WRITES_PRIMARY, Subjects
from mesh.core.errors import NotFound, PermissionDenied, ResourceExhausted, Unavailable
from mesh.core.events import new_event, now_ms
from mesh.stores import HistoryStore, MetadataStore
from mesh.stores.current import CurrentHistory
from mesh.stores.presence import PresenceStore
from services.notification.frames import Frames

__all__ = ["Hub", "Subscriber"]

logger = logging.getLogger(__name__)

STREAMS = Gauge("chatmesh_notification_streams", "Open Subscribe streams")
EVENTS_SENT = Counter(
    "chatmesh_notification_events_sent_total", "Events queued to client streams", ["source"]
)
DELIVERY_LATENCY = Histogram(
    "chatmesh_notification_delivery_seconds",
    "From a live event's occurred_at to queuing it on client streams (once per event and "
    "viewer variant, at its first stream; same host clocks)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2.5, 5),
)
GAPS = Counter("chatmesh_notification_gaps_total", "Gap fills and sweeps", ["kind", "result"])
SLOW = Counter(
    "chatmesh_notification_slow_consumers_total", "Streams ended because the client was too slow"
)
# Label children bound once: a labelled lookup on every delivery cost ~8 % of the
# service's CPU (issue 14's profile).
_SENT_BY_SOURCE = {
    source: EVENTS_SENT.labels(source)
    for source in ("live", "catchup", "gapfill", "primary", "stream", "replay")
}


def _sent(source: str) -> Counter:
    child = _SENT_BY_SOURCE.get(source)
    return child if child is not None else EVENTS_SENT.labels(source)


_SENT_LIVE = _SENT_BY_SOURCE["live"]
_CLOSE = object()
_BEAT = object()
"""Queued by the hub's heartbeat ticker on an idle stream: the writer sends a Heartbeat."""
_PRIMARY_PAGE = 25
_SWEEP_GIVE_UP = 600.0
_IN_FLIGHT_GRACE = 0.25
"""Seconds deliveries sent before an acknowledgement may still be queued behind it here."""


class Outbox:
    """A stream's queue of items for its writer: a lean ``asyncio.Queue`` for one reader.

    Unbounded by itself (:class:`Subscriber` enforces the capacity); putting
    never waits. One per stream, touched for every event a stream gets: it
    keeps only a deque and the reader's waiter.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: collections.deque[object] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def qsize(self) -> int:
        """Items queued."""
        return len(self._items)

    def empty(self) -> bool:
        """Whether nothing is queued."""
        return not self._items

    def put_nowait(self, item: object) -> None:
        """Queues ``item`` and wakes the reader."""
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def get_nowait(self) -> object:
        """The oldest item.

        Raises:
            asyncio.QueueEmpty: Nothing is queued.
        """
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    async def get(self) -> object:
        """The oldest item, waiting for one if needed (one reader at a time)."""
        while not self._items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        return self._items.popleft()


Key = tuple[str, str]
"""(channel id, origin region): the unit of order in the every-region write mode."""


@dataclass(slots=True, eq=False)
class Origins:
    """Every-region write mode (ADR-026): a stream's positions per channel and origin region.

    The same rules as the primary mode's per-channel ``seq``, applied to each
    (channel, origin) pair's ``origin_seq``: strictly increasing, no duplicates,
    nothing sent around a gap. Made for a stream on its first event or resume
    position of this mode (a primary-mode stream never has one).
    """

    last: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per channel, per origin region: the highest origin_seq sent to the client."""
    open: set[str] = field(default_factory=set)
    """Channels that started live on this stream: an origin not seen yet starts where its
    events start. In a resumed channel an origin without a position starts at 1."""
    pending: dict[Key, dict[int, events_pb2.Event]] = field(default_factory=dict)
    """Events beyond a gap, waiting for it to be filled."""
    want: dict[Key, int] = field(default_factory=dict)
    """origin_seq a pair must reach that nothing live may reveal (history had more than
    its replay could send in order): a fill runs until the pair has it."""
    fills: dict[Key, asyncio.Task[None]] = field(default_factory=dict)

    def position(self, channel: str, origin: str) -> int | None:
        """The pair's last origin_seq sent (0: nothing yet, its next event is 1).

        None where the pair's next event is taken as it comes: the channel is not
        on the stream, or it started live and this origin is new to it.
        """
        positions = self.last.get(channel)
        if positions is None:
            return None
        last = positions.get(origin)
        if last is None and channel not in self.open:
            return 0
        return last


class _Patience:
    """A gap fill's backoff (50 ms doubling to 1 s) and its clock.

    Restarted by any progress; expired after ``timeout`` seconds without any.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.restart()

    def restart(self) -> None:
        """Starts the clock and the backoff again (the fill made progress)."""
        self.started = time.monotonic()
        self.delay = 0.05

    def expired(self) -> bool:
        """Whether ``timeout`` passed without progress."""
        return time.monotonic() - self.started >= self.timeout

    async def wait(self) -> None:
        """Sleeps the current backoff, then doubles it (at most 1 s)."""
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, 1.0)


@dataclass(slots=True, eq=False)
class Subscriber:
    """One client stream."""

    hub: Hub
    user_id: str
    capacity: int
    queue: Outbox = field(default_factory=Outbox)
    last: dict[str, int] = field(default_factory=dict)
    """Per channel: the highest seq sent to the client."""
    replaying: bool = True
    held: list[events_pb2.Event] = field(default_factory=list)
    pending: dict[str, dict[int, events_pb2.Event]] = field(default_factory=dict)
    """Per channel: events beyond a gap, waiting for the gap to be filled."""
    fills: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    closed_with: Exception | None = None
    space: asyncio.Event | None = None
    """Set by the stream's writer whenever it takes an item: catch-up waits on it.

    Made by the first catch-up that has to wait (most streams never do): an
    ``asyncio.Event`` and its waiter deque are ~0.7 KiB, paid by every live
    stream when made up front (ADR-025)."""
    idle_since: float = 0.0
    """Loop time the stream's writer last took an item (heartbeats are due from it)."""
    origins: Origins | None = None
    """Every-region write mode: per (channel, origin) positions (made on first use)."""

    # -- delivery -----------------------------------------------------------------

    def _push(self, event: events_pb2.Event, source: str) -> None:
        if self.closed_with is not None:
            return
        if self.queue.qsize() >= self.capacity:
            SLOW.inc()
            self.close(ResourceExhausted(
                "SLOW_CONSUMER",
                f"the stream fell more than {self.capacity} events behind; reconnect with resume_from",
            ))  # fmt: skip
            return
        # The same response object for every stream of this event (and viewer
        # variant): built and serialized once (frames.py).
        self.queue.put_nowait(self.hub.frames.response(event))
        if source == "live":
            hub = self.hub
            hub.live_sent += 1  # counted in bulk: Hub.flush_metrics
            if event is not hub.last_observed and event.HasField("occurred_at"):
                hub.last_observed = event
                at = event.occurred_at
                DELIVERY_LATENCY.observe(max(0.0, time.time() - at.seconds - at.nanos * 1e-9))
        else:
            _sent(source).inc()

    async def _wait_for_space(self) -> None:
        """Backpressure for catch-up: waits until the client drains the queue below capacity.

        Catch-up events we read from history must not count as the client being
        slow; a client that stops reading is still cut off after a while.
        """
        deadline = time.monotonic() + self.hub.catchup_timeout
        while self.queue.qsize() >= self.capacity and self.closed_with is None:
            if self.space is None:
                self.space = asyncio.Event()
            space = self.space
            space.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                SLOW.inc()
                self.close(ResourceExhausted(
                    "SLOW_CONSUMER", "the stream stopped reading during catch-up; reconnect with resume_from"
                ))  # fmt: skip
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(space.wait(), remaining)

    async def advance_catchup(self, event: events_pb2.Event, source: str) -> None:
        """:meth:`_advance` for events read from history, with backpressure."""
        await self._wait_for_space()
        if self.closed_with is not None:
            return
        if event.origin_seq > 0 and event.channel_id:
            o = self.origins
            at = None if o is None else o.position(event.channel_id, event.origin_region)
            if at is not None and event.origin_seq == at + 1:
                self._advance_origin(event, source)
        elif event.seq == self.last.get(event.channel_id, -1) + 1:
            self._advance(event, source)

    def _advance(self, event: events_pb2.Event, source: str) -> None:
        """Sends the channel event that directly follows what the client has."""
        self.last[event.channel_id] = event.seq
        self._push(event, source)
        if (
            event.WhichOneof("payload") == "member_left"
            and event.member_left.user_id == self.user_id
        ):
            # The user left: nothing more of this channel belongs on their stream,
            # and a later sweep must not replay what was said after they left.
            self.last.pop(event.channel_id, None)
            self.pending.pop(event.channel_id, None)

    def close(self, error: Exception) -> None:
        """Ends the stream with ``error`` (delivered after what is already queued)."""
        if self.closed_with is None:
            self.closed_with = error
            self.queue.put_nowait(_CLOSE)
        for task in self.fills.values():
            task.cancel()
        if self.origins is not None:
            for task in self.origins.fills.values():
                task.cancel()

    def offer(self, event: events_pb2.Event, source: str = "live") -> None:
        """Accepts an event for this stream, enforcing per-channel order and dedup."""
        if self.replaying:
            if len(self.held) >= self.capacity:
                SLOW.inc()
                self.close(
                    ResourceExhausted(
                        "SLOW_CONSUMER", "too many events arrived during replay; reconnect"
                    )
                )
                return
            self.held.append(event)
            return
        if event.origin_seq > 0 and event.channel_id:
            self._offer_origin(event, source)
            return
        if event.seq <= 0:
            self._push(event, source)
            return
        channel = event.channel_id
        last = self.last.get(channel)
        if last is None and channel not in self.pending:
            self._advance(event, source)  # first sight of this channel on this stream
            return
        if last is not None and event.seq <= last:
            return  # already sent
        if last is not None and event.seq == last + 1 and channel not in self.fills:
            self._advance(event, source)
            self._release(channel)
            return
        held = self.pending.setdefault(channel, {})
        if len(held) >= 2 * self.capacity:
            # The gap has not been filled while this many newer events piled up:
            # end the stream rather than hold unbounded memory; resuming loses nothing.
            SLOW.inc()
            self.close(ResourceExhausted(
                "SLOW_CONSUMER", "too many events arrived while catching up; reconnect with resume_from"
            ))  # fmt: skip
            return
        held[event.seq] = event
        if channel not in self.fills:
            self.fills[channel] = asyncio.create_task(self._fill(channel))

    def _release(self, channel: str) -> None:
        held = self.pending.get(channel)
        while held and channel in self.last:
            event = held.pop(self.last[channel] + 1, None)
            if event is None:
                # Drop anything at or below last (duplicates) and stop at a gap.
                for seq in [s for s in held if s <= self.last[channel]]:
                    del held[seq]
                break
            self._advance(event, "live")
        if not held:
            self.pending.pop(channel, None)

    async def _fill(self, channel: str) -> None:
        """Fills the missing range of ``channel``, then releases held events.

        Never delivers around a gap: the range is read from the region's history,
        else from the primary's EVENTS stream (:meth:`Hub.read_gap`), retried with
        backoff while anything makes progress. A range nothing can supply within
        ``gap_timeout`` ends the stream with UNAVAILABLE (STREAM_GAP) naming the
        channel, the last seq delivered and the range missing: the client fetches
        it (GetHistory) and resumes, so it learns of the gap instead of losing it.
        """
        patience = _Patience(self.hub.gap_timeout)
        try:
            while self.pending.get(channel):
                target = min(self.pending[channel]) - 1
                before = self.last.get(channel)
                ok = await self.hub.read_gap(self, channel, target)
                if ok:
                    GAPS.labels("channel", "filled").inc()
                    self._release(channel)
                    patience.restart()
                    continue
                if self.closed_with is not None or channel not in self.last:
                    return
                if self.last.get(channel) != before:
                    patience.restart()  # progress: the clock restarts
                elif patience.expired():
                    GAPS.labels("channel", "unfilled").inc()
                    last = self.last[channel]
                    logger.warning(
                        "gap in %s for %s: seqs %d..%d found nowhere in %.0fs; ending the stream "
                        "with STREAM_GAP (the client fetches the range and resumes)",
                        channel, self.user_id, last + 1, target, self.hub.gap_timeout,
                    )  # fmt: skip
                    self.close(
                        Unavailable(
                            "STREAM_GAP",
                            f"events {last + 1}..{target} of channel {channel} are not available "
                            "in this region yet; fetch them with GetHistory and resubscribe "
                            "with resume_from",
                            channel_id=channel,
                            last_delivered_seq=str(last),
                            first_missing_seq=str(last + 1),
                            last_missing_seq=str(target),
                        )
                    )
                    return
                await patience.wait()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("gap fill failed for %s in %s", self.user_id, channel)
            self.close(
                Unavailable(
                    "BACKEND_UNAVAILABLE", "history unavailable; reconnect with resume_from"
                )
            )
        finally:
            self.fills.pop(channel, None)

    # -- every-region write mode: order per (channel, origin) ---------------------

    def origin_state(self) -> Origins:
        """The stream's per-origin positions (made on first use)."""
        if self.origins is None:
            self.origins = Origins()
        return self.origins

    def _offer_origin(self, event: events_pb2.Event, source: str) -> None:
        """:meth:`offer` for an event of the every-region mode: ordered per (channel, origin)."""
        o = self.origin_state()
        channel, origin, n = event.channel_id, event.origin_region, event.origin_seq
        positions = o.last.get(channel)
        if positions is None:  # first sight of this channel on this stream: it starts live
            o.last[channel] = {}
            o.open.add(channel)
        key = (channel, origin)
        last = o.position(channel, origin)
        if last is None:
            if key not in o.pending:
                self._advance_origin(event, source)  # first sight of this origin here
                return
            last = 0
        if n <= last:
            return  # already sent
        if n == last + 1 and key not in o.fills:
            self._advance_origin(event, source)
            self._release_origin(key)
            return
        held = o.pending.setdefault(key, {})
        if len(held) >= 2 * self.capacity:
            SLOW.inc()
            self.close(ResourceExhausted(
                "SLOW_CONSUMER",
                "too many events arrived while catching up; reconnect with resume_from_origins",
            ))  # fmt: skip
            return
        held[n] = event
        self._start_fill(key)

    def _start_fill(self, key: Key) -> None:
        o = self.origin_state()
        if key not in o.fills and self.closed_with is None:
            o.fills[key] = asyncio.create_task(self._fill_origin(key))

    def _advance_origin(self, event: events_pb2.Event, source: str) -> None:
        """Sends the event that directly follows what the client has of its channel and origin."""
        o = self.origin_state()
        channel = event.channel_id
        positions = o.last.get(channel)
        if positions is None:
            return  # left the channel meanwhile
        positions[event.origin_region] = event.origin_seq
        self._push(event, source)
        if (
            event.WhichOneof("payload") == "member_left"
            and event.member_left.user_id == self.user_id
        ):
            # As in the primary mode: nothing more of this channel belongs on the stream.
            o.last.pop(channel, None)
            o.open.discard(channel)
            for key in [k for k in o.pending if k[0] == channel]:
                del o.pending[key]
            for key in [k for k in o.want if k[0] == channel]:
                del o.want[key]

    def _release_origin(self, key: Key) -> None:
        o = self.origin_state()
        channel, origin = key
        held = o.pending.get(key)
        while held:
            last = o.position(channel, origin)
            if last is None:
                break
            event = held.pop(last + 1, None)
            if event is None:
                for n in [n for n in held if n <= last]:
                    del held[n]
                break
            self._advance_origin(event, "live")
        if not held:
            o.pending.pop(key, None)

    def _origin_target(self, key: Key) -> int:
        """The origin_seq a fill of ``key`` must reach now (0: nothing to fill)."""
        o = self.origin_state()
        held = o.pending.get(key)
        if held:
            return min(held) - 1
        return o.want.get(key, 0)

    async def _fill_origin(self, key: Key) -> None:
        """:meth:`_fill` for one (channel, origin) pair: fills its gap, then releases what waits.

        From the region's history (per-origin read), else from the region's ALL
        stream (:meth:`Hub.read_origin_gap`), retried with backoff while anything
        makes progress; never around the gap. A range nothing supplies within
        ``gap_timeout`` ends the stream with UNAVAILABLE (STREAM_GAP) naming the
        channel, the origin and the origin_seq range missing (``origin_region``,
        ``last_delivered_origin_seq``, ``first_missing_origin_seq``,
        ``last_missing_origin_seq``): the client resubscribes from its positions.
        """
        o = self.origin_state()
        channel, origin = key
        patience = _Patience(self.hub.gap_timeout)
        try:
            while self.closed_with is None:
                last = o.position(channel, origin)
                if last is None:
                    return  # left the channel
                target = self._origin_target(key)
                if target <= last:
                    o.want.pop(key, None)
                    if not o.pending.get(key):
                        return
                    self._release_origin(key)
                    continue
                ok = await self.hub.read_origin_gap(self, channel, origin, target)
                if ok:
                    GAPS.labels("origin", "filled").inc()
                    self._release_origin(key)
                    patience.restart()
                    continue
                now_at = o.position(channel, origin)
                if self.closed_with is not None or now_at is None:
                    return
                if now_at != last:
                    patience.restart()  # progress: the clock restarts
                elif patience.expired():
                    GAPS.labels("origin", "unfilled").inc()
                    logger.warning(
                        "gap in %s from %s for %s: origin seqs %d..%d found nowhere in %.0fs; "
                        "ending the stream with STREAM_GAP",
                        channel, origin, self.user_id, last + 1, target, self.hub.gap_timeout,
                    )  # fmt: skip
                    self.close(
                        Unavailable(
                            "STREAM_GAP",
                            f"events {last + 1}..{target} from {origin} of channel {channel} "
                            "are not available in this region yet; resubscribe with "
                            "resume_from_origins",
                            channel_id=channel,
                            origin_region=origin,
                            last_delivered_origin_seq=str(last),
                            first_missing_origin_seq=str(last + 1),
                            last_missing_origin_seq=str(target),
                        )
                    )
                    return
                await patience.wait()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("gap fill failed for %s in %s from %s", self.user_id, channel, origin)
            self.close(
                Unavailable(
                    "BACKEND_UNAVAILABLE",
                    "history unavailable; reconnect with resume_from_origins",
                )
            )
        finally:
            o.fills.pop(key, None)

    async def deliver_origin_history(self, events: list[events_pb2.Event]) -> None:
        """Sends history events of one (channel, origin) that follow the stream's position."""
        o = self.origin_state()
        keys: set[Key] = set()
        for event in events:
            key = (event.channel_id, event.origin_region)
            keys.add(key)
            if key in o.fills:
                continue  # a gap fill owns it now
            last = o.position(*key)
            if last is not None and event.origin_seq == last + 1:
                await self.advance_catchup(self.hub.visible(event, self.user_id), "catchup")
        for key in keys:
            self._release_origin(key)

    async def deliver_history(self, events: list[events_pb2.Event]) -> None:
        """Sends history events that follow ``last`` (catch-up after a sweep)."""
        for event in events:
            channel = event.channel_id
            if channel not in self.last or channel in self.fills:
                continue  # left the channel, or a gap fill owns it now
            if event.seq == self.last[channel] + 1:
                await self.advance_catchup(self.hub.visible(event, self.user_id), "catchup")
            elif event.seq > self.last[channel] + 1:
                break
        for channel in {e.channel_id for e in events}:
            self._release(channel)

    def end_replay(self) -> None:
        """Switches from replay to live: held events go through the normal rules."""
        self.replaying = False
        held, self.held = self.held, []
        for event in held:
            self.offer(event)
        if self.origins is not None:
            for key in list(self.origins.want):
                self._start_fill(key)


def _decode(msg: StreamMsg) -> events_pb2.Event | None:
    try:
        return events_pb2.Event.FromString(msg.data)
    except Exception:  # noqa: BLE001 - a foreign message on the subject is not ours to deliver
        logger.warning("ignoring undecodable EVENTS message %d", msg.stream_seq)
        return None


def _private_sender(event: events_pb2.Event) -> str | None:
    """The sender of a message event that carries a client_msg_id (visible to them only)."""
    kind = event.WhichOneof("payload")
    if kind == "message_created" and event.message_created.message.client_msg_id:
        return event.message_created.message.sender_user_id
    if kind == "message_edited" and event.message_edited.message.client_msg_id:
        return event.message_edited.message.sender_user_id
    return None


class Hub:
    """One notification instance's state and its NATS plumbing."""

    def __init__(
        self,
        *,
        bus: Bus,
        history: HistoryStore,
        metadata: MetadataStore,
        presence: PresenceStore,
        region: str,
        instance_id: str,
        stream_heartbeat: float = 15.0,
        route_heartbeat: float = 1.0,
        route_timeout: float = 3.0,
        buffer_size: int = 2000,
        replay_page: int = 500,
        catchup_timeout: float = 30.0,
        gap_timeout: float = 60.0,
        events: JetStream | None = None,
        events_stream: str = EVENTS_STREAM,
        writes: str = WRITES_PRIMARY,
    ) -> None:
        """Wires dependencies; :meth:`start` begins work.

        Args:
            bus: Core NATS (user ``notification-<region>``): deliveries, route
                requests to the Fan-Out Service, presence events.
            history: The region's history store (replay, gap fills, sweeps), read
                through :class:`~mesh.stores.current.CurrentHistory`.
            metadata: Memberships (authorizing ``resume_from``).
            presence: Who is online (Valkey).
            region: This instance's region.
            instance_id: This instance's id (its delivery subject).
            stream_heartbeat: Seconds between heartbeats on an idle client stream.
            route_heartbeat: Seconds between heartbeats to the Fan-Out Service.
            route_timeout: Seconds to wait for the Fan-Out Service's answer.
            buffer_size: Events a client stream may fall behind before it is ended.
            replay_page: Events read from history per query.
            catchup_timeout: Seconds a sweep waits for history to reach the Fan-Out's
                position, and a stream's catch-up waits for the client to read.
            gap_timeout: Seconds a channel's gap may stay unfilled (with no progress
                from any source) before its stream ends with STREAM_GAP.
            events: Direct reads of the primary's EVENTS stream (across the gateway),
                the second source of a gap; None: history only.
            events_stream: The stream ``events`` reads (EVENTS; the region's
                ``ALL_<REGION>`` in the every-region write mode).
            writes: The write mode (ADR-026). ``every-region``: channel events are
                ordered per (channel, origin region) by ``origin_seq``, and streams
                resume with ``resume_from_origins``.
        """
        self.bus = bus
        # Every history read here goes to a client: messages in their current state
        # (a deleted one is a tombstone, an edited one has only its latest text).
        self.history: HistoryStore = CurrentHistory(history)
        self.metadata = metadata
        self.presence = presence
        self.region = region
        self.instance_id = instance_id
        self.stream_heartbeat = stream_heartbeat
        self.route_heartbeat = route_heartbeat
        self.route_timeout = route_timeout
        self.buffer_size = buffer_size
        self.replay_page = replay_page
        self.catchup_timeout = catchup_timeout
        self.gap_timeout = gap_timeout
        self.events = events
        self.events_stream = events_stream
        self.every_region = writes == WRITES_EVERY_REGION
        self.subject = Subjects.delivery(region, instance_id)
        self.users: dict[str, list[Subscriber]] = {}
        self.frames = Frames()
        """One response and one serialization per event, shared by every stream."""
        self.live_sent = 0
        """Live events queued to streams, not yet added to the events-sent counter."""
        self.last_observed: events_pb2.Event | None = None
        """The live event whose delivery latency was observed last."""
        self.version = 0
        self.fanout_epoch = ""
        self.expected_seq = 0
        self.shutting_down = False
        self._route_lock = asyncio.Lock()
        self._pending_routes: dict[str, bool] = {}
        """User -> routed (True) or not, waiting for the next RouteUpdate."""
        self._route_waiters: list[asyncio.Future[None]] = []
        self._route_flusher: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sweeping: asyncio.Task[None] | None = None
        self._sweep_target = 0
        self.in_flight_grace = _IN_FLIGHT_GRACE
        self._missing_at_ack: tuple[int, float] | None = None
        """(Fan-Out delivery count, monotonic time) of the first acknowledgement that said
        more was sent than had arrived; checked again at later ones."""
        """The highest Fan-Out stream position a sweep must reach."""
        self._stream_seqs: dict[str | Key, collections.deque[tuple[int, int]]] = {}
        """Per channel (every-region mode: per (channel, origin)): recent (seq or origin_seq,
        stream seq) pairs seen in deliveries, where a scan of the stream for what follows
        a position can start."""
        self._background: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Subscribes to deliveries and resync requests; starts heartbeats."""
        await self.presence.heartbeat()
        await self.bus.subscribe(
            self.subject, self._on_delivery, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        await self.bus.subscribe(Subjects.ROUTE_RESYNC, self._on_resync)
        await self.bus.flush()
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name="route-heartbeat"))
        self._tasks.append(asyncio.create_task(self._stream_heartbeats(), name="stream-heartbeats"))
        logger.info("notification instance %s listening on %s", self.instance_id, self.subject)

    async def stop(self) -> None:
        """Ends every stream (UNAVAILABLE SHUTTING_DOWN), withdraws routes and presence."""
        self.shutting_down = True
        for subs in self.users.values():
            for sub in subs:
                sub.close(
                    Unavailable(
                        "SHUTTING_DOWN", "the server is shutting down; reconnect with resume_from"
                    )
                )
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        counts = {user: len(subs) for user, subs in self.users.items()}
        with contextlib.suppress(Exception):
            for user in await self.presence.instance_gone(counts):
                await self._publish_presence(user, online=False)
        self.users.clear()
        with contextlib.suppress(Exception):
            await self._send_snapshot()

    # -- routes ------------------------------------------------------------------

    async def _request(self, subject: str, payload: bytes) -> routing_pb2.RouteAck | None:
        try:
            reply = await self.bus.request(subject, payload, timeout=self.route_timeout)
            return routing_pb2.RouteAck.FromString(reply.data)
        except Exception as exc:  # noqa: BLE001 - fan-out unreachable: heartbeats resync later
            logger.info("fan-out did not answer on %s: %r", subject, exc)
            return None

    async def _send_snapshot(self) -> None:
        snap = routing_pb2.RouteSnapshot(
            instance_id=self.instance_id,
            region=self.region,
            version=self.version,
            user_ids=sorted(self.users),
        )
        await self._request(
            Subjects.route_snapshot(self.region, self.instance_id), snap.SerializeToString()
        )

    async def _route_change(self, added: list[str], removed: list[str]) -> None:
        """Queues a route change; returns once a RouteUpdate carrying it was answered.

        Changes that arrive while an update is in flight travel together in the
        next one, so opening N streams costs one Fan-Out round trip per batch
        instead of N serialized round trips (70-146 ms each outside the primary).
        """
        for user in added:
            self._pending_routes[user] = True
        for user in removed:
            self._pending_routes[user] = False
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._route_waiters.append(done)
        if self._route_flusher is None or self._route_flusher.done():
            self._route_flusher = asyncio.create_task(self._flush_routes())
        await asyncio.shield(done)

    async def _flush_routes(self) -> None:
        async with self._route_lock:
            while self._route_waiters:
                pending, self._pending_routes = self._pending_routes, {}
                waiters, self._route_waiters = self._route_waiters, []
                try:
                    self.version += 1
                    update = routing_pb2.RouteUpdate(
                        instance_id=self.instance_id, region=self.region, version=self.version,
                        added_user_ids=[u for u, on in pending.items() if on],
                        removed_user_ids=[u for u, on in pending.items() if not on],
                    )  # fmt: skip
                    ack = await self._request(
                        Subjects.route_update(self.region, self.instance_id),
                        update.SerializeToString(),
                    )
                    if ack is not None:
                        self._check_ack(ack)
                        if ack.resync_needed:
                            await self._send_snapshot()
                finally:
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(None)

    async def _on_resync(self, msg: Message) -> None:
        async with self._route_lock:
            await self._send_snapshot()

    async def _heartbeat_loop(self) -> None:
        # Ends on shutting_down too: Python 3.11's wait_for (inside nats-py's request)
        # can swallow a cancellation that races the reply, and stop() awaits this task.
        while True:
            await asyncio.sleep(self.route_heartbeat)
            if self.shutting_down:
                return
            try:
                await self.presence.heartbeat()
            except Exception as exc:  # noqa: BLE001
                logger.info("valkey heartbeat failed: %r", exc)
            hb = routing_pb2.InstanceHeartbeat(
                instance_id=self.instance_id,
                region=self.region,
                version=self.version,
                user_count=len(self.users),
            )
            hb.sent_at.FromMilliseconds(now_ms())
            ack = await self._request(
                Subjects.route_heartbeat(self.region, self.instance_id), hb.SerializeToString()
            )
            if ack is None:
                continue
            self._check_ack(ack)
            if ack.resync_needed:
                async with self._route_lock:
                    await self._send_snapshot()

    async def _stream_heartbeats(self) -> None:
        """Queues a heartbeat on every stream idle for ``stream_heartbeat`` seconds.

        One ticker for all streams instead of a timer per stream and item (a
        ``wait_for`` per event cost a task and a timer handle each). Only an
        empty queue counts as idle, so a stream whose client stopped reading
        holds at most one heartbeat. Streams start their idle clock at a random
        point of the first half interval, so streams opened in a burst do not
        beat in a burst forever after.
        """
        period = min(1.0, self.stream_heartbeat / 4)
        loop = asyncio.get_running_loop()
        while not self.shutting_down:
            await asyncio.sleep(period)
            self.flush_metrics()
            self.beat_idle_streams(loop.time())

    def beat_idle_streams(self, now: float) -> int:
        """One tick of :meth:`_stream_heartbeats` at loop time ``now``; returns the beats queued."""
        due = now - self.stream_heartbeat
        beats = 0
        for subs in self.users.values():
            for sub in subs:
                if sub.idle_since <= due and not sub.replaying and sub.queue.empty():
                    sub.idle_since = now
                    sub.queue.put_nowait(_BEAT)
                    beats += 1
        return beats

    def flush_metrics(self) -> None:
        """Adds the live events queued since the last flush to the events-sent counter."""
        if self.live_sent:
            _SENT_LIVE.inc(self.live_sent)
            self.live_sent = 0

    def _heartbeat(self) -> pb.SubscribeResponse:
        beat = pb.Heartbeat(timeout_ms=int(self.stream_heartbeat * 3000))
        beat.server_time.FromMilliseconds(now_ms())
        return pb.SubscribeResponse(heartbeat=beat)

    def _check_ack(self, ack: routing_pb2.RouteAck) -> None:
        """Detects deliveries that never arrived, from the Fan-Out's own count."""
        if not ack.fanout_epoch:
            return
        if ack.fanout_epoch != self.fanout_epoch:
            if self.fanout_epoch:
                logger.info(
                    "fan-out restarted (epoch %s -> %s); sweeping",
                    self.fanout_epoch,
                    ack.fanout_epoch,
                )
                self._sweep(ack.stream_seq)
            self._missing_at_ack = None
            self.fanout_epoch = ack.fanout_epoch
            self.expected_seq = ack.instance_seq + 1
        elif ack.instance_seq >= self.expected_seq:
            # Deliveries the Fan-Out sent just before this reply may still be queued
            # behind it here (nats-py hands a reply over at once, subscription messages
            # through the subscription's queue): what is missing now may be in flight.
            # Only what is still missing at a later acknowledgement, a moment on, was
            # lost. (Each false alarm used to re-read every stream's channels from history.)
            suspect = self._missing_at_ack
            now = time.monotonic()
            if suspect is None or self.expected_seq > suspect[0]:
                self._missing_at_ack = (ack.instance_seq, now)
            elif now - suspect[1] >= self.in_flight_grace:
                logger.info(
                    "deliveries %d..%d never arrived; sweeping", self.expected_seq, suspect[0]
                )
                self._missing_at_ack = None
                self.expected_seq = ack.instance_seq + 1
                self._sweep(ack.stream_seq)
        else:
            self._missing_at_ack = None

    # -- deliveries --------------------------------------------------------------

    def visible(self, event: events_pb2.Event, viewer: str) -> events_pb2.Event:
        """The event as ``viewer`` may see it (only a sender sees their client_msg_id)."""
        kind = event.WhichOneof("payload")
        if kind not in ("message_created", "message_edited"):
            return event
        message = (
            event.message_created.message
            if kind == "message_created"
            else event.message_edited.message
        )
        if not message.client_msg_id or message.sender_user_id == viewer:
            return event
        stripped = events_pb2.Event()
        stripped.CopyFrom(event)
        target = (
            stripped.message_created.message
            if kind == "message_created"
            else stripped.message_edited.message
        )
        target.client_msg_id = ""
        return stripped

    async def _on_delivery(self, msg: Message) -> None:
        try:
            delivery = routing_pb2.Delivery.FromString(msg.data)
        except Exception:  # noqa: BLE001
            logger.warning("ignoring malformed delivery")
            return
        if delivery.fanout_epoch != self.fanout_epoch:
            if self.fanout_epoch:
                self._sweep(delivery.stream_seq)
            self.fanout_epoch = delivery.fanout_epoch
            self.expected_seq = delivery.instance_seq + 1
        else:
            if delivery.instance_seq > self.expected_seq:
                logger.info(
                    "deliveries %d..%d lost; sweeping", self.expected_seq, delivery.instance_seq - 1
                )
                self._sweep(delivery.stream_seq)
            self.expected_seq = max(self.expected_seq, delivery.instance_seq + 1)
        event = delivery.event
        if delivery.stream_seq:
            if event.origin_seq > 0:
                self._remember(
                    (event.channel_id, event.origin_region), event.origin_seq, delivery.stream_seq
                )
            elif event.seq > 0:
                self._remember(event.channel_id, event.seq, delivery.stream_seq)
        stripped: events_pb2.Event | None = None
        sender = _private_sender(event)
        for user in delivery.user_ids:
            subs = self.users.get(user)
            if not subs:
                continue
            if sender is None or user == sender:
                visible = event
            else:
                if stripped is None:
                    stripped = self.visible(event, user)
                visible = stripped
            for sub in subs:
                sub.offer(visible)
        self.flush_metrics()
        # Let the streams' writers run between deliveries: a backlog arriving in
        # one burst (e.g. after a Fan-Out restart) must not fill queues before any
        # client had a chance to read — that would look like slow clients.
        await asyncio.sleep(0)

    # -- catch-up ----------------------------------------------------------------

    async def read_gap(self, sub: Subscriber, channel: str, target_seq: int) -> bool:
        """Sends ``sub`` the events of ``channel`` after its last seq, up to ``target_seq``.

        One attempt, from the region's history first, then (for what history does
        not hold yet: its mirror is behind) from the primary's EVENTS stream.

        Returns:
            True once the stream has everything up to ``target_seq`` (or left the channel).
        """
        await self._gap_from(sub, channel, target_seq, self._history_page, "gapfill")
        if channel in sub.last and sub.last[channel] < target_seq and self.events is not None:
            await self._gap_from(sub, channel, target_seq, self._primary_page, "primary")
        return channel not in sub.last or sub.last[channel] >= target_seq

    async def _gap_from(
        self,
        sub: Subscriber,
        channel: str,
        target_seq: int,
        page: Callable[[str, int], Awaitable[list[events_pb2.Event]]],
        source: str,
    ) -> None:
        while channel in sub.last and sub.last[channel] < target_seq and sub.closed_with is None:
            before = sub.last[channel]
            try:
                events = await page(channel, before)
            except Unavailable as exc:
                logger.info("gap fill of %s from %s failed: %s", channel, source, exc.message)
                return
            for event in events:
                if event.seq > target_seq or channel not in sub.last:
                    break
                if event.seq == sub.last[channel] + 1:
                    await sub.advance_catchup(self.visible(event, sub.user_id), source)
            if sub.last.get(channel) == before:
                return  # this source has nothing more of the gap (yet)

    async def _history_page(self, channel: str, after_seq: int) -> list[events_pb2.Event]:
        return await self.history.events_after(channel, after_seq, self.replay_page)

    def _remember(self, channel: str | Key, seq: int, stream_seq: int) -> None:
        known = self._stream_seqs.get(channel)
        if known is None:
            known = self._stream_seqs[channel] = collections.deque(maxlen=256)
        known.append((seq, stream_seq))

    def _stream_floor(self, channel: str | Key, seq: int) -> int:
        """The stream seq of a known event of ``channel`` at or below ``seq`` (0: none known)."""
        return max((ss for cs, ss in self._stream_seqs.get(channel, ()) if cs <= seq), default=0)

    # -- catch-up in the every-region write mode ------------------------------------

    async def read_origin_gap(
        self, sub: Subscriber, channel: str, origin: str, target: int
    ) -> bool:
        """:meth:`read_gap` for one origin: ``channel``'s events from ``origin`` up to ``target``.

        One attempt, from the region's history (its per-origin read) first, then
        from the region's ``ALL_<REGION>`` stream (the worker may not have applied
        it yet) by a leader read.

        Returns:
            True once the stream has that origin's events up to ``target`` (or left the channel).
        """
        o = sub.origin_state()

        def short() -> bool:
            at = o.position(channel, origin)
            return at is not None and at < target and sub.closed_with is None

        await self._origin_gap_from(sub, channel, origin, target, self._origin_history_page, "gapfill")  # fmt: skip
        if short() and self.events is not None:
            await self._origin_gap_from(sub, channel, origin, target, self._origin_stream_page, "stream")  # fmt: skip
        at = o.position(channel, origin)
        return at is None or at >= target

    async def _origin_gap_from(
        self,
        sub: Subscriber,
        channel: str,
        origin: str,
        target: int,
        page: Callable[[str, str, int], Awaitable[list[events_pb2.Event]]],
        source: str,
    ) -> None:
        o = sub.origin_state()
        while sub.closed_with is None:
            before = o.position(channel, origin)
            if before is None or before >= target:
                return
            try:
                events = await page(channel, origin, before)
            except Unavailable as exc:
                logger.info("gap fill of %s/%s from %s failed: %s", channel, origin, source, exc.message)  # fmt: skip
                return
            for event in events:
                at = o.position(channel, origin)
                if at is None or event.origin_seq > target:
                    break
                if event.origin_seq == at + 1:
                    await sub.advance_catchup(self.visible(event, sub.user_id), source)
            if o.position(channel, origin) == before:
                return  # this source has nothing more of the gap (yet)

    async def _origin_history_page(
        self, channel: str, origin: str, after: int
    ) -> list[events_pb2.Event]:
        """``channel``'s events from ``origin`` with origin_seq > ``after`` in the region's history."""
        events = await self.history.origin_events_after(channel, origin, after, self.replay_page)
        return sorted(events, key=lambda e: e.origin_seq)

    async def _origin_stream_page(
        self, channel: str, origin: str, after: int
    ) -> list[events_pb2.Event]:
        """``channel``'s events from ``origin`` after ``after`` read from ``ALL_<REGION>``'s leader.

        As :meth:`_primary_page`: the scan starts after the later of the history's
        applied position (the worker applies the same stream in order) and that of a
        known event of the pair at or below ``after``.
        """
        assert self.events is not None
        key = (channel, origin)
        start = max(await self.history.applied_stream_seq(), self._stream_floor(key, after)) + 1
        subject = Subjects.origin_channel_events(origin, channel)
        while True:
            msgs = await self.events.get_msgs_after(
                self.events_stream, subject, start, batch=_PRIMARY_PAGE, timeout=5.0
            )
            decoded = [(m, _decode(m)) for m in msgs]
            for m, e in decoded:
                if e is not None and e.origin_seq > 0:
                    self._remember(key, e.origin_seq, m.stream_seq)
            events = [e for _, e in decoded if e is not None and e.origin_seq > after]
            if events or len(msgs) < _PRIMARY_PAGE:
                return sorted(events, key=lambda e: e.origin_seq)
            start = msgs[-1].stream_seq + 1

    async def _primary_page(self, channel: str, after_seq: int) -> list[events_pb2.Event]:
        """Channel events after ``after_seq`` read from the primary's EVENTS stream.

        The scan starts after the later of two stream seqs every wanted event
        follows: the history's applied position (the worker applies its stream in
        order, so everything up to it is in history) and that of a known event at
        or below ``after_seq``; it pages on by stream seq until it passes ``after_seq``.
        """
        assert self.events is not None
        start = (
            max(await self.history.applied_stream_seq(), self._stream_floor(channel, after_seq)) + 1
        )
        subject = Subjects.channel_events(channel)
        while True:
            # Small pages: one request per message across the WAN, and the stream
            # should get each page as soon as it is read.
            msgs = await self.events.get_msgs_after(
                self.events_stream, subject, start, batch=_PRIMARY_PAGE, timeout=5.0
            )
            decoded = [(m, _decode(m)) for m in msgs]
            for m, e in decoded:
                if e is not None:
                    self._remember(channel, e.seq, m.stream_seq)
            events = [e for _, e in decoded if e is not None and e.seq > after_seq]
            if events or len(msgs) < _PRIMARY_PAGE:
                return sorted(events, key=lambda e: e.seq)
            start = msgs[-1].stream_seq + 1

    def _sweep(self, stream_seq: int) -> None:
        self._sweep_target = max(self._sweep_target, stream_seq)
        if self._sweeping is not None and not self._sweeping.done():
            return  # the running sweep goes on to the new target
        self._sweeping = asyncio.create_task(self._run_sweep())

    async def _run_sweep(self) -> None:
        """After lost deliveries: re-read every stream's channels up to the fan-out's position.

        From history once it has applied that position; if it has not within a
        moment (its mirror is behind) and the primary's EVENTS is readable, from
        there. Until history reaches the position it sweeps again every second:
        the tail of what was lost may have no later live event to expose its gap.
        """
        patience = self.catchup_timeout if self.events is None else min(2.0, self.catchup_timeout)
        started = time.monotonic()
        delay = 0.02
        behind_logged = False
        while True:
            target = self._sweep_target
            applied = await self.history.applied_stream_seq() if target else 0
            caught_up = applied >= target
            if not caught_up and time.monotonic() - started < patience:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.25)
                continue
            if not caught_up and not behind_logged:
                behind_logged = True
                GAPS.labels("sweep", "history_behind").inc()
                logger.info(
                    "history at stream seq %d, not %d, after %.0fs; sweeping from %s",
                    applied, target, time.monotonic() - started,
                    "the primary" if self.events else "what it has",
                )  # fmt: skip
            swept = await self._sweep_streams(from_primary=not caught_up)
            if swept or caught_up:
                logger.info("sweep to stream seq %d re-sent %d events", target, swept)
            if caught_up and self._sweep_target == target:
                GAPS.labels("sweep", "done").inc()
                return
            if time.monotonic() - started > _SWEEP_GIVE_UP:
                GAPS.labels("sweep", "gave_up").inc()
                logger.warning("history stayed behind stream seq %d for %.0fs; sweeps stop "
                               "(the next lost delivery starts them again)", target, _SWEEP_GIVE_UP)  # fmt: skip
                return
            await asyncio.sleep(1.0)

    async def _sweep_streams(self, *, from_primary: bool) -> int:
        swept = 0
        for subs in list(self.users.values()):
            for sub in subs:
                if sub.replaying or sub.closed_with is not None:
                    continue
                if sub.origins is not None:
                    swept += await self._sweep_origins(sub, from_primary=from_primary)
                for channel in list(sub.last):
                    while sub.closed_with is None:
                        last = sub.last.get(channel)
                        if last is None or channel in sub.fills:
                            break
                        events = await self.history.events_after(channel, last, self.replay_page)
                        if not events and from_primary and self.events is not None:
                            try:
                                events = await self._primary_page(channel, last)
                            except Unavailable as exc:
                                logger.info("sweep of %s from the primary failed: %s",
                                            channel, exc.message)  # fmt: skip
                        if not events:
                            break
                        await sub.deliver_history(events)
                        swept += len(events)
                        if sub.last.get(channel) == last:
                            break
        return swept

    async def _sweep_origins(self, sub: Subscriber, *, from_primary: bool) -> int:
        """:meth:`_sweep_streams` for one stream's (channel, origin) pairs.

        Every origin the stream has a position for, plus, in a resumed channel,
        every origin the region's history knows (one whose first events were lost
        has no position yet, and in a resumed channel it starts at 1).
        """
        o = sub.origin_state()
        swept = 0
        for channel in list(o.last):
            origins = set(o.last.get(channel, {}))
            if channel not in o.open:
                origins |= set(await self.history.last_origin_seqs(channel))
            for origin in sorted(origins):
                while sub.closed_with is None:
                    last = o.position(channel, origin)
                    if last is None or (channel, origin) in o.fills:
                        break
                    events = await self._origin_history_page(channel, origin, last)
                    if not events and from_primary and self.events is not None:
                        try:
                            events = await self._origin_stream_page(channel, origin, last)
                        except Unavailable as exc:
                            logger.info("sweep of %s/%s from %s failed: %s", channel, origin,
                                        self.events_stream, exc.message)  # fmt: skip
                    if not events:
                        break
                    await sub.deliver_origin_history(events)
                    swept += len(events)
                    if o.position(channel, origin) == last:
                        break
        return swept

    # -- streams -----------------------------------------------------------------

    async def _publish_presence(self, user: str, *, online: bool) -> None:
        event = new_event("", seq=0, origin_region=self.region, actor=user)
        p = event.presence_changed.presence
        p.user_id = user
        p.status = (
            presence_pb2.PRESENCE_STATUS_ONLINE if online else presence_pb2.PRESENCE_STATUS_OFFLINE
        )
        p.last_seen_at.CopyFrom(event.occurred_at)
        if online:
            p.regions.append(self.region)
        await self.bus.publish(Subjects.presence(user), event.SerializeToString())

    async def _presence_change(self, user: str, opened: bool) -> None:
        try:
            if opened:
                changed = await self.presence.stream_opened(user)
            else:
                changed = await self.presence.stream_closed(user)
            if changed:
                await self._publish_presence(user, online=opened)
        except Exception as exc:  # noqa: BLE001 - presence is best effort; streams go on
            logger.warning("presence update for %s failed: %r", user, exc)

    async def _attach(self, sub: Subscriber) -> None:
        subs = self.users.setdefault(sub.user_id, [])
        subs.append(sub)
        STREAMS.inc()
        if len(subs) == 1:
            # Presence goes to the primary Valkey across the WAN: not on the stream's
            # critical path, and not queued behind the route registration either
            # (each is a WAN round trip from a secondary region; in parallel they
            # cost one). The user's own "online" event may then race their route.
            task = asyncio.create_task(self._presence_change(sub.user_id, True))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            await self._route_change([sub.user_id], [])

    async def _detach(self, sub: Subscriber) -> None:
        STREAMS.dec()
        for task in sub.fills.values():
            task.cancel()
        subs = self.users.get(sub.user_id, [])
        if sub in subs:
            subs.remove(sub)
        if not subs and sub.user_id in self.users and not self.shutting_down:
            del self.users[sub.user_id]
            await self._route_change([], [sub.user_id])
            await self._presence_change(sub.user_id, False)

    async def _authorize_resume(self, user: str, resume_from: Iterable[str]) -> None:
        for channel in resume_from:
            if await self.metadata.is_member(channel, user):
                continue
            if await self.metadata.channel(channel) is None:
                raise NotFound(
                    "CHANNEL_NOT_FOUND", f"channel {channel} does not exist", channel_id=channel
                )
            raise PermissionDenied(
                "NOT_A_MEMBER", f"you are not a member of channel {channel}", channel_id=channel
            )

    def _resume_positions(
        self, resume_from: dict[str, int], resume_from_origins: Mapping[str, Mapping[str, int]]
    ) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        """The per-channel and the per-origin resume positions this write mode uses.

        Primary mode: ``resume_from`` only (``resume_from_origins`` is ignored).
        Every-region mode: ``resume_from_origins``; a channel only in ``resume_from``
        with 0 ("nothing yet") is replayed from its start, other seqs mean nothing
        in this mode and the channel starts live.
        """
        if not self.every_region:
            return resume_from, {}
        origins = {ch: {o: int(n) for o, n in p.items()} for ch, p in resume_from_origins.items()}
        for channel, since in resume_from.items():
            if since == 0:
                origins.setdefault(channel, {})
        return {}, origins

    async def _replay_origins(
        self, sub: Subscriber, channel: str, positions: dict[str, int]
    ) -> AsyncIterator[events_pb2.Event]:
        """Every event of ``channel`` after ``positions``, origin by origin, each in origin_seq order.

        An origin the region's history knows but ``positions`` does not name starts
        at 1. Where history has an origin's later events but not the next one (they
        arrived out of order), replay of that origin stops at the hole and a gap
        fill takes over, up to the furthest event seen, once the stream is live:
        nothing goes out around it.
        """
        o = sub.origin_state()
        o.last[channel] = dict(positions)
        known = await self.history.last_origin_seqs(channel)
        for origin in sorted(set(positions) | set(known)):
            furthest = known.get(origin, 0)
            while True:
                at = o.position(channel, origin)
                if at is None:
                    return  # the user's leave was replayed
                events = await self._origin_history_page(channel, origin, at)
                furthest = max([furthest, *(e.origin_seq for e in events)])
                sent_any = False
                for event in events:
                    at = o.position(channel, origin)
                    if at is None or event.origin_seq > at + 1:
                        break
                    if event.origin_seq <= at:
                        continue
                    visible = self.visible(event, sub.user_id)
                    o.last[channel][origin] = event.origin_seq
                    sent_any = True
                    yield visible
                    if (event.WhichOneof("payload") == "member_left"
                            and event.member_left.user_id == sub.user_id):  # fmt: skip
                        o.last.pop(channel, None)
                        return
                if not sent_any or len(events) < self.replay_page:
                    break
            at = o.position(channel, origin)
            if at is not None and furthest > at:
                # History holds later events of this origin than it could send in
                # order (a hole): once live, a fill brings the rest, nothing around it.
                o.want[(channel, origin)] = furthest

    async def subscribe(
        self,
        user: str,
        resume_from: dict[str, int],
        resume_from_origins: Mapping[str, Mapping[str, int]] | None = None,
    ) -> AsyncIterator[pb.SubscribeResponse]:
        """The body of NotificationService.Subscribe for ``user``.

        Args:
            user: The caller.
            resume_from: Channel -> last seq the client has (the primary write mode).
            resume_from_origins: Channel -> origin region -> last origin_seq the client
                has (the every-region write mode; see :meth:`_resume_positions`).
        """
        if self.shutting_down:
            raise Unavailable("SHUTTING_DOWN", "the server is shutting down; reconnect")
        resume_from, by_origin = self._resume_positions(resume_from, resume_from_origins or {})
        await self._authorize_resume(user, [*resume_from, *by_origin])
        sub = Subscriber(self, user, self.buffer_size)
        await self._attach(sub)
        try:
            replayed = 0
            for channel, positions in sorted(by_origin.items()):
                async for event in self._replay_origins(sub, channel, positions):
                    replayed += 1
                    yield pb.SubscribeResponse(event=event)
            for channel, since in sorted(resume_from.items()):
                sub.last[channel] = since
                while True:
                    events = await self.history.events_after(
                        channel, sub.last[channel], self.replay_page
                    )
                    for event in events:
                        if event.seq <= sub.last[channel]:
                            continue
                        sub.last[channel] = event.seq
                        replayed += 1
                        yield pb.SubscribeResponse(event=self.visible(event, user))
                    if len(events) < self.replay_page:
                        break
            _sent("replay").inc(replayed)
            yield pb.SubscribeResponse(
                replay_complete=pb.ReplayComplete(
                    replayed_events=replayed, region=self.region, instance_id=self.instance_id
                )
            )
            loop = asyncio.get_running_loop()
            sub.idle_since = loop.time() - random.uniform(0, self.stream_heartbeat / 2)
            sub.end_replay()
            queue = sub.queue
            while True:
                item = await queue.get()
                sub.idle_since = loop.time()
                space = sub.space
                if space is not None:
                    space.set()
                if item is _BEAT:
                    yield self._heartbeat()
                    continue
                if item is _CLOSE:
                    assert sub.closed_with is not None
                    raise sub.closed_with
                assert isinstance(item, pb.SubscribeResponse)
                yield item
        finally:
            await self._detach(sub)
