"""Fan-Out Service: consume events, route them to notification instances.

Inputs (NATS, user ``fanout``):

* the EVENTS stream through the durable pull consumer ``fanout`` (channel and
  user events, in stream order; at-least-once);
* ``chatmesh.eph.typing.*`` and ``chatmesh.eph.presence.*`` (core NATS);
* route updates, snapshots and heartbeats of notification instances
  (request/reply; the reply tells an instance whether the table needs its full
  route set).

Output: for each event, one :class:`~chatmesh.internal.v1.routing_pb2.Delivery`
per notification instance that holds a member's stream, on that instance's
subject ``chatmesh.dlv.<region>.<instance>``. Because only instances with
members get a delivery, an event crosses a gateway only toward regions that
want it. Deliveries are numbered per instance (``instance_seq``) within this
process's ``epoch``, so an instance notices lost deliveries and catches up from
its region's history.

Every-region write mode (ADR-026): each region runs its own Fan-Out. It reads
``ALL_<REGION>`` (every region's events, sourced), takes route updates,
snapshots and heartbeats only from its own region's instances
(``chatmesh.route.*.<region>.>``) and so delivers to them only: a remote user
is served by their own region's Fan-Out from its own copy of the events.
Typing and presence still arrive from every region (core NATS through the
gateways) and go to local streams only. Membership, without a channel seq,
follows :func:`mesh.core.convergence.is_member` (observed-remove, remove wins)
over the joins and leaves this process has seen, on top of the metadata
store's members. The other regions' route traffic is overheard (never
answered) into :class:`~services.fanout.remote.RemoteIndex` when
``presence_index`` is on.

Presence across regions in that mode: every ``presence_interval`` seconds, and
soon after a route change, the Fan-Out publishes its region's online users
(:class:`~chatmesh.internal.v1.presence_pb2.PresenceSnapshot`, users with a
route) on ``chatmesh.eph.presence-snapshot.<region>`` and keeps the other
regions' in :class:`~mesh.core.regional_presence.RegionalPresence`. An offline
event reaches local streams only if no other region has the user online; a
region silent past ``presence_timeout`` is dropped (its users online nowhere
else announced offline here), and its first snapshot after a drop or a gap
announces who is online there: presence converges after a partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Gauge

from chatmesh.internal.v1 import presence_pb2 as internal_presence_pb2, routing_pb2
from chatmesh.v1 import events_pb2, presence_pb2
from mesh.bus.eventbus import PullConsumer
from mesh.bus.interfaces import Bus, JetStream, Message, StreamMsg
from mesh.bus.subjects import EVENTS_STREAM, WRITES_EVERY_REGION, WRITES_PRIMARY, Subjects
from mesh.core import ids
from mesh.core.convergence import MembershipChange, Stamp, is_member
from mesh.core.events import new_event
from mesh.core.regional_presence import RegionalPresence
from mesh.stores import MetadataStore
from services.fanout.remote import RemoteIndex
from services.fanout.table import RoutingTable

__all__ = ["Fanout"]

logger = logging.getLogger(__name__)

EVENTS_PROCESSED = Counter("chatmesh_fanout_events_total", "Events consumed", ["kind"])
DELIVERIES = Counter(
    "chatmesh_fanout_deliveries_total", "Per-instance deliveries published", ["region"]
)
ROUTED_USERS = Gauge("chatmesh_fanout_routed_users", "Users with at least one live stream")
INSTANCES = Gauge("chatmesh_fanout_instances", "Live notification instances")
TABLE_BYTES = Gauge("chatmesh_fanout_table_bytes", "Estimated bytes held by the routing table")
_CHILDREN: dict[tuple[Counter, str], Any] = {}


def _child(counter: Counter, label: str) -> Any:
    """``counter.labels(label)``, bound once: ``labels()`` takes a lock and builds a key per call."""
    child = _CHILDREN.get((counter, label))
    if child is None:
        child = _CHILDREN[counter, label] = counter.labels(label)
    return child


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class Fanout:
    """The routing table plus the NATS plumbing around it."""

    def __init__(
        self,
        *,
        bus: Bus,
        jetstream: JetStream,
        metadata: MetadataStore,
        region: str,
        instance_timeout: float = 5.0,
        resync_grace: float = 1.0,
        consumer_name: str = "fanout",
        batch: int = 512,
        stream: str = EVENTS_STREAM,
        writes: str = WRITES_PRIMARY,
        presence_index: bool = False,
        presence_interval: float = 2.0,
        presence_timeout: float = 6.0,
    ) -> None:
        """Wires dependencies; :meth:`start` begins work.

        Args:
            bus: Core NATS (user ``fanout``): route requests, deliveries, ephemeral events.
            jetstream: The EVENTS consumer's JetStream side.
            metadata: Channel memberships (the table's start-up load and misses).
            region: This service's region.
            instance_timeout: Seconds without a heartbeat before an instance is dropped.
            resync_grace: Seconds instances get to send their route sets before events flow.
            consumer_name: The durable EVENTS consumer.
            batch: Events per pull request.
            stream: The stream consumed (EVENTS; ``ALL_<REGION>`` in the every-region mode).
            writes: The write mode (ADR-026); ``every-region``: this region's instances only.
            presence_index: Every-region mode: overhear the other regions' route traffic
                into :attr:`remote`.
            presence_interval: Every-region mode: seconds between presence snapshots.
            presence_timeout: Every-region mode: seconds of another region's silence
                after which its users count as offline here.
        """
        self.bus = bus
        self.metadata = metadata
        self.region = region
        self.table = RoutingTable()
        self.epoch = ids.new("fo")
        self.instance_timeout = instance_timeout
        self.resync_grace = resync_grace
        self.every_region = writes == WRITES_EVERY_REGION
        self.consumer = PullConsumer(
            bus, jetstream, stream, consumer_name, self._on_events, batch=batch
        )
        self._changes: dict[tuple[str, str], list[MembershipChange]] = {}
        """Every-region mode: per (channel, user), the joins and leaves seen."""
        self.remote = RemoteIndex()
        """Every-region mode with ``presence_index``: the other regions' instances and users."""
        self.presence_index = self.every_region and presence_index
        self.presence_view = RegionalPresence(region, timeout=presence_timeout)
        """Every-region mode: the other regions' online users, from their snapshots."""
        self.presence_interval = presence_interval
        self._presence_dirty = asyncio.Event()
        self._snapshot_seq = 0
        self._online_since: dict[str, int] = {}
        self._resync_asked = float("-inf")
        self.events_processed = 0
        self.deliveries = 0
        self.deliveries_by_region: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # -- start-up -----------------------------------------------------------------

    async def load_memberships(self) -> int:
        """Loads every channel's members from the metadata store (paged)."""
        after = ""
        count = 0
        while True:
            page = await self.metadata.all_memberships(after, limit=5000)
            if not page:
                break
            for channel_id, seq, members in page:
                self.table.set_members(channel_id, members, seq)
            count += len(page)
            after = page[-1][0]
        return count

    async def start(self) -> None:
        """Subscribes, rebuilds the table, then starts consuming events."""
        t0 = time.monotonic()
        bus = self.bus
        if self.every_region:  # this region's instances only
            routes = (
                Subjects.route_update(self.region, ">"),
                Subjects.route_snapshot(self.region, ">"),
                Subjects.route_heartbeat(self.region, ">"),
            )
        else:
            routes = (
                Subjects.ROUTE_UPDATE_ALL,
                Subjects.ROUTE_SNAPSHOT_ALL,
                Subjects.ROUTE_HEARTBEAT_ALL,
            )
        for subject, handler in (
            (routes[0], self._on_update),
            (routes[1], self._on_snapshot),
            (routes[2], self._on_heartbeat),
            (Subjects.TYPING_ALL, self._on_typing),
            (Subjects.PRESENCE_ALL, self._on_presence),
        ):
            await bus.subscribe(subject, handler, pending_msgs_limit=-1)
        if self.presence_index:  # overheard, never answered: the other regions' Fan-Outs do
            for subject, handler in (
                (Subjects.ROUTE_UPDATE_ALL, self._on_remote_update),
                (Subjects.ROUTE_SNAPSHOT_ALL, self._on_remote_snapshot),
                (Subjects.ROUTE_HEARTBEAT_ALL, self._on_remote_heartbeat),
            ):
                await bus.subscribe(subject, handler, pending_msgs_limit=-1)
        if self.every_region:
            await bus.subscribe(
                Subjects.PRESENCE_SNAPSHOT_ALL, self._on_presence_snapshot, pending_msgs_limit=-1
            )
        channels = await self.load_memberships()
        await bus.publish(
            Subjects.ROUTE_RESYNC,
            routing_pb2.ResyncRequest(fanout_id=self.epoch).SerializeToString(),
        )
        await bus.flush()
        # A bounded window for instances to send their route sets before events
        # flow; an instance that misses it is caught by its next heartbeat and
        # catches up from history (its deliveries restart under a new epoch).
        await asyncio.sleep(self.resync_grace)
        await self.consumer.ensure()
        self._tasks.append(asyncio.create_task(self._consume(), name="fanout-consume"))
        self._tasks.append(asyncio.create_task(self._expire_loop(), name="fanout-expire"))
        if self.every_region:
            self._tasks.append(
                asyncio.create_task(self._snapshot_loop(), name="fanout-presence-snapshots")
            )
        logger.info(
            "fan-out %s started in %.2fs: %d channels, %d memberships, %d instances, %d routed users",
            self.epoch, time.monotonic() - t0, channels, self.table.memberships,
            len(self.table.instances()), self.table.routed_users,
        )  # fmt: skip

    async def _consume(self) -> None:
        while True:
            try:
                await self.consumer.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("event consumer failed; restarting it")
                await asyncio.sleep(0.5)

    async def stop(self) -> None:
        """Stops consuming and expiring."""
        self.consumer.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- routes --------------------------------------------------------------------

    def _ack(self, slot: int, *, resync: bool) -> bytes:
        inst = self.table.instance(slot)
        return routing_pb2.RouteAck(
            version=inst.version,
            resync_needed=resync,
            fanout_epoch=inst.epoch,
            instance_seq=inst.delivery_seq,
            stream_seq=self.consumer.last_stream_seq,
        ).SerializeToString()

    def _register(self, instance_id: str, region: str) -> int:
        slot = self.table.add_instance(
            instance_id, region, Subjects.delivery(region, instance_id), self.epoch
        )
        self.table.instance(slot).last_seen = time.monotonic()
        return slot

    async def _on_update(self, msg: Message) -> None:
        try:
            update = routing_pb2.RouteUpdate.FromString(msg.data)
        except Exception:  # noqa: BLE001 - a bad payload must not stop routing
            logger.warning("ignoring malformed route update on %s", msg.subject)
            return
        slot = self._register(update.instance_id, update.region)
        inst = self.table.instance(slot)
        in_order = inst.synced and update.version == inst.version + 1
        self.table.add_routes(slot, update.added_user_ids)
        self.table.remove_routes(slot, update.removed_user_ids)
        self._presence_dirty.set()  # every-region mode: the next presence snapshot soon
        if in_order:
            inst.version = update.version
        self._gauges()
        if msg.reply:
            await self.bus.publish(msg.reply, self._ack(slot, resync=not in_order))

    async def _on_snapshot(self, msg: Message) -> None:
        try:
            snap = routing_pb2.RouteSnapshot.FromString(msg.data)
        except Exception:  # noqa: BLE001
            logger.warning("ignoring malformed route snapshot on %s", msg.subject)
            return
        slot = self._register(snap.instance_id, snap.region)
        inst = self.table.instance(slot)
        self.table.replace_routes(slot, snap.user_ids)
        self._presence_dirty.set()
        inst.version = snap.version
        inst.synced = True
        self._gauges()
        if msg.reply:
            await self.bus.publish(msg.reply, self._ack(slot, resync=False))

    async def _on_heartbeat(self, msg: Message) -> None:
        try:
            hb = routing_pb2.InstanceHeartbeat.FromString(msg.data)
        except Exception:  # noqa: BLE001
            return
        slot = self._register(hb.instance_id, hb.region)
        inst = self.table.instance(slot)
        if msg.reply:
            await self.bus.publish(
                msg.reply, self._ack(slot, resync=not inst.synced or hb.version != inst.version)
            )

    # -- the other regions' routes (every-region mode) -----------------------------------

    async def _on_remote_update(self, msg: Message) -> None:
        try:
            update = routing_pb2.RouteUpdate.FromString(msg.data)
        except Exception:  # noqa: BLE001
            return
        if update.region == self.region:
            return
        self.remote.update(
            update.instance_id, update.region, update.version,
            update.added_user_ids, update.removed_user_ids, now=time.monotonic(),
        )  # fmt: skip

    async def _on_remote_snapshot(self, msg: Message) -> None:
        try:
            snap = routing_pb2.RouteSnapshot.FromString(msg.data)
        except Exception:  # noqa: BLE001
            return
        if snap.region == self.region:
            return
        came, went = self.remote.snapshot(
            snap.instance_id, snap.region, snap.version, snap.user_ids, now=time.monotonic()
        )
        for user in came:
            if not self.table.route_of(user):
                await self._announce(user, online=True, region=snap.region)
        for user in went:
            if not self.table.route_of(user):
                await self._announce(user, online=False)

    async def _on_remote_heartbeat(self, msg: Message) -> None:
        try:
            hb = routing_pb2.InstanceHeartbeat.FromString(msg.data)
        except Exception:  # noqa: BLE001
            return
        if hb.region == self.region:
            return
        now = time.monotonic()
        stale = self.remote.heartbeat(hb.instance_id, hb.region, hb.version, now=now)
        if stale and now - self._resync_asked >= self.instance_timeout:
            # Its route set is unknown here (it came back after a cut, or an update was
            # lost): every instance answers a resync with a snapshot, which we overhear.
            self._resync_asked = now
            await self.bus.publish(
                Subjects.ROUTE_RESYNC,
                routing_pb2.ResyncRequest(fanout_id=self.epoch).SerializeToString(),
            )

    # -- presence across regions (every-region mode) -------------------------------------

    def presence_snapshot(self, now_ms: int) -> internal_presence_pb2.PresenceSnapshot:
        """The next snapshot of this region's online users (users with a route)."""
        online = self.table.online_users()
        since = {u: self._online_since.get(u, now_ms) for u in online}
        self._online_since = since
        self._snapshot_seq += 1
        return internal_presence_pb2.PresenceSnapshot(
            region=self.region,
            epoch=self.epoch,
            seq=self._snapshot_seq,
            taken_at_ms=now_ms,
            users=[
                internal_presence_pb2.OnlineUser(user_id=u, online_since_ms=t)
                for u, t in sorted(since.items())
            ],
        )

    async def _snapshot_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._presence_dirty.wait(), self.presence_interval)
            self._presence_dirty.clear()
            try:
                snap = self.presence_snapshot(int(time.time() * 1000))
                await self.bus.publish(
                    Subjects.presence_snapshot(self.region), snap.SerializeToString()
                )
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                logger.warning("presence snapshot not published: %r", exc)
            # Route changes come in bursts: at most ~10 snapshots a second.
            await asyncio.sleep(min(0.1, self.presence_interval))

    async def _on_presence_snapshot(self, msg: Message) -> None:
        try:
            snap = internal_presence_pb2.PresenceSnapshot.FromString(msg.data)
        except Exception:  # noqa: BLE001
            logger.warning("ignoring malformed presence snapshot on %s", msg.subject)
            return
        came, went = self.presence_view.apply_snapshot(snap, now=time.monotonic())
        for user in came:
            if not self.table.route_of(user):
                await self._announce(user, online=True, region=snap.region)
        for user in went:
            if not self.table.route_of(user):
                await self._announce(user, online=False)

    async def _expire_loop(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(self.instance_timeout / 4)
            rounds += 1
            if rounds % 20 == 1:  # the size estimate walks the table: not every round
                TABLE_BYTES.set(self.table.estimated_bytes())
            await self.expire(time.monotonic())

    async def expire(self, now: float) -> list[str]:
        """Drops instances silent since ``now - instance_timeout``; announces their users offline.

        Returns:
            The users who were routed only to dropped instances (now offline).
        """
        cutoff = now - self.instance_timeout
        offline: list[str] = []
        if self.every_region:
            for user in self.presence_view.expire(now):
                if not self.table.route_of(user):
                    await self._announce(user, online=False)
        if self.presence_index:
            for user in self.remote.expire(cutoff):
                if not self.table.route_of(user):
                    await self._announce(user, online=False)
        for inst in self.table.instances():
            if inst.last_seen >= cutoff:
                continue
            slot = self.table.slot_of(inst.instance_id)
            if slot is None:
                continue
            orphans = self.table.remove_instance(slot)
            self._presence_dirty.set()
            logger.warning(
                "instance %s (%s) stopped heartbeating; dropped with %d users (%d now offline)",
                inst.instance_id, inst.region, len(inst.users), len(orphans),
            )  # fmt: skip
            if self.presence_index:  # online in another region: not offline
                orphans = [u for u in orphans if not self.remote.online(u)]
            if self.every_region:
                orphans = [u for u in orphans if not self.presence_view.online_elsewhere(u)]
            for i, user in enumerate(orphans):
                await self._announce_offline(user)
                if i % 100 == 99:
                    await asyncio.sleep(0)  # a dropped instance may hold thousands: stay responsive
            offline += orphans
        self._gauges()
        return offline

    async def _announce_offline(self, user_id: str) -> None:
        await self._announce(user_id, online=False)

    async def _announce(self, user_id: str, *, online: bool, region: str = "") -> None:
        """Tells the user's peers on this Fan-Out's instances that they went online or offline."""
        event = new_event("", seq=0, origin_region=self.region, actor=user_id)
        presence = event.presence_changed.presence
        presence.user_id = user_id
        presence.status = (
            presence_pb2.PRESENCE_STATUS_ONLINE if online else presence_pb2.PRESENCE_STATUS_OFFLINE
        )
        presence.last_seen_at.CopyFrom(event.occurred_at)
        if region:
            presence.regions.append(region)
        await self._deliver(
            event.SerializeToString(), self.table.user_audience(user_id, with_peers=True), 0
        )

    def _gauges(self) -> None:
        ROUTED_USERS.set(self.table.routed_users)
        INSTANCES.set(len(self.table.instances()))

    # -- events --------------------------------------------------------------------

    async def _ensure_channel(self, channel_id: str) -> None:
        if not self.table.knows_channel(channel_id):
            members, seq = await self.metadata.members(channel_id)
            self.table.set_members(channel_id, members, seq)

    async def _on_events(self, msgs: list[StreamMsg]) -> None:
        for msg in msgs:
            try:
                event = events_pb2.Event.FromString(msg.data)
            except Exception:  # noqa: BLE001 - skip (and ack) a poison message rather than block the stream
                logger.error("skipping undecodable event at stream seq %s", msg.stream_seq)
                continue
            kind = event.WhichOneof("payload") or "unknown"
            _child(EVENTS_PROCESSED, kind).inc()
            self.events_processed += 1
            await self._route(event, kind, msg.data, msg.stream_seq)

    def _converge(
        self, channel_id: str, stamp: Stamp, kind: str, user_id: str, seen: dict[str, int]
    ) -> None:
        """Every-region mode: records a join or leave and sets the user's membership by the rules."""
        changes = self._changes.setdefault((channel_id, user_id), [])
        if all(c.stamp != stamp for c in changes):  # not a redelivery
            changes.append(MembershipChange(kind, user_id, stamp, seen))
        self.table.put_member(channel_id, user_id, is_member(user_id, changes))

    async def _route(self, event: events_pb2.Event, kind: str, raw: bytes, stream_seq: int) -> None:
        table = self.table
        if self.every_region and kind in ("channel_created", "member_joined", "member_left"):
            await self._route_membership(event, kind, raw, stream_seq)
            return
        if kind == "read_marker_updated":
            audience = table.user_audience(event.read_marker_updated.user_id, with_peers=False)
        elif kind == "channel_created":
            ch = event.channel_created.channel
            table.set_members(ch.channel_id, ch.member_user_ids, event.seq)
            audience = table.channel_audience(ch.channel_id)
        elif kind == "member_joined":
            await self._ensure_channel(event.channel_id)
            table.add_member(event.channel_id, event.member_joined.user_id, event.seq)
            audience = table.channel_audience(event.channel_id)
        elif kind == "member_left":
            await self._ensure_channel(event.channel_id)
            leaver = event.member_left.user_id
            audience = table.channel_audience(event.channel_id, extra=[leaver])
            table.remove_member(event.channel_id, leaver, event.seq)
        elif event.channel_id:
            await self._ensure_channel(event.channel_id)
            audience = table.channel_audience(event.channel_id)
        else:
            return
        await self._deliver(raw, audience, stream_seq)

    async def _route_membership(
        self, event: events_pb2.Event, kind: str, raw: bytes, stream_seq: int
    ) -> None:
        """Every-region mode: a creation, join or leave, by the convergence rules.

        Events of different origins arrive in any order (a join written in one
        region may arrive before the channel's creation from another), so none
        replaces the member set: each join or leave is one more fact for
        :func:`~mesh.core.convergence.is_member`.
        """
        stamp = Stamp(event.hlc, event.origin_region, event.event_id, event.origin_seq)
        if kind == "channel_created":
            ch = event.channel_created.channel
            channel_id = ch.channel_id or event.channel_id
            await self._ensure_channel(channel_id)  # what else of it the region has applied
            for user in ch.member_user_ids:  # each initial member joined at the creation
                self._converge(channel_id, stamp, "join", user, {})
            audience = self.table.channel_audience(channel_id)
        elif kind == "member_joined":
            await self._ensure_channel(event.channel_id)
            joined = event.member_joined
            self._converge(event.channel_id, stamp, "join", joined.user_id, dict(joined.observed))
            audience = self.table.channel_audience(event.channel_id)
        else:
            await self._ensure_channel(event.channel_id)
            leaver = event.member_left
            audience = self.table.channel_audience(event.channel_id, extra=[leaver.user_id])
            self._converge(event.channel_id, stamp, "leave", leaver.user_id, dict(leaver.observed))
        await self._deliver(raw, audience, stream_seq)

    async def _deliver(self, raw_event: bytes, audience: Iterable[int], stream_seq: int) -> None:
        # Delivery = field 1 (the event, as received: no re-encoding) followed by
        # the per-instance fields; concatenated protobuf messages merge.
        head = b"\x0a" + _varint(len(raw_event)) + raw_event
        for slot, users in self.table.targets(audience).items():
            inst = self.table.instance(slot)
            inst.delivery_seq += 1
            tail = routing_pb2.Delivery(
                user_ids=users,
                stream_seq=stream_seq,
                fanout_epoch=inst.epoch,
                instance_seq=inst.delivery_seq,
            ).SerializeToString()
            await self.bus.publish(inst.subject, head + tail)
            self.deliveries += 1
            self.deliveries_by_region[inst.region] = (
                self.deliveries_by_region.get(inst.region, 0) + 1
            )
            _child(DELIVERIES, inst.region).inc()

    async def _on_typing(self, msg: Message) -> None:
        try:
            event = events_pb2.Event.FromString(msg.data)
        except Exception:  # noqa: BLE001
            return
        if not event.channel_id:
            return
        await self._ensure_channel(event.channel_id)
        await self._deliver(msg.data, self.table.channel_audience(event.channel_id), 0)

    async def _on_presence(self, msg: Message) -> None:
        try:
            event = events_pb2.Event.FromString(msg.data)
        except Exception:  # noqa: BLE001
            return
        presence = event.presence_changed.presence
        user = presence.user_id
        if not user:
            return
        if self.every_region and presence.status == presence_pb2.PRESENCE_STATUS_OFFLINE:
            # Offline in the event's region; not if online here or in a third region.
            origin = event.origin_region
            if origin != self.region and self.table.route_of(user):
                return
            if self.presence_view.online_elsewhere(user, besides=origin):
                return
        await self._deliver(msg.data, self.table.user_audience(user, with_peers=True), 0)
