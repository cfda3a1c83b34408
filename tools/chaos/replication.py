"""Watching replication during a chaos run: each secondary's mirror of EVENTS against its source.

Not part of the verdict (the checker judges what users get), but it explains it:
a stream that skipped after a partition usually sat behind a mirror that stalled
for longer than the notification service waited (see NOTES of issue 12 and
docs/chaos.md). Once a second, :class:`MirrorWatch` reads ``last_seq`` of EVENTS
in the primary and of every region's mirror (stream info, as the
admin user) into :attr:`Recording.mirrors <tools.chaos.recording.Recording>`;
:func:`tools.chaos.checker.mirror_behind` turns the samples into "seconds after the
fault ended until the mirror had what the source had then", per window and region.

Example:
    >>> async def demo(mesh, clock) -> None:  # doctest: +SKIP
    ...     watch = MirrorWatch(mesh, clock)
    ...     await watch.start()
    ...     await watch.stop()
    ...     print(watch.samples[-1])  # [t, "eu", source_last_seq, mirror_last_seq, ""]
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from nats.aio.client import Client as NATS

from mesh.bus.subjects import EVENTS_STREAM, mirror_stream_name
from mesh.harness.supervisor import Mesh

__all__ = ["MirrorWatch"]


class MirrorWatch:
    """Samples EVENTS and every mirror of it once a second until stopped."""

    def __init__(self, mesh: Mesh, clock: Callable[[], float], interval: float = 1.0) -> None:
        """Prepares the watch; :meth:`start` begins sampling."""
        self.mesh = mesh
        self.clock = clock
        self.interval = interval
        self.samples: list[list[object]] = []
        """``[t, region, source_last_seq, mirror_last_seq, error]`` (-1 where unknown)."""
        self._task: asyncio.Task[None] | None = None
        self._clients: dict[str, NATS] = {}

    async def start(self) -> None:
        """Connects an admin client per region and starts sampling."""
        topo = self.mesh.topology
        for region in topo.region_names:
            self._clients[region] = await self.mesh.nats_client(
                region, user="admin", name=f"chaos-mirror-watch-{region}"
            )
        self._task = asyncio.create_task(self._run(), name="chaos-mirror-watch")

    async def _info(self, region: str, stream: str) -> int:
        info = await self._clients[region].jsm(timeout=2).stream_info(stream)
        return int(info.state.last_seq)

    async def _run(self) -> None:
        topo = self.mesh.topology
        while True:
            t = self.clock()
            try:
                source = await self._info(topo.primary, EVENTS_STREAM)
            except Exception:  # noqa: BLE001 - a node is down or cut off: a gap in the samples
                source = -1
            for region in topo.secondaries:
                error = ""
                try:
                    mirror = await self._info(region, mirror_stream_name(region))
                except Exception as exc:  # noqa: BLE001 - recorded
                    mirror, error = -1, f"{type(exc).__name__}"
                self.samples.append([round(t, 3), region, source, mirror, error])
            await asyncio.sleep(max(0.0, t + self.interval - self.clock()))

    def caught_up(self, since: float) -> dict[str, bool]:
        """Per secondary: whether its mirror now holds what EVENTS held at ``since``.

        True as well when the samples cannot tell (the stream info is unavailable), so a
        renamed or missing mirror never holds a schedule up.
        """
        state: dict[str, bool] = {}
        for region in self.mesh.topology.secondaries:
            known = [s for s in self.samples if s[1] == region and _int(s[2]) >= 0]
            latest = known[-1] if known else None
            if latest is None or _int(latest[3]) < 0:
                state[f"mirror@{region}"] = True
                continue
            before = [s for s in known if _num(s[0]) <= since]
            target = _int((before[-1] if before else known[0])[2])
            state[f"mirror@{region}"] = _num(latest[0]) >= since and _int(latest[3]) >= target
        return state

    async def stop(self) -> None:
        """Stops sampling (the clients close with the mesh)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _num(v: object) -> float:
    return float(v) if isinstance(v, int | float) else 0.0


def _int(v: object) -> int:
    return int(v) if isinstance(v, int | float) else -1
