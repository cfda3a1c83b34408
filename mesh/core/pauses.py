"""Where a process's event loop stops: cyclic-GC pauses and event-loop lag, measured.

A delivery that waits behind a garbage collection or a long callback is late by
that much whatever the rest of the path does, so a tail latency cannot be read
without knowing the pauses of every process on it (the receiving load generator
included: a latency measured by a stalled receiver is the receiver's). The probe
times every collection (``gc.callbacks``) and how late a short periodic sleep
wakes up (the loop's lag: any callback or collection that held the loop), and
keeps a small summary that :meth:`PauseProbe.take` returns and resets.

:func:`tune_gc` is the remedy the measurements led to (ADR-027): move what
start-up allocated out of the collector's reach (``gc.freeze()``) and collect the
youngest generation less often, so a process holding thousands of streams does
not traverse them several times a second.

Example:
    >>> import asyncio
    >>> async def main() -> dict:
    ...     probe = PauseProbe()
    ...     probe.start()
    ...     await asyncio.sleep(0.05)
    ...     probe.stop()
    ...     return probe.take()
    >>> sorted(asyncio.run(main()))
    ['gc', 'lag', 'seconds']
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

__all__ = ["PauseProbe", "tune_gc"]

GC_THRESHOLD0 = 50_000
"""Allocations (minus deallocations) between young-generation collections
(CPython's default is 700). A process serving thousands of streams allocates a
few objects per delivery; at 700 it ran a collection for every few deliveries."""


def tune_gc(threshold0: int = GC_THRESHOLD0) -> None:
    """Freezes what exists now (start-up: modules, descriptors, config) and raises gen-0's threshold.

    Call once, after start-up and before serving. Reference cycles are still
    collected (the collector runs, less often); frozen objects are never freed,
    which is what start-up objects are anyway.
    """
    gc.collect()
    gc.freeze()
    _, t1, t2 = gc.get_threshold()
    gc.set_threshold(threshold0, t1, t2)


class PauseProbe:
    """GC pause and event-loop lag summary of this process, since the last :meth:`take`.

    Args:
        interval: Seconds between the lag ticker's wake-ups.
        on_gc: Called with ``(generation, seconds)`` after every collection (e.g. a
            Prometheus histogram's ``observe``).
        on_lag: Called with the seconds each tick woke up late.
    """

    def __init__(
        self,
        interval: float = 0.02,
        on_gc: Callable[[int, float], None] | None = None,
        on_lag: Callable[[float], None] | None = None,
    ) -> None:
        self.interval = interval
        self._on_gc = on_gc
        self._on_lag = on_lag
        self._gc_started = 0
        self._task: asyncio.Task[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self._since = time.monotonic()
        # generation -> [count, total ns, max ns]
        self._gc: list[list[int]] = [[0, 0, 0] for _ in range(3)]
        self._lags_us: list[int] = []

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter_ns()
            return
        took = time.perf_counter_ns() - self._gc_started
        gen = int(info.get("generation", 0))
        row = self._gc[gen]
        row[0] += 1
        row[1] += took
        if took > row[2]:
            row[2] = took
        if self._on_gc is not None:
            self._on_gc(gen, took / 1e9)

    def start(self) -> None:
        """Registers the GC callback and starts the lag ticker on the running loop."""
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._tick())

    def stop(self) -> None:
        """Unregisters the callback and stops the ticker."""
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _tick(self) -> None:
        interval = self.interval
        lags = self._lags_us
        while True:
            due = time.monotonic() + interval
            await asyncio.sleep(interval)
            late = time.monotonic() - due
            if late < 0:
                late = 0.0
            if self._lags_us is not lags:
                lags = self._lags_us
            if len(lags) < 200_000:
                lags.append(int(late * 1e6))
            if self._on_lag is not None:
                self._on_lag(late)

    def take(self) -> dict[str, Any]:
        """The summary since the last call (and starts a new one).

        Returns:
            ``{"seconds", "gc": {"gen0": {"count", "total_ms", "max_ms"}, ...},
            "lag": {"n", "p50_ms", "p99_ms", "max_ms"}}``.
        """
        seconds = time.monotonic() - self._since
        gcs = {
            f"gen{g}": {
                "count": row[0],
                "total_ms": round(row[1] / 1e6, 2),
                "max_ms": round(row[2] / 1e6, 2),
            }
            for g, row in enumerate(self._gc)
        }
        lags = sorted(self._lags_us)
        self._reset()

        def pct(p: float) -> float | None:
            if not lags:
                return None
            return round(lags[min(len(lags) - 1, int(p / 100 * len(lags)))] / 1000, 2)

        return {
            "seconds": round(seconds, 2),
            "gc": gcs,
            "lag": {
                "n": len(lags),
                "p50_ms": pct(50),
                "p99_ms": pct(99),
                "max_ms": round(lags[-1] / 1000, 2) if lags else None,
            },
        }
