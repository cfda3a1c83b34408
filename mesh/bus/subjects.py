"""Every NATS subject and stream name chatmesh uses: the bus's vocabulary.

Services import these names; the deployment generators (:mod:`mesh.deploy.nats`)
derive permissions from them. ``docs/subjects.md`` explains the design in prose.

Example:
    >>> Subjects.channel_events("ch_0123")
    'chatmesh.evt.ch.ch_0123'
    >>> Subjects.delivery("eu", "n-eu-1-ab12")
    'chatmesh.dlv.eu.n-eu-1-ab12'
    >>> mirror_stream_name("us-west")
    'EVENTS_US_WEST'
    >>> Subjects.origin_channel_events("eu", "ch_0123"), all_stream_name("eu")
    ('chatmesh.evt.eu.ch.ch_0123', 'ALL_EU')

The every-region write mode (ADR-026) has no EVENTS stream: each region writes
its own ``EVENTS_<REGION>`` (:func:`origin_stream_name`, subjects
``chatmesh.evt.<region>.>``) and reads ``ALL_<REGION>`` (:func:`all_stream_name`),
which sources every region's ``EVENTS_<REGION>``.
"""

from __future__ import annotations

from mesh.core.config import WRITES_EVERY_REGION, WRITES_PRIMARY

__all__ = [
    "EVENTS_STREAM",
    "WRITES_EVERY_REGION",
    "WRITES_PRIMARY",
    "Subjects",
    "all_stream_name",
    "mirror_stream_name",
    "origin_stream_name",
]

EVENTS_STREAM = "EVENTS"
"""The durable channel event log, placed in the primary region."""


class Subjects:
    """Every NATS subject chatmesh uses (all under ``chatmesh.``)."""

    EVENTS_ALL = "chatmesh.evt.>"
    """Stored in EVENTS: channel events and user events."""
    CHANNEL_EVENTS_ALL = "chatmesh.evt.ch.>"
    """Every channel's events (:meth:`channel_events`)."""
    TYPING_ALL = "chatmesh.eph.typing.>"
    """Typing indicators (core NATS, never stored) to the Fan-Out Service."""
    PRESENCE_ALL = "chatmesh.eph.presence.>"
    """Presence changes (core NATS) to the Fan-Out Service."""
    PRESENCE_SNAPSHOT_ALL = "chatmesh.eph.presence-snapshot.>"
    """Every-region mode: each region's online users (:meth:`presence_snapshot`)."""
    DELIVERY_ALL = "chatmesh.dlv.>"
    """Per-instance deliveries from the Fan-Out Service."""
    ROUTE_UPDATE_ALL = "chatmesh.route.update.>"
    """Notification instance -> Fan-Out: route changes (request/reply)."""
    ROUTE_SNAPSHOT_ALL = "chatmesh.route.snapshot.>"
    """Notification instance -> Fan-Out: full route sets (request/reply)."""
    ROUTE_HEARTBEAT_ALL = "chatmesh.route.hb.>"
    """Notification instance liveness."""
    ROUTE_RESYNC = "chatmesh.route.resync"
    """Fan-Out -> every instance: send me your full route set."""

    @staticmethod
    def channel_events(channel_id: str) -> str:
        """Subject of a channel's durable events."""
        return f"chatmesh.evt.ch.{channel_id}"

    @staticmethod
    def user_events(user_id: str) -> str:
        """Subject of a user's durable events (read markers)."""
        return f"chatmesh.evt.user.{user_id}"

    @staticmethod
    def typing(channel_id: str) -> str:
        """Subject of a channel's typing indicators."""
        return f"chatmesh.eph.typing.{channel_id}"

    @staticmethod
    def presence(user_id: str) -> str:
        """Subject of a user's presence changes."""
        return f"chatmesh.eph.presence.{user_id}"

    @staticmethod
    def presence_snapshot(region: str) -> str:
        """Every-region mode: subject of ``region``'s presence snapshots (its Fan-Out publishes)."""
        return f"chatmesh.eph.presence-snapshot.{region}"

    @staticmethod
    def delivery(region: str, instance_id: str) -> str:
        """Subject a notification instance receives its deliveries on."""
        return f"chatmesh.dlv.{region}.{instance_id}"

    @staticmethod
    def route_update(region: str, instance_id: str) -> str:
        """Subject of an instance's route updates."""
        return f"chatmesh.route.update.{region}.{instance_id}"

    @staticmethod
    def route_snapshot(region: str, instance_id: str) -> str:
        """Subject of an instance's full route sets."""
        return f"chatmesh.route.snapshot.{region}.{instance_id}"

    @staticmethod
    def mirror_delivery(region: str) -> str:
        """Deliver subject of the durable consumer on EVENTS that feeds ``region``'s mirror."""
        return f"chatmesh.mirror.{region}"

    @staticmethod
    def source_delivery(region: str, origin: str) -> str:
        """Every-region mode: deliver subject of the consumer feeding ``region``'s ``ALL_``.

        The durable consumer on ``origin``'s ``EVENTS_<ORIGIN>``; internal to the servers.
        """
        return f"chatmesh.source.{region}.{origin}"

    @staticmethod
    def origin_events_all(region: str) -> str:
        """Every-region mode: every event ``region`` writes (its ``EVENTS_<REGION>``)."""
        return f"chatmesh.evt.{region}.>"

    @staticmethod
    def origin_channel_events(region: str, channel_id: str) -> str:
        """Every-region mode: subject of a channel's events written in ``region``."""
        return f"chatmesh.evt.{region}.ch.{channel_id}"

    @staticmethod
    def origin_user_events(region: str, user_id: str) -> str:
        """Every-region mode: subject of a user's events written in ``region``."""
        return f"chatmesh.evt.{region}.user.{user_id}"

    @staticmethod
    def route_heartbeat(region: str, instance_id: str) -> str:
        """Subject of an instance's heartbeats."""
        return f"chatmesh.route.hb.{region}.{instance_id}"


def mirror_stream_name(region: str) -> str:
    """Name of a secondary region's mirror of EVENTS (``EVENTS_EU``, ``EVENTS_US_WEST``)."""
    return f"{EVENTS_STREAM}_{region.upper().replace('-', '_')}"


def origin_stream_name(region: str) -> str:
    """Every-region mode: the stream of the events ``region`` writes (``EVENTS_EU``), placed there."""
    return mirror_stream_name(region)


def all_stream_name(region: str) -> str:
    """Every-region mode: ``region``'s stream sourcing every region's events (``ALL_EU``)."""
    return f"ALL_{region.upper().replace('-', '_')}"
