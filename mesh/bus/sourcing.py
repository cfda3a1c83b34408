"""Keeping a region's ``ALL_<REGION>`` caught up with every origin it sources (ADR-026).

In the every-region write mode each region's ``ALL_<REGION>`` sources every
``EVENTS_<ORIGIN>`` through a durable push consumer ``all-<region>`` on the origin
(:func:`mesh.bus.streams.aggregate_stream_config`). Measured with nats-server
2.15.1 (``docs/replication.md``, "Sources after a cut"): during a gateway cut the
origin's consumer keeps pushing into the cut link, so its delivered position moves
past what the aggregate stored, while its ack floor stays at 0; after the heal its
heartbeats match that position, the source sees nothing missing, and the events
written during the cut arrive only when the server's own backoff (up to 2 min per
failure) runs out — over 100 s in one run, with the source reported active and
lag 0 throughout.

:class:`SourceMonitor` watches one aggregate: every ``interval`` seconds it
compares, per origin, the last origin sequence the aggregate stored (the source
info's ``seq``) with the origin stream's last sequence. A source that is behind
and has not moved for ``stall_after`` seconds is *restarted*: removed from the
aggregate's config, its consumer reset to the next sequence it needs
(``$JS.API.CONSUMER.RESET``, API level 4), then added back. Each region's worker
runs one on its region's aggregate.

Why not only the reset: a reset restarts the consumer's delivery sequence at 1
under a source that still counts the old one, and nats-server's source takes the
first message whose delivery sequence is one past its count, whatever its stream
sequence (``processInboundSourceMsg``, nats-server 2.15): one reset made under a
live source left ``ALL_ASIA`` without 100 of eu's messages for good, the source
reporting lag 0 (1 run in 4 of the cut test under load). Removing the source
first means nothing listens while the consumer is reset; the re-added source
starts from its stored position with its delivery count at 0 and takes the
redelivery from there, so nothing is skipped and nothing duplicated (it ignores
what it stored). The removed source waits in the aggregate's metadata until it
is back: a failed re-add, or a monitor that died in between, is repaired first
thing on the next sample (by any worker of the region).

Example:
    >>> async def demo(nc) -> None:  # doctest: +SKIP
    ...     monitor = SourceMonitor(nc, "ALL_EU", interval=2.0)
    ...     await monitor.run()
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

__all__ = ["RESTARTING", "SourceMonitor", "SourceState"]

logger = logging.getLogger(__name__)

RESTARTING = "chatmesh.restarting-source"
"""Aggregate metadata key: the source a restart took out, as JSON, until it is back."""

SOURCE_LAG = Gauge(
    "chatmesh_source_lag_messages",
    "Messages of an origin stream its region's ALL_ stream does not hold yet",
    ["stream", "origin"],
)
SOURCE_RESETS = Counter(
    "chatmesh_source_resets_total",
    "Resets of a stalled source's consumer on its origin stream",
    ["stream", "origin", "result"],
)


@dataclass
class SourceState:
    """What the monitor knows of one source of the aggregate."""

    origin: str
    consumer: str
    stored: int = 0
    """The last origin sequence the aggregate stored."""
    origin_last: int = 0
    """The origin stream's last sequence, as last read."""
    since: float = 0.0
    """Monotonic time ``stored`` last moved (or the source caught up)."""


