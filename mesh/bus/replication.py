"""Replication health: a secondary region's mirror of EVENTS against its source.

:func:`assess` is pure: one sample (the source's last seq, the mirror's last seq,
what nats-server reports of the mirror) plus how long the mirror has not moved
gives a :class:`MirrorHealth` (``ok``, ``lagging``, ``stalled``).
:class:`ReplicationMonitor` samples both streams every ``interval`` seconds (the
worker of each secondary region runs one), exports the lag as Prometheus
metrics and repairs a stalled mirror: it re-creates the durable consumer the
mirror reads through if it is gone, which is what nats-server needs to resume
(``docs/replication.md``). ``chatmesh status`` shows the same assessment from
the servers' monitoring endpoints.

Example:
    >>> assess("EVENTS_EU", source_last=120, mirror_last=100, still_for=30.0).state
    'stalled'
    >>> assess("EVENTS_EU", source_last=120, mirror_last=118, still_for=0.5).state
    'lagging'
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from prometheus_client import Counter, Gauge

from mesh.bus.streams import ensure_mirror_consumer
from mesh.bus.subjects import EVENTS_STREAM

__all__ = ["STALL_AFTER", "MirrorHealth", "ReplicationMonitor", "assess"]

logger = logging.getLogger(__name__)

STALL_AFTER = 10.0
"""Seconds a mirror that is behind may sit at the same seq before it counts as stalled."""

LAG = Gauge(
    "chatmesh_replication_lag_messages",
    "Messages the mirror is behind its source (source last seq - mirror last seq)",
    ["mirror"],
)
BEHIND = Gauge(
    "chatmesh_replication_behind_seconds",
    "Seconds since the mirror last held everything its source held (0: caught up)",
    ["mirror"],
)
STALLED = Gauge(
    "chatmesh_replication_stalled", "1 while the mirror is behind and not moving", ["mirror"]
)
HOLES = Gauge(
    "chatmesh_replication_holes_messages",
    "Messages missing inside the mirror that its source holds (mirror deleted - source deleted);"
    " the worker reads them from the source",
    ["mirror"],
)
REPAIRS = Counter(
    "chatmesh_replication_repairs_total", "Repairs of a stalled mirror", ["mirror", "action"]
)


@dataclass(frozen=True)
class MirrorHealth:
    """One assessment of a mirror."""

    mirror: str
    source_last: int
    """The source's last stream seq (-1: unknown, e.g. cut off)."""
    mirror_last: int
    """The mirror's last stream seq (-1: unknown)."""
    still_for: float
    """Seconds the mirror has sat at ``mirror_last`` while behind."""

    @property
    def lag(self) -> int:
        """Messages behind (0 when unknown)."""
        if self.source_last < 0 or self.mirror_last < 0:
            return 0
        return max(0, self.source_last - self.mirror_last)

    @property
    def state(self) -> str:
        """``ok``, ``lagging`` (behind, moving), ``stalled`` (behind, still) or ``unknown``."""
        if self.source_last < 0 or self.mirror_last < 0:
            return "unknown"
        if self.lag == 0:
            return "ok"
        return "stalled" if self.still_for >= STALL_AFTER else "lagging"


def assess(mirror: str, *, source_last: int, mirror_last: int, still_for: float) -> MirrorHealth:
    """The health of ``mirror`` from one sample (see the module example)."""
    return MirrorHealth(mirror, source_last, mirror_last, still_for)


