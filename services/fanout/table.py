"""The Fan-Out Service's routing table and membership cache, kept compact.

ADR-010 estimated ~2 GB for 50K users; the table here is a few tens of MB for
50K users with 20 memberships each, because it interns every user and channel
id once and stores relations as arrays of 32-bit indexes:

* ``channel -> members``: ``array('I')`` of user indexes, sorted;
* ``user -> channels``: ``array('I')`` of channel indexes (for presence audiences);
* ``user -> instances``: one small int (the usual case: one live instance) or a
  tuple of ints (the same user on several devices in several regions).

:meth:`RoutingTable.targets` turns an audience into one recipient list per
notification instance — the unit of delivery (ADR-005: per instance, not per
user). Nothing here does I/O.

Example:
    >>> table = RoutingTable()
    >>> table.set_members("ch_1", ["alice", "bob"], seq=1)
    >>> slot = table.add_instance("n-eu-1", "eu", "chatmesh.dlv.eu.n-eu-1")
    >>> table.add_routes(slot, ["bob"])
    >>> {table.instance(s).instance_id: users for s, users in table.targets(table.channel_audience("ch_1")).items()}
    {'n-eu-1': ['bob']}
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left, insort
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Instance", "RoutingTable"]


@dataclass
class Instance:
    """A notification instance the table routes to."""

    instance_id: str
    region: str
    subject: str
    """Its delivery subject."""
    version: int = 0
    """The route-set version last applied."""
    last_seen: float = 0.0
    """Monotonic time of its last heartbeat or update."""
    users: set[int] = field(default_factory=set)
    """User indexes routed to it."""
    delivery_seq: int = 0
    """Deliveries published to it in this Fan-Out epoch."""
    synced: bool = False
    """Whether its full route set is known (a snapshot arrived)."""
    epoch: str = ""
    """Numbering epoch of its deliveries: new whenever this process (re)registers it,
    so an instance dropped and re-added sees a new epoch, not a counter going back."""


class RoutingTable:
    """Users, channels, memberships and routes."""

    def __init__(self) -> None:
        self._users: list[str] = []
        self._user_idx: dict[str, int] = {}
        self._channels: list[str] = []
        self._channel_idx: dict[str, int] = {}
        self._members: list[array[int]] = []
        self._membership_seq: array[int] = array("q")
        self._user_channels: list[array[int] | None] = []
        self._routes: dict[int, int | tuple[int, ...]] = {}
        self._instances: dict[int, Instance] = {}
        self._instance_slot: dict[str, int] = {}
        self._next_slot = 0
        self.memberships = 0

    # -- interning -------------------------------------------------------------

    def _user(self, user_id: str) -> int:
        idx = self._user_idx.get(user_id)
        if idx is None:
            idx = len(self._users)
            user_id = sys.intern(user_id)
            self._users.append(user_id)
            self._user_idx[user_id] = idx
            self._user_channels.append(None)
        return idx

    def _channel(self, channel_id: str) -> int:
        idx = self._channel_idx.get(channel_id)
        if idx is None:
            idx = len(self._channels)
            self._channels.append(channel_id)
            self._channel_idx[channel_id] = idx
            self._members.append(array("I"))
            self._membership_seq.append(0)
        return idx

    # -- membership --------------------------------------------------------------

    def knows_channel(self, channel_id: str) -> bool:
        """Whether the channel's membership is cached."""
        return channel_id in self._channel_idx

    def set_members(self, channel_id: str, user_ids: Iterable[str], seq: int) -> None:
        """Replaces a channel's members (from a snapshot or ChannelCreated) unless ``seq`` is older."""
        c = self._channel(channel_id)
        if seq < self._membership_seq[c]:
            return
        for u in self._members[c]:
            self._unlink(u, c)
        members = array("I", sorted({self._user(uid) for uid in user_ids}))
        self.memberships += len(members) - len(self._members[c])
        self._members[c] = members
        for u in members:
            self._link(u, c)
        self._membership_seq[c] = seq

    def add_member(self, channel_id: str, user_id: str, seq: int) -> bool:
        """Applies a join at ``seq``; False if the table already reflects a newer change."""
        c = self._channel(channel_id)
        if seq <= self._membership_seq[c]:
            return False
        self._membership_seq[c] = seq
        u = self._user(user_id)
        members = self._members[c]
        i = bisect_left(members, u)
        if i == len(members) or members[i] != u:
            members.insert(i, u)
            self.memberships += 1
            self._link(u, c)
        return True

    def remove_member(self, channel_id: str, user_id: str, seq: int) -> bool:
        """Applies a leave at ``seq``; False if the table already reflects a newer change."""
        c = self._channel(channel_id)
        if seq <= self._membership_seq[c]:
            return False
        self._membership_seq[c] = seq
        u = self._user_idx.get(user_id)
        if u is None:
            return True
        members = self._members[c]
        i = bisect_left(members, u)
        if i < len(members) and members[i] == u:
            del members[i]
            self.memberships -= 1
            self._unlink(u, c)
        return True

    def put_member(self, channel_id: str, user_id: str, present: bool) -> None:
        """Makes ``user_id`` a member of the channel or not, whatever the membership seq.

        The every-region write mode (ADR-026) has no channel seq: its caller decides
        membership by the convergence rules and states the outcome here.
        """
        c = self._channel(channel_id)
        u = self._user(user_id)
        members = self._members[c]
        i = bisect_left(members, u)
        there = i < len(members) and members[i] == u
        if present and not there:
            members.insert(i, u)
            self.memberships += 1
            self._link(u, c)
        elif there and not present:
            del members[i]
            self.memberships -= 1
            self._unlink(u, c)

    def _link(self, u: int, c: int) -> None:
        chans = self._user_channels[u]
        if chans is None:
            self._user_channels[u] = array("I", [c])
        elif c not in chans:
            insort(chans, c)

    def _unlink(self, u: int, c: int) -> None:
        chans = self._user_channels[u]
        if chans is not None:
            i = bisect_left(chans, c)
            if i < len(chans) and chans[i] == c:
                del chans[i]

    def members(self, channel_id: str) -> list[str]:
        """A channel's members (sorted by first appearance index)."""
        c = self._channel_idx.get(channel_id)
        return [] if c is None else [self._users[u] for u in self._members[c]]

    # -- audiences -----------------------------------------------------------------

    def channel_audience(self, channel_id: str, extra: Iterable[str] = ()) -> set[int]:
        """User indexes of a channel's members plus ``extra`` users."""
        c = self._channel_idx.get(channel_id)
        audience: set[int] = set() if c is None else set(self._members[c])
        for uid in extra:
            audience.add(self._user(uid))
        return audience

    def user_audience(self, user_id: str, *, with_peers: bool) -> set[int]:
        """The user, plus (``with_peers``) everyone sharing a channel with them."""
        u = self._user(user_id)
        audience = {u}
        if with_peers:
            for c in self._user_channels[u] or ():
                audience.update(self._members[c])
        return audience

    def targets(self, audience: Iterable[int]) -> dict[int, list[str]]:
        """Instance slot -> user ids on it, for the routed users of ``audience``."""
        routes = self._routes
        users = self._users
        out: dict[int, list[str]] = {}
        for u in audience:
            slot = routes.get(u)
            if slot is None:
                continue
            if type(slot) is int:
                bucket = out.get(slot)
                if bucket is None:
                    out[slot] = [users[u]]
                else:
                    bucket.append(users[u])
            else:
                for s in slot:  # type: ignore[union-attr]
                    out.setdefault(s, []).append(users[u])
        return out

    # -- instances and routes ----------------------------------------------------------

    def add_instance(self, instance_id: str, region: str, subject: str, epoch: str = "") -> int:
        """Registers an instance (idempotent); returns its slot."""
        slot = self._instance_slot.get(instance_id)
        if slot is None:
            slot = self._next_slot
            self._next_slot += 1
            self._instance_slot[instance_id] = slot
            self._instances[slot] = Instance(instance_id, region, subject, epoch=f"{epoch}.{slot}")
        return slot

    def slot_of(self, instance_id: str) -> int | None:
        """The slot of a registered instance."""
        return self._instance_slot.get(instance_id)

    def instance(self, slot: int) -> Instance:
        """The instance in ``slot``."""
        return self._instances[slot]

    def instances(self) -> list[Instance]:
        """Every registered instance."""
        return list(self._instances.values())

    def add_routes(self, slot: int, user_ids: Iterable[str]) -> None:
        """Routes ``user_ids`` to the instance in ``slot``."""
        inst = self._instances[slot]
        for uid in user_ids:
            u = self._user(uid)
            if u in inst.users:
                continue
            inst.users.add(u)
            current = self._routes.get(u)
            if current is None:
                self._routes[u] = slot
            elif type(current) is int:
                self._routes[u] = (current, slot)
            else:
                self._routes[u] = (*current, slot)  # type: ignore[misc]

    def remove_routes(self, slot: int, user_ids: Iterable[str]) -> None:
        """Stops routing ``user_ids`` to the instance in ``slot``."""
        inst = self._instances[slot]
        for uid in user_ids:
            u = self._user_idx.get(uid)
            if u is None or u not in inst.users:
                continue
            inst.users.discard(u)
            self._drop_route(u, slot)

    def _drop_route(self, u: int, slot: int) -> None:
        current = self._routes.get(u)
        if current is None:
            return
        if type(current) is int:
            if current == slot:
                del self._routes[u]
            return
        rest = tuple(s for s in current if s != slot)  # type: ignore[union-attr]
        if not rest:
            del self._routes[u]
        else:
            self._routes[u] = rest[0] if len(rest) == 1 else rest

    def replace_routes(self, slot: int, user_ids: Iterable[str]) -> None:
        """Makes the instance's route set exactly ``user_ids`` (a snapshot)."""
        inst = self._instances[slot]
        wanted = {self._user(uid) for uid in user_ids}
        for u in inst.users - wanted:
            self._drop_route(u, slot)
        new = wanted - inst.users
        inst.users = set(inst.users & wanted)
        self.add_routes(slot, (self._users[u] for u in new))

    def remove_instance(self, slot: int) -> list[str]:
        """Forgets an instance; returns the users who are now routed nowhere."""
        inst = self._instances.pop(slot)
        del self._instance_slot[inst.instance_id]
        orphans = []
        for u in inst.users:
            self._drop_route(u, slot)
            if u not in self._routes:
                orphans.append(self._users[u])
        return orphans

    def route_of(self, user_id: str) -> list[Instance]:
        """Instances holding streams of ``user_id``."""
        u = self._user_idx.get(user_id)
        slot = None if u is None else self._routes.get(u)
        if slot is None:
            return []
        slots = (slot,) if type(slot) is int else slot
        return sorted((self._instances[s] for s in slots), key=lambda i: i.instance_id)  # type: ignore[union-attr]

    def online_users(self) -> list[str]:
        """Every user with at least one route (a live stream on some instance)."""
        return [self._users[u] for u in self._routes]

    # -- stats -----------------------------------------------------------------------

    @property
    def routed_users(self) -> int:
        """Users with at least one route."""
        return len(self._routes)

    @property
    def route_count(self) -> int:
        """(user, instance) pairs."""
        return sum(len(i.users) for i in self._instances.values())

    @property
    def channel_count(self) -> int:
        """Channels cached."""
        return len(self._channels)

    def estimated_bytes(self) -> int:
        """A deep-size estimate of the table's Python objects (arrays, dicts, strings)."""
        size = sys.getsizeof
        total = (
            size(self._users)
            + size(self._user_idx)
            + size(self._channels)
            + size(self._channel_idx)
        )
        total += sum(size(s) for s in self._users) + sum(size(s) for s in self._channels)
        total += size(self._members) + sum(size(a) for a in self._members)
        total += size(self._membership_seq)
        total += size(self._user_channels) + sum(
            size(a) for a in self._user_channels if a is not None
        )
        total += size(self._routes) + sum(
            size(v) for v in self._routes.values() if type(v) is tuple
        )
        total += sum(size(i.users) for i in self._instances.values())
        return total
