"""Every-region write mode: who is online in the *other* regions, from their snapshots (ADR-026).

Each region keeps its own users' presence in its own Valkey (the writes never
leave the region) and its Fan-Out publishes a
:class:`~chatmesh.internal.v1.presence_pb2.PresenceSnapshot` of the region's
online users every few seconds and soon after a change. :class:`RegionalPresence`
is one process's view of the other regions, built from those snapshots only:

* a region's newest snapshot *replaces* what was known of it (an older one of
  the same publisher, or a repeat, is ignored);
* a region silent for ``timeout`` seconds is dropped: its users show offline
  unless online in another region (during a cut each side sees the other's users
  go offline, and its own stay online);
* a user is online if online in any region: the caller's own region from its
  Valkey, every other region from its snapshot (:meth:`merge`).

:meth:`apply` and :meth:`expire` also say whose "online somewhere else" changed,
for the Fan-Out to tell its local streams. Snapshots in sequence report nothing
(the live presence events carried those changes); only a snapshot after a
drop, a gap in the sequence or a restarted publisher does, since the events of
that time may have been lost.

Nothing here does I/O; ``now`` is a monotonic clock reading in seconds.

Example:
    >>> view = RegionalPresence("us-east", timeout=6.0)
    >>> view.apply("asia", "e1", 1, 1000, {"ann": 900}, now=0.0)
    ([], [])
    >>> view.regions_of("ann"), view.expire(now=7.0), view.regions_of("ann")
    (['asia'], ['ann'], [])
    >>> view.apply("asia", "e1", 9, 9000, {"ann": 900}, now=8.0)  # the link healed
    (['ann'], [])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from chatmesh.internal.v1 import presence_pb2 as internal_presence_pb2
from chatmesh.v1 import presence_pb2

__all__ = ["RegionalPresence", "RemoteRegion"]

REMEMBER_GONE = 100_000
"""How many users who went offline in another region keep their last-seen time."""


@dataclass
class RemoteRegion:
    """Another region as its last snapshot described it."""

    region: str
    epoch: str
    seq: int
    taken_at_ms: int
    heard_at: float
    """Monotonic seconds when the snapshot arrived here."""
    users: dict[str, int] = field(default_factory=dict)
    """User -> ``online_since_ms`` there."""


class RegionalPresence:
    """The other regions' online users (see the module docstring)."""

    def __init__(self, region: str, *, timeout: float, remember: int = REMEMBER_GONE) -> None:
        """Creates an empty view.

        Args:
            region: This process's region (its own snapshots are ignored).
            timeout: Seconds of silence after which a region is dropped.
            remember: How many offline users' last-seen times to keep.
        """
        self.region = region
        self.timeout = timeout
        self.remember = remember
        self._regions: dict[str, RemoteRegion] = {}
        self._where: dict[str, set[str]] = {}
        """User -> the remote regions where they are online."""
        self._dropped: dict[str, str] = {}
        """Region dropped as silent -> its last epoch: its next snapshot is a heal."""
        self._gone: dict[str, int] = {}
        """User online in no remote region any more -> epoch ms last seen online there."""

    def _online(self, user: str, region: str) -> bool:
        where = self._where.setdefault(user, set())
        before = bool(where)
        where.add(region)
        self._gone.pop(user, None)
        return not before

    def _offline(self, user: str, region: str, seen_ms: int) -> bool:
        where = self._where.get(user)
        if where is None or region not in where:
            return False
        where.discard(region)
        if where:
            return False
        del self._where[user]
        self._gone.pop(user, None)
        self._gone[user] = seen_ms
        while len(self._gone) > self.remember:
            del self._gone[next(iter(self._gone))]
        return True

    def apply(
        self,
        region: str,
        epoch: str,
        seq: int,
        taken_at_ms: int,
        users: Mapping[str, int],
        *,
        now: float,
    ) -> tuple[list[str], list[str]]:
        """Takes a region's snapshot (``users``: user -> online since, epoch ms).

        Returns:
            ``(came_online, went_offline)``, by user id: users now online in some
            remote region who were in none, and the reverse. Both empty unless
            the snapshot follows a drop, a gap or a restart of its publisher
            (see the module docstring), and for this process's own region and
            for an out-of-date snapshot, which change nothing.
        """
        if region == self.region:
            return [], []
        known = self._regions.get(region)
        if known is not None and known.epoch == epoch and seq <= known.seq:
            return [], []
        dropped_epoch = self._dropped.pop(region, None)
        if known is None:
            resync = dropped_epoch is not None
        else:
            resync = known.epoch != epoch or seq != known.seq + 1
        old = known.users if known is not None else {}
        came = [u for u in sorted(users) if u not in old and self._online(u, region)]
        went = [u for u in sorted(old) if u not in users and self._offline(u, region, taken_at_ms)]
        self._regions[region] = RemoteRegion(region, epoch, seq, taken_at_ms, now, dict(users))
        if not resync:
            return [], []
        return came, went

    def apply_snapshot(
        self, snap: internal_presence_pb2.PresenceSnapshot, *, now: float
    ) -> tuple[list[str], list[str]]:
        """:meth:`apply` of a decoded :class:`PresenceSnapshot` (what a NATS handler receives)."""
        return self.apply(
            snap.region, snap.epoch, snap.seq, snap.taken_at_ms,
            {u.user_id: u.online_since_ms for u in snap.users}, now=now,
        )  # fmt: skip

    def expire(self, now: float) -> list[str]:
        """Drops regions silent since ``now - timeout``; returns their users now online nowhere remote."""
        offline: list[str] = []
        for gone in [r for r in self._regions.values() if r.heard_at < now - self.timeout]:
            del self._regions[gone.region]
            self._dropped[gone.region] = gone.epoch
            for user in sorted(gone.users):
                if self._offline(user, gone.region, gone.taken_at_ms):
                    offline.append(user)
        return offline

    def regions_of(self, user_id: str) -> list[str]:
        """The remote regions where ``user_id`` is online, sorted."""
        return sorted(self._where.get(user_id, ()))

    def online_elsewhere(self, user_id: str, *, besides: str = "") -> bool:
        """Whether ``user_id`` is online in a remote region other than ``besides``."""
        where = self._where.get(user_id)
        return bool(where) and any(r != besides for r in where)  # type: ignore[union-attr]

    def last_seen_ms(self, user_id: str) -> int | None:
        """When ``user_id`` was last seen online in a remote region (None: not known here)."""
        return self._gone.get(user_id)

    def regions(self) -> list[RemoteRegion]:
        """The remote regions heard from within the timeout, by name."""
        return sorted(self._regions.values(), key=lambda r: r.region)

    def merge(self, local: presence_pb2.Presence, *, now_ms: int) -> presence_pb2.Presence:
        """``local`` (this region's Valkey) combined with the remote regions.

        Online if online anywhere (regions: the union, sorted; last seen now);
        else offline with the latest last-seen time known here; else, when
        neither side has seen the user, what ``local`` says (unspecified).
        """
        remote = self._where.get(local.user_id, set())
        regions = sorted(set(local.regions) | remote)
        merged = presence_pb2.Presence(user_id=local.user_id, regions=regions)
        if regions:
            merged.status = presence_pb2.PRESENCE_STATUS_ONLINE
            merged.last_seen_at.FromMilliseconds(now_ms)
            return merged
        seen = self._gone.get(local.user_id)
        if local.status == presence_pb2.PRESENCE_STATUS_UNSPECIFIED and seen is None:
            return merged
        merged.status = presence_pb2.PRESENCE_STATUS_OFFLINE
        local_seen = local.last_seen_at.ToMilliseconds() if local.HasField("last_seen_at") else None
        best = max((s for s in (seen, local_seen) if s is not None), default=None)
        if best is not None:
            merged.last_seen_at.FromMilliseconds(best)
        return merged
