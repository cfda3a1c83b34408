"""Every-region write mode: which users are online in the *other* regions, and where (ADR-026).

Each region's Fan-Out routes to its own region's notification instances only
(:class:`~services.fanout.table.RoutingTable`); the other regions' instances
send their route snapshots, updates and heartbeats to their own Fan-Out, and
this one overhears them across the gateways (it never answers them). From
those it keeps :class:`RemoteIndex`: remote instance -> users with a stream
on it. What it is for:

* presence that converges after a partition: a remote instance silent for the
  instance timeout (its region cut off) is dropped, and its users who are
  online nowhere else are announced offline here; when its snapshot arrives
  again after the heal, those still online are announced online;
* a user dropped from a local instance is announced offline only if no other
  region has a stream of theirs;
* ``GetRoute`` names the remote instances too.

Nothing here does I/O.

Example:
    >>> index = RemoteIndex()
    >>> index.snapshot("n-us-1", "us-east", 1, ["ann"], now=0.0)
    ([], [])
    >>> index.expire(cutoff=1.0), index.online("ann")
    (['ann'], False)
    >>> index.snapshot("n-us-1", "us-east", 2, ["ann"], now=2.0)  # the link healed
    (['ann'], [])
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["RemoteIndex", "RemoteInstance"]


@dataclass
class RemoteInstance:
    """A notification instance of another region, as overheard."""

    instance_id: str
    region: str
    version: int = 0
    last_seen: float = 0.0
    users: set[str] = field(default_factory=set)


class RemoteIndex:
    """Remote instances and the users on them (see the module docstring)."""

    def __init__(self) -> None:
        self._instances: dict[str, RemoteInstance] = {}
        self._where: dict[str, set[str]] = {}
        """User -> ids of the remote instances holding a stream of theirs."""
        self._dropped: set[str] = set()
        """Instances dropped as silent: their next snapshot is a heal (announce what it holds)."""

    def _instance(self, instance_id: str, region: str, now: float) -> RemoteInstance:
        inst = self._instances.get(instance_id)
        if inst is None:
            inst = self._instances[instance_id] = RemoteInstance(instance_id, region)
        inst.last_seen = now
        return inst

    def _add(self, inst: RemoteInstance, user: str) -> bool:
        """Routes ``user`` to ``inst``; True if they were online at no remote instance before."""
        if user in inst.users:
            return False
        inst.users.add(user)
        where = self._where.setdefault(user, set())
        where.add(inst.instance_id)
        return len(where) == 1

    def _remove(self, inst: RemoteInstance, user: str) -> bool:
        """Unroutes ``user`` from ``inst``; True if they are now online at no remote instance."""
        if user not in inst.users:
            return False
        inst.users.discard(user)
        where = self._where.get(user)
        if where is not None:
            where.discard(inst.instance_id)
            if not where:
                del self._where[user]
                return True
        return False

    def update(
        self,
        instance_id: str,
        region: str,
        version: int,
        added: Iterable[str],
        removed: Iterable[str],
        *,
        now: float,
    ) -> None:
        """Applies a route update (its instance announces these users' presence itself)."""
        inst = self._instance(instance_id, region, now)
        for user in added:
            self._add(inst, user)
        for user in removed:
            self._remove(inst, user)
        inst.version = max(inst.version, version)

    def snapshot(
        self, instance_id: str, region: str, version: int, users: Iterable[str], *, now: float
    ) -> tuple[list[str], list[str]]:
        """Makes the instance's route set exactly ``users``.

        Returns:
            ``(came_online, went_offline)``: users online at no remote instance
            before and now at this one, and the reverse; both empty for an
            instance seen for the first time (it is starting, or this process is:
            presence was announced when the streams opened), except after the
            instance was dropped as silent (a heal: what it holds is news here).
        """
        healed = instance_id in self._dropped
        first = instance_id not in self._instances and not healed
        self._dropped.discard(instance_id)
        inst = self._instance(instance_id, region, now)
        wanted = set(users)
        came = sorted(u for u in wanted - inst.users if self._add(inst, u))
        went = sorted(u for u in inst.users - wanted if self._remove(inst, u))
        inst.version = version
        if first:
            return [], []
        return came, went

    def heartbeat(self, instance_id: str, region: str, version: int, *, now: float) -> bool:
        """Refreshes an instance; True if its route set is unknown or out of date here."""
        inst = self._instances.get(instance_id)
        if inst is None:
            return True
        inst.last_seen = now
        return inst.version != version

    def expire(self, cutoff: float) -> list[str]:
        """Drops instances silent since ``cutoff``; returns users now online at no remote instance."""
        offline: list[str] = []
        for inst in [i for i in self._instances.values() if i.last_seen < cutoff]:
            del self._instances[inst.instance_id]
            self._dropped.add(inst.instance_id)
            for user in sorted(inst.users):
                if self._remove(inst, user):
                    offline.append(user)
        return offline

    def online(self, user_id: str) -> bool:
        """Whether ``user_id`` has a stream at some remote instance."""
        return user_id in self._where

    def where(self, user_id: str) -> list[RemoteInstance]:
        """The remote instances holding streams of ``user_id``, by instance id."""
        return sorted(
            (self._instances[i] for i in self._where.get(user_id, ())),
            key=lambda inst: inst.instance_id,
        )

    def instances(self) -> list[RemoteInstance]:
        """Every remote instance known."""
        return list(self._instances.values())