class ReplicationMonitor:
    """Watches one mirror of EVENTS: metrics, stall detection, repair."""

    def __init__(
        self, nc: NATS, mirror: str, *, interval: float = 2.0, repair: bool = True
    ) -> None:
        """Prepares the monitor; :meth:`run` loops until cancelled.

        Args:
            nc: A client that may read stream info and create consumers on EVENTS
                (a secondary's worker user).
            mirror: The mirror's stream name (``EVENTS_EU``).
            interval: Seconds between samples.
            repair: Re-create the mirror's durable consumer when it stalls.
        """
        self.nc = nc
        self.mirror = mirror
        self.interval = interval
        self.repair = repair
        self.last: MirrorHealth | None = None
        self._seen = -1
        self._still_since = time.monotonic()
        self._caught_up_at = time.monotonic()
        self._repaired_at = 0.0
        self.holes = 0
        """Messages missing inside the mirror at the last sample (see ``HOLES``)."""

    async def _info(self, stream: str) -> dict[str, Any]:
        reply = await self.nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=2.0)
        info: dict[str, Any] = json.loads(reply.data)
        if "error" in info:
            raise RuntimeError(info["error"].get("description", "stream info failed"))
        return info

    async def sample(self) -> MirrorHealth:
        """Reads both streams once, updates the metrics, and returns the assessment."""
        now = time.monotonic()
        mirror_info: dict[str, Any] = {}
        try:
            mirror_info = await self._info(self.mirror)
            mirror_last = int(mirror_info["state"]["last_seq"])
        except Exception:  # noqa: BLE001 - the mirror's servers are down: unknown
            mirror_last = -1
        try:
            source_state = (await self._info(EVENTS_STREAM))["state"]
            source_last = int(source_state["last_seq"])
        except Exception:  # noqa: BLE001 - the gateway is cut: unknown
            source_last, source_state = -1, None
        if source_state is not None and mirror_last >= 0:
            holes = max(
                0,
                int(mirror_info["state"].get("num_deleted", 0))
                - int(source_state.get("num_deleted", 0)),
            )
            if holes > self.holes:
                logger.warning("mirror %s lacks %d messages its source holds (a hole after a "
                               "cut); its worker reads them from %s", self.mirror, holes,
                               EVENTS_STREAM)  # fmt: skip
            self.holes = holes
            HOLES.labels(self.mirror).set(holes)
        if mirror_last != self._seen:
            self._seen, self._still_since = mirror_last, now
        if 0 <= source_last <= mirror_last:
            self._caught_up_at = now
        health = assess(
            self.mirror,
            source_last=source_last,
            mirror_last=mirror_last,
            still_for=now - self._still_since if source_last > mirror_last >= 0 else 0.0,
        )
        LAG.labels(self.mirror).set(health.lag)
        BEHIND.labels(self.mirror).set(0 if health.lag == 0 else now - self._caught_up_at)
        STALLED.labels(self.mirror).set(1 if health.state == "stalled" else 0)
        if health.state == "stalled" and self.repair and now - self._repaired_at >= STALL_AFTER:
            self._repaired_at = now
            await self._repair(mirror_info, health)
        self.last = health
        return health

    async def _repair(self, info: dict[str, Any], health: MirrorHealth) -> None:
        config = info.get("config") or {}
        mirror = config.get("mirror") or {}
        logger.warning(
            "mirror %s stalled at %d (source at %d, still for %.0fs)",
            self.mirror, health.mirror_last, health.source_last, health.still_for,
        )  # fmt: skip
        if not mirror.get("consumer"):
            REPAIRS.labels(self.mirror, "none").inc()
            logger.warning(
                "mirror %s reads EVENTS through an ephemeral consumer, which nats-server "
                "re-creates only after its own backoff; recreate the stream with a durable "
                "mirror consumer (python -m mesh.bus.streams, docs/replication.md)",
                self.mirror,
            )
            return
        try:
            await ensure_mirror_consumer(self.nc, config, timeout=5.0)
            REPAIRS.labels(self.mirror, "consumer").inc()
            logger.info("mirror %s: its durable consumer is in place", self.mirror)
        except Exception as exc:  # noqa: BLE001 - try again at the next stall
            REPAIRS.labels(self.mirror, "failed").inc()
            logger.warning("mirror %s: repair failed: %r", self.mirror, exc)

    async def run(self) -> None:
        """Samples every ``interval`` seconds until cancelled."""
        while True:
            try:
                await self.sample()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("replication check of %s failed", self.mirror)
            await asyncio.sleep(self.interval)
