"""Latency summaries and CDF plots.

Latencies travel as integer microseconds; summaries are in milliseconds.
Percentiles are nearest-rank (a reported p99 is a latency that was actually
observed), so p99.9 of fewer than 1000 samples is close to the maximum.

Example:
    >>> summarize([1000, 2000, 3000])["p50_ms"]
    2.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["cdf_plot", "knee", "per_1000", "percentile", "ratio", "summarize"]


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank ``p``-th percentile (0-100) of ``values`` (NaN when empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def summarize(values_us: Sequence[int]) -> dict[str, Any]:
    """Count, p50/p90/p99/p99.9, max and mean of microsecond samples, in ms."""
    if not values_us:
        return {"n": 0}
    ordered = sorted(values_us)

    def ms(v: float) -> float:
        return round(v / 1000.0, 2)

    return {
        "n": len(ordered),
        "p50_ms": ms(percentile(ordered, 50)),
        "p90_ms": ms(percentile(ordered, 90)),
        "p99_ms": ms(percentile(ordered, 99)),
        "p999_ms": ms(percentile(ordered, 99.9)),
        "max_ms": ms(ordered[-1]),
        "mean_ms": ms(sum(ordered) / len(ordered)),
    }


def knee(steps: Sequence[tuple[float, bool]]) -> float | None:
    """The knee of a rising load search: the largest load passed before the first failure.

    Args:
        steps: ``(load, passed)`` in the order they ran (rising load).

    Returns:
        The load of the last passed step before the first failed one (steps after
        a failure do not count: the search stops there), or None when the first
        step already failed or nothing ran.

    Example:
        >>> knee([(500, True), (1000, True), (2000, False), (3000, True)])
        1000
    """
    best: float | None = None
    for load, passed in steps:
        if not passed:
            break
        best = load if best is None else max(best, load)
    return best


def per_1000(cpu_percent: float, rate_per_s: float) -> float | None:
    """CPU (% of one core) per 1,000 operations/s: ``cpu_percent / (rate_per_s / 1000)``.

    Example:
        >>> per_1000(45.0, 1500.0)
        30.0
    """
    if rate_per_s <= 0:
        return None
    return round(cpu_percent / (rate_per_s / 1000.0), 2)


def ratio(measured: float | None, floor: float | None) -> float | None:
    """``measured / floor`` rounded to 2 decimals; None when either is missing or the floor is 0.

    Example:
        >>> ratio(11.0, 2.2), ratio(3.0, None), ratio(3.0, 0.0)
        (5.0, None, None)
    """
    if measured is None or floor is None or floor == 0:
        return None
    return round(measured / floor, 2)


def cdf_plot(
    path: Path,
    title: str,
    series: Sequence[tuple[str, Sequence[int], str]],
    *,
    target_ms: float | None = None,
) -> Path | None:
    """Writes a latency CDF (log-scale x axis) as a PNG.

    Args:
        path: Where the PNG goes.
        title: Plot title.
        series: ``(label, microsecond samples, line style)`` per curve; empty ones are skipped.
        target_ms: Draws the ADR target as a vertical line.

    Returns:
        ``path``, or None when no series had samples.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [(label, values, style) for label, values, style in series if values]
    if not drawn:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    try:
        for label, values, style in drawn:
            xs = sorted(v / 1000.0 for v in values)
            n = len(xs)
            ys = [(i + 1) / n for i in range(n)]
            ax.plot(xs, ys, style, label=f"{label} (n={n})", linewidth=1.4, drawstyle="steps-post")
        if target_ms is not None:
            ax.axvline(
                target_ms,
                color="red",
                linestyle=":",
                linewidth=1.2,
                label=f"ADR-010 target {target_ms:g} ms",
            )
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        # Plain numbers on a 1-2-5 grid (0.5, 2, 50, 200), not powers of ten.
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("fraction of samples ≤ x")
        ax.set_ylim(0, 1.01)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
