"""Presence in Valkey: writes to the primary, reads from the region's replica.

Keys (standalone Valkey; the Lua script touches keys it derives, so it is not
cluster-safe by design — presence fits one primary at chatmesh's scale):

* ``chatmesh:pres:<user>`` hash: ``<region>/<instance>`` -> live stream count there.
* ``chatmesh:inst:<instance>`` with a TTL: the instance is alive while it exists
  (refreshed by the instance's heartbeat). A crashed instance's streams stop
  counting when it expires, without anyone cleaning up after it.
* ``chatmesh:seen:<user>``: epoch ms when the user last went offline.

Example:
    >>> async def demo(store: PresenceStore) -> None:  # doctest: +SKIP
    ...     await store.heartbeat()
    ...     became_online = await store.stream_opened("alice")
    ...     [p] = await store.get(["alice"])
"""

from __future__ import annotations

import logging
import time

import valkey.asyncio as valkey_async

from chatmesh.v1 import presence_pb2

__all__ = ["PresenceStore"]

logger = logging.getLogger(__name__)

_CHANGE = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
local alive = 0
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  local inst = string.match(f, '/(.*)$')
  if inst and redis.call('EXISTS', 'chatmesh:inst:' .. inst) == 1 then alive = alive + 1 end
end
if n <= 0 and alive == 0 then redis.call('SET', KEYS[2], ARGV[3]) end
return {n, alive}
"""


class PresenceStore:
    """One notification instance's (or query service's) view of presence."""

    def __init__(
        self,
        *,
        primary_url: str,
        replica_url: str,
        region: str,
        instance_id: str = "",
        instance_ttl: float = 10.0,
    ) -> None:
        """Connects lazily.

        Args:
            primary_url: Valkey primary as reached from this region (writes).
            replica_url: This region's replica (reads).
            region: This region.
            instance_id: The notification instance (writers only).
            instance_ttl: Seconds an instance counts as alive after its last heartbeat.
        """
        self._primary = valkey_async.Valkey.from_url(
            primary_url, socket_timeout=5.0, socket_connect_timeout=3.0
        )
        self._replica = valkey_async.Valkey.from_url(
            replica_url, socket_timeout=5.0, socket_connect_timeout=3.0
        )
        self.region = region
        self.instance_id = instance_id
        self.instance_ttl = instance_ttl
        self._change = self._primary.register_script(_CHANGE)

    @property
    def _field(self) -> str:
        return f"{self.region}/{self.instance_id}"

    async def heartbeat(self) -> None:
        """Marks this instance alive for ``instance_ttl`` seconds."""
        await self._primary.set(
            f"chatmesh:inst:{self.instance_id}", "1", px=int(self.instance_ttl * 1000)
        )

    async def _apply(self, user_id: str, delta: int) -> tuple[int, int]:
        result = await self._change(
            keys=[f"chatmesh:pres:{user_id}", f"chatmesh:seen:{user_id}"],
            args=[self._field, delta, int(time.time() * 1000)],
        )
        return int(result[0]), int(result[1])

    async def stream_opened(self, user_id: str) -> bool:
        """Counts a new stream; True if the user was offline everywhere before."""
        count, alive = await self._apply(user_id, 1)
        return count == 1 and alive == 1

    async def stream_closed(self, user_id: str) -> bool:
        """Uncounts a stream; True if the user is now offline everywhere."""
        count, alive = await self._apply(user_id, -1)
        return count <= 0 and alive == 0

    async def instance_gone(self, users: dict[str, int]) -> list[str]:
        """Removes all of this instance's streams (clean shutdown); returns users now offline."""
        offline = []
        for user_id, streams in users.items():
            count, alive = await self._apply(user_id, -streams)
            if count <= 0 and alive == 0:
                offline.append(user_id)
        await self._primary.delete(f"chatmesh:inst:{self.instance_id}")
        return offline

    async def get(self, user_ids: list[str]) -> list[presence_pb2.Presence]:
        """Presence of each user, in order, read from this region's replica."""
        pipe = self._replica.pipeline(transaction=False)
        for user in user_ids:
            pipe.hgetall(f"chatmesh:pres:{user}")
            pipe.get(f"chatmesh:seen:{user}")
        raw = await pipe.execute()
        instances: set[str] = set()
        parsed: list[tuple[dict[str, int], int | None]] = []
        for i in range(len(user_ids)):
            fields = {k.decode(): int(v) for k, v in (raw[2 * i] or {}).items()}
            seen = raw[2 * i + 1]
            parsed.append((fields, int(seen) if seen else None))
            instances.update(f.split("/", 1)[1] for f in fields if "/" in f)
        alive: set[str] = set()
        if instances:
            names = sorted(instances)
            flags = await self._replica.mget([f"chatmesh:inst:{i}" for i in names])
            alive = {name for name, flag in zip(names, flags, strict=True) if flag}
        now_ms = int(time.time() * 1000)
        result = []
        for user, (fields, seen) in zip(user_ids, parsed, strict=True):
            regions = sorted(
                {
                    f.split("/", 1)[0]
                    for f, n in fields.items()
                    if n > 0 and f.split("/", 1)[-1] in alive
                }
            )
            presence = presence_pb2.Presence(user_id=user, regions=regions)
            if regions:
                presence.status = presence_pb2.PRESENCE_STATUS_ONLINE
                presence.last_seen_at.FromMilliseconds(now_ms)
            elif seen is not None or fields:
                presence.status = presence_pb2.PRESENCE_STATUS_OFFLINE
                if seen is not None:
                    presence.last_seen_at.FromMilliseconds(seen)
            else:
                presence.status = presence_pb2.PRESENCE_STATUS_UNSPECIFIED
            result.append(presence)
        return result

    async def close(self) -> None:
        """Closes both connections."""
        await self._primary.aclose()
        await self._replica.aclose()