class SourceMonitor:
    """Resets the consumer of any source of one aggregate stream that stalls behind its origin."""

    def __init__(
        self,
        nc: NATS,
        stream: str,
        *,
        interval: float = 2.0,
        stall_after: float = 5.0,
        timeout: float = 5.0,
    ) -> None:
        """Describes the monitor; :meth:`run` starts it.

        Args:
            nc: A client allowed ``STREAM.INFO`` and ``STREAM.UPDATE`` of the aggregate,
                ``STREAM.INFO`` of each origin and ``CONSUMER.RESET`` of the
                aggregate's consumer on each origin.
            stream: The aggregate (``ALL_<REGION>``).
            interval: Seconds between samples.
            stall_after: Seconds a source that is behind may sit still before its
                consumer is reset (a source catching up moves every sample).
            timeout: Seconds to wait for each JetStream API answer.
        """
        self.nc = nc
        self.stream = stream
        self.interval = interval
        self.stall_after = stall_after
        self.timeout = timeout
        self.sources: dict[str, SourceState] = {}
        self.resets = 0

    async def _api(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        payload = json.dumps(body).encode() if body is not None else b""
        reply = await self.nc.request(subject, payload, timeout=self.timeout)
        data: dict[str, Any] = json.loads(reply.data)
        if "error" in data:
            raise RuntimeError(f"{subject}: {data['error']}")
        return data

    async def _update(self, config: dict[str, Any]) -> None:
        await self._api(f"$JS.API.STREAM.UPDATE.{self.stream}", config)

    async def _restart(self, config: dict[str, Any], origin: str, consumer: str, seq: int) -> None:
        """Removes ``origin``'s source, resets its consumer to ``seq``, adds the source back.

        The removed source waits in the aggregate's own metadata (``RESTARTING``) until
        it is back, so a monitor that dies in between (or the next one) puts it back.
        """
        entry = next(s for s in config["sources"] if s["name"] == origin)
        metadata = {**(config.get("metadata") or {}), RESTARTING: json.dumps(entry)}
        without = dict(config, metadata=metadata,
                       sources=[s for s in config["sources"] if s["name"] != origin])  # fmt: skip
        await self._update(without)
        try:
            await self._api(f"$JS.API.CONSUMER.RESET.{origin}.{consumer}", {"seq": seq})
        finally:
            await self._restore(without)

    async def _restore(self, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` with a source left out by a restart back in (the update made)."""
        metadata = dict(config.get("metadata") or {})
        entry = json.loads(metadata.pop(RESTARTING))
        sources = [s for s in config.get("sources") or [] if s["name"] != entry["name"]]
        restored = dict(config, metadata=metadata, sources=[*sources, entry])
        await self._update(restored)
        return restored

    async def check(self) -> list[str]:
        """Samples once; resets what stalled.

        Returns:
            The origins whose consumer was reset this time.
        """
        now = time.monotonic()
        info = await self._api(f"$JS.API.STREAM.INFO.{self.stream}")
        if RESTARTING in (info["config"].get("metadata") or {}):
            # A restart whose re-add failed (or whose monitor died): the source back first.
            info["config"] = await self._restore(info["config"])
            logger.warning("%s: a source left out by a restart is back", self.stream)
        configured = {
            s["name"]: (s.get("consumer") or {}).get("name", "")
            for s in info["config"].get("sources") or []
        }
        stored = {s["name"]: int(s.get("seq") or 0) for s in info.get("sources") or []}
        reset: list[str] = []
        for origin, consumer in configured.items():
            state = self.sources.get(origin)
            if state is None:
                state = self.sources[origin] = SourceState(origin, consumer, since=now)
            try:
                origin_info = await self._api(f"$JS.API.STREAM.INFO.{origin}")
            except Exception as exc:  # noqa: BLE001 - the origin is cut off: nothing to do yet
                # Quiet while cut off; said once a source known to be behind cannot be checked.
                behind = state.stored < state.origin_last
                (logger.info if behind else logger.debug)(
                    "%s: origin %s unreachable: %r", self.stream, origin, exc)  # fmt: skip
                continue
            held = stored.get(origin, 0)
            state.origin_last = int(origin_info["state"]["last_seq"])
            if held != state.stored or held >= state.origin_last:
                state.stored, state.since = held, now
            SOURCE_LAG.labels(self.stream, origin).set(max(0, state.origin_last - held))
            if held >= state.origin_last or now - state.since < self.stall_after or not consumer:
                continue
            try:
                await self._restart(info["config"], origin, consumer, held + 1)
            except Exception as exc:  # noqa: BLE001 - tried again next sample
                SOURCE_RESETS.labels(self.stream, origin, "failed").inc()
                logger.warning("%s: restart of source %s failed: %s", self.stream, origin, exc)
                continue
            SOURCE_RESETS.labels(self.stream, origin, "reset").inc()
            self.resets += 1
            state.since = now
            reset.append(origin)
            logger.warning(
                "%s: source %s stalled at %d of %d for %.0fs; restarted from %d (consumer %s)",
                self.stream, origin, held, state.origin_last, self.stall_after, held + 1, consumer,
            )  # fmt: skip
        return reset

    async def run(self) -> None:
        """Samples every ``interval`` seconds until cancelled."""
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the aggregate's own region has no leader yet
                logger.info("%s: sources not checked: %s", self.stream, exc)
            await asyncio.sleep(self.interval)
