r"""Every process's GC pauses and event-loop lag over a bench phase (ADR-027).

Services export ``chatmesh_gc_pause_seconds`` and ``chatmesh_event_loop_lag_seconds``
(:mod:`mesh.core.pauses`, wired in :class:`mesh.rpc.server.GrpcServer`); load
generators answer the ``pauses`` command with the same probe's summary. A phase
reads both before and after and reports, per process: collections, the time they
took, how many held the process 10 ms or more, and how many 20 ms timer ticks
fired 10 / 50 ms late (the loop held by anything: a collection, a burst of
callbacks). A delivery is late by every pause on its path, the receiver's too.

Example:
    >>> text = 'chatmesh_gc_pause_seconds_bucket{generation="0",le="0.01",service="x"} 4.0\n'
    >>> parse(text)[("chatmesh_gc_pause_seconds_bucket", "0.01", "0")]
    4.0
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import Mapping
from typing import Any

__all__ = ["brief", "diff", "generator", "parse", "scrape"]

_NAMES = ("chatmesh_gc_pause_seconds", "chatmesh_event_loop_lag_seconds")

Sample = dict[tuple[str, str, str], float]
"""(metric name, ``le`` bucket or "", ``generation`` or "") -> value, summed over the other labels."""


def parse(text: str) -> Sample:
    """The pause metrics of one Prometheus text page, summed over every label but ``le`` and ``generation``."""
    out: Sample = {}
    for line in text.splitlines():
        if not line.startswith(_NAMES):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        le = labels.split('le="', 1)[1].split('"', 1)[0] if 'le="' in labels else ""
        gen = labels.split('generation="', 1)[1].split('"', 1)[0] if "generation=" in labels else ""
        key = (name, le, gen)
        out[key] = out.get(key, 0.0) + float(value)
    return out


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


async def scrape(urls: Mapping[str, str | None]) -> dict[str, Sample]:
    """Service name -> its pause metrics now (services without a metrics URL are left out)."""

    async def one(url: str) -> Sample:
        with contextlib.suppress(OSError):
            return parse(await asyncio.to_thread(_get, url))
        return {}

    named = {n: u for n, u in urls.items() if u}
    got = await asyncio.gather(*(one(u) for u in named.values()))
    return dict(zip(named, got, strict=True))


def diff(before: Sample, after: Sample) -> dict[str, Any]:
    """One service's pauses between two scrapes, in the generators' summary terms."""

    def d(name: str, le: str = "", gens: tuple[str, ...] = ("", "0", "1", "2")) -> float:
        return sum(after.get((name, le, g), 0.0) - before.get((name, le, g), 0.0) for g in gens)

    gc, lag = _NAMES
    collections = d(f"{gc}_count")
    ticks = d(f"{lag}_count")
    return {
        "gc_count": int(collections),
        "gc_total_ms": round(d(f"{gc}_sum") * 1000, 1),
        "gc_over_10ms": int(collections - d(f"{gc}_bucket", "0.01")),
        "gc_full": int(d(f"{gc}_count", gens=("2",))),
        "gc_full_ms": round(d(f"{gc}_sum", gens=("2",)) * 1000, 1),
        "lag_ticks": int(ticks),
        "lag_over_10ms": int(ticks - d(f"{lag}_bucket", "0.01")),
        "lag_over_50ms": int(ticks - d(f"{lag}_bucket", "0.05")),
    }


def generator(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A load generator's ``pauses`` answer in the same terms as :func:`diff` (plus its maxima)."""
    gcs = summary["gc"].values()
    lag = summary["lag"]
    return {
        "gc_count": sum(int(g["count"]) for g in gcs),
        "gc_total_ms": round(sum(float(g["total_ms"]) for g in gcs), 1),
        "gc_max_ms": max(float(g["max_ms"]) for g in gcs),
        "lag_ticks": int(lag["n"]),
        "lag_p99_ms": lag["p99_ms"],
        "lag_max_ms": lag["max_ms"],
    }


def brief(by_process: Mapping[str, Mapping[str, Any]]) -> str:
    """One console line: the processes whose loop was held 10 ms or more, worst first."""
    rows = []
    for name, p in by_process.items():
        held = int(p.get("lag_over_10ms", 0)) if "lag_over_10ms" in p else None
        if held is None:
            worst = float(p.get("lag_max_ms") or 0.0)
            if worst >= 10:
                rows.append((worst, f"{name} lag max {worst:g} ms, gc max {p['gc_max_ms']:g} ms"))
        elif held or p.get("gc_over_10ms"):
            rows.append(
                (
                    float(held) + 1000,
                    f"{name} {held} ticks >= 10 ms late, {p['gc_over_10ms']} GCs >= 10 ms "
                    f"({p['gc_count']} in {p['gc_total_ms']:g} ms; {p['gc_full']} full in "
                    f"{p['gc_full_ms']:g} ms)",
                )
            )
    return "; ".join(text for _, text in sorted(rows, reverse=True)) or "no pause >= 10 ms"
