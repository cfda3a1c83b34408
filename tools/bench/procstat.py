"""CPU and memory of processes, read from ``/proc`` (Linux).

A :class:`CpuSampler` takes a snapshot of every watched process's CPU time
(``utime + stime`` of ``/proc/<pid>/stat``) and of the machine's (``/proc/stat``);
the difference of two snapshots gives each process's CPU use over the interval
as a percentage of *one* core (so 100 % is a saturated single-threaded
process), and the machine's as a percentage of *all* cores.

Example:
    >>> import os
    >>> sampler = CpuSampler({"me": os.getpid()})
    >>> before = sampler.snapshot()
    >>> usage = sampler.usage(before, sampler.snapshot())
    >>> "me" in usage.per_process
    True
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

__all__ = ["CpuSampler", "CpuSnapshot", "CpuUsage", "machine_info", "rss_bytes"]

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _proc_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces: split after its closing ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def _machine_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    values = [int(v) for v in parts]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values), idle


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return None


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU counters at one moment."""

    at: float
    per_process: dict[str, int | None]
    machine_total: int
    machine_idle: int


@dataclass(frozen=True)
class CpuUsage:
    """CPU use between two snapshots."""

    seconds: float
    per_process: dict[str, float]
    """Name -> percent of one core."""
    machine_percent: float
    """Percent of all cores (100 = every core busy)."""
    cores: int

    @property
    def watched_percent(self) -> float:
        """The watched processes' share of all cores, in percent."""
        return round(sum(self.per_process.values()) / self.cores, 1)

    @property
    def background_percent(self) -> float:
        """Share of all cores used by processes *not* watched (other work on the machine)."""
        return round(max(0.0, self.machine_percent - self.watched_percent), 1)

    def top(self, n: int = 5) -> list[tuple[str, float]]:
        """The ``n`` busiest processes, busiest first."""
        return sorted(self.per_process.items(), key=lambda kv: -kv[1])[:n]


class CpuSampler:
    """Watches a fixed set of named processes."""

    def __init__(self, pids: dict[str, int]) -> None:
        """Args: pids maps a display name to a process id."""
        self.pids = dict(pids)

    def snapshot(self) -> CpuSnapshot:
        """Reads every counter now."""
        total, idle = _machine_ticks()
        return CpuSnapshot(
            time.monotonic(),
            {name: _proc_ticks(pid) for name, pid in self.pids.items()},
            total,
            idle,
        )

    def usage(self, before: CpuSnapshot, after: CpuSnapshot) -> CpuUsage:
        """CPU use between two snapshots (processes that vanished are left out)."""
        seconds = max(1e-6, after.at - before.at)
        per: dict[str, float] = {}
        for name, start in before.per_process.items():
            end = after.per_process.get(name)
            if start is None or end is None:
                continue
            per[name] = round((end - start) / _TICKS / seconds * 100, 1)
        total = after.machine_total - before.machine_total
        idle = after.machine_idle - before.machine_idle
        machine = 100.0 * (total - idle) / total if total > 0 else 0.0
        return CpuUsage(seconds, per, round(machine, 1), os.cpu_count() or 1)


def machine_info() -> dict[str, object]:
    """nproc, RAM and CPU model of this machine."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count() or 1,
        "mem_total_bytes": mem,
        "mem_total_gib": round(mem / 2**30, 1),
        "cpu_model": model,
        "kernel": os.uname().release,
    }
