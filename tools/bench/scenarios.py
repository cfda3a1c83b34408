"""The seven benchmark scenarios, run against one started mesh.

Each ``run_*`` coroutine takes a :class:`Context` (the mesh, one load
generator per region, the plan) and returns a JSON-able dict with a
``summary`` of numbers, the details, and the PNGs it wrote. Scale-downs and
skipped parts are appended to ``ctx.notes`` and printed as they happen: the
benchmark never shrinks anything silently.

Paths are ``(sender region, receiver region)``. The Command and Fan-Out
Services live in the primary region, so every message crosses to the primary
first: ``eu -> eu`` is a "same-region" path that pays two WAN legs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from chatmesh.v1 import fanout_service_pb2 as fpb, fanout_service_pb2_grpc as fgrpc
from mesh.client import ChatClient, RetryPolicy
from mesh.core.auth import KeyDirectory, mint
from mesh.harness.identity import internal_channel
from mesh.harness.supervisor import Mesh
from tools.bench import profiling
from tools.bench.plan import Plan, Population, population
from tools.bench.procstat import CpuSampler, CpuUsage, rss_bytes
from tools.bench.stats import cdf_plot, summarize
from tools.bench.workers import LoadGenProcess

__all__ = [
    "Context",
    "path_category",
    "path_key",
    "run_delivery",
    "run_flood",
    "run_floor",
    "run_history",
    "run_presence",
    "run_routing",
    "run_throughput",
    "setup_population",
]

SAME_REGION_TARGET_MS = 50.0
SATURATED_MACHINE_PERCENT = 90.0
"""Above this share of all cores busy, a delivery phase measures the run queue (services,
load generators and NATS share the machine's cores), not the mesh: it is scaled down."""
CROSS_REGION_TARGET_MS = 300.0
HISTORY_TARGET_MS = 30.0
PRESENCE_TARGET_MS = 200.0


def path_key(src: str, dst: str) -> str:
    """JSON key of a path: ``src->dst``."""
    return f"{src}->{dst}"


def path_category(src: str, dst: str, primary: str) -> str:
    """Which ADR-010 target a path falls under."""
    if src == dst == primary:
        return "same-region (primary)"
    if src == dst:
        return "same-region (non-primary, via primary)"
    return "cross-region"


def path_target(src: str, dst: str) -> float:
    """ADR-010's delivery target for a path, in ms."""
    return SAME_REGION_TARGET_MS if src == dst else CROSS_REGION_TARGET_MS


def progress_bar(console: Console) -> Progress:
    """The progress display every scenario uses."""
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


@dataclass
class Context:
    """Everything a scenario needs about one running topology."""

    name: str
    mesh: Mesh
    gens: dict[str, LoadGenProcess]
    plan: Plan
    out: Path
    console: Console
    seed: int
    entry: str
    """``edge`` or ``direct``: how clients reached the mesh."""
    notes: list[str]
    pop: Population | None = None
    channel_ids: list[str] = field(default_factory=list)
    streaming: set[str] = field(default_factory=set)
    choices: dict[str, list[list[str]]] = field(default_factory=dict)
    streaming_members: dict[str, int] = field(default_factory=dict)
    setup: dict[str, Any] = field(default_factory=dict)
    floor: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    """Floor latencies: mode (direct/via) -> path key -> us (for the ratio and CDFs)."""

    @property
    def regions(self) -> list[str]:
        """Region names, primary first."""
        topo = self.mesh.topology
        return [topo.primary, *[r for r in topo.region_names if r != topo.primary]]

    @property
    def primary(self) -> str:
        """The primary region."""
        return self.mesh.topology.primary

    def note(self, text: str) -> None:
        """Records and prints a scale-down or skip (never silent)."""
        self.notes.append(f"[{self.name}] {text}")
        self.console.print(f"[yellow]NOTE[/yellow] {escape(f'[{self.name}] {text}')}")

    def max_latency_s(self) -> float:
        """The largest one-way WAN latency of the topology, in seconds."""
        return max((link.latency_ms for link in self.mesh.topology.links), default=0) / 1000

    def sampler(self) -> CpuSampler:
        """CPU sampler over every mesh process and every generator."""
        pids = {p["name"]: p["pid"] for p in self.mesh.state()["processes"] if p.get("pid")}
        for gen in self.gens.values():
            if gen.pid:
                pids[gen.name] = gen.pid
        pids["bench-orchestrator"] = os.getpid()
        return CpuSampler(pids)

    def plot(
        self,
        stem: str,
        title: str,
        series: list[tuple[str, list[int], str]],
        target_ms: float | None = None,
    ) -> str | None:
        """Writes ``<out>/<topology>-<stem>.png``; returns its name relative to ``out``."""
        path = self.out / f"{self.name}-{stem}.png"
        return path.name if cdf_plot(path, title, series, target_ms=target_ms) else None


async def _all(
    ctx: Context,
    cmd: str,
    args_for: Callable[[str], dict[str, Any]],
    *,
    timeout: float,
    progress: Any = None,
) -> dict[str, dict[str, Any]]:
    """Runs ``cmd`` on every region's generator at once; region -> result."""
    regions = list(ctx.gens)
    results = await asyncio.gather(
        *(
            ctx.gens[r].call(
                cmd, args_for(r), timeout=timeout, progress=progress(r) if progress else None
            )
            for r in regions
        )
    )
    return dict(zip(regions, results, strict=True))


# -- set-up ------------------------------------------------------------------------------


async def setup_population(ctx: Context) -> dict[str, Any]:
    """Creates the users' channels and opens their streams (within the time budget)."""
    plan = ctx.plan
    pop = population(
        ctx.regions,
        ctx.primary,
        users=plan.streams,
        per_user=plan.per_user,
        channel_size=plan.channel_size,
        seed=ctx.seed,
    )
    ctx.pop = pop
    t0 = time.monotonic()
    by_home: dict[str, list[int]] = {}
    for i, spec in enumerate(pop.channels):
        by_home.setdefault(pop.region_of[spec.creator], []).append(i)
    ids = [""] * len(pop.channels)
    with progress_bar(ctx.console) as bar:
        task = bar.add_task(f"{ctx.name}: creating channels", total=len(pop.channels))
        done: dict[str, int] = {}

        def on_progress(region: str) -> Callable[[dict[str, Any]], None]:
            def update(p: dict[str, Any]) -> None:
                done[region] = int(p["created"])
                bar.update(task, completed=sum(done.values()))

            return update

        results = await _all(
            ctx,
            "create_channels",
            lambda r: {
                "channels": [
                    {
                        "name": pop.channels[i].name,
                        "creator": pop.channels[i].creator,
                        "members": list(pop.channels[i].members),
                    }
                    for i in by_home.get(r, [])
                ],
                "concurrency": 16,
            },
            timeout=600,
            progress=on_progress,
        )
        bar.update(task, completed=len(pop.channels))
    for region, result in results.items():
        for i, cid in zip(by_home.get(region, []), result["channel_ids"], strict=True):
            ids[i] = cid
    ctx.channel_ids = ids
    created_s = time.monotonic() - t0

    with progress_bar(ctx.console) as bar:
        tasks = {
            r: bar.add_task(f"{ctx.name}: opening streams in {r}", total=len(pop.users[r]))
            for r in ctx.regions
        }

        def on_open(region: str) -> Callable[[dict[str, Any]], None]:
            return lambda p: bar.update(tasks[region], completed=int(p["opened"]))

        opened = await _all(
            ctx,
            "open_streams",
            lambda r: {
                "users": pop.users[r],
                "budget_s": plan.stream_open_budget_s,
                "concurrency": 8,
            },
            timeout=plan.stream_open_budget_s + 120,
            progress=on_open,
        )
        for r, res in opened.items():
            bar.update(tasks[r], completed=len(res["opened"]))
    per_region: dict[str, Any] = {}
    for region, res in opened.items():
        users = res["opened"]
        ctx.streaming.update(users)
        rate = len(users) / res["elapsed_s"] if res["elapsed_s"] > 0 else 0.0
        per_region[region] = {
            "target": len(pop.users[region]),
            "opened": len(users),
            "failed": len(res["failed"]),
            "seconds": round(res["elapsed_s"], 2),
            "streams_per_s": round(rate, 1),
            "open_latency": summarize(res["open_us"]),
        }
        if len(users) < len(pop.users[region]):
            ctx.note(
                f"scaled down: {region} opened {len(users)}/{len(pop.users[region])} streams in "
                f"{res['elapsed_s']:.0f} s (budget {plan.stream_open_budget_s:.0f} s; "
                f"{rate:.1f} streams/s: each new stream's route registration is one Fan-Out round "
                f"trip, serialized per notification instance)"
                + (
                    f"; {len(res['failed'])} failed, e.g. {next(iter(res['failed'].values()))}"
                    if res["failed"]
                    else ""
                )
            )
    # Who sends what: every (member, channel) pair of a region's users, and how
    # many open streams each channel reaches.
    ctx.choices = {r: [] for r in ctx.regions}
    for spec, cid in zip(pop.channels, ids, strict=True):
        ctx.streaming_members[cid] = sum(1 for m in spec.members if m in ctx.streaming)
        for member in spec.members:
            ctx.choices[pop.region_of[member]].append([member, cid])
    ctx.setup = {
        "users": plan.streams,
        "channels": len(pop.channels),
        "channel_size": plan.channel_size,
        "memberships_per_user": plan.per_user,
        "channels_created_s": round(created_s, 2),
        "streams_open": len(ctx.streaming),
        "streams_target": plan.streams,
        "streams_by_region": per_region,
    }
    return ctx.setup


# -- a load phase ------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """One open-loop send phase and what arrived."""

    phase: str
    rate: float
    seconds: float
    sent: int
    ok: int
    errors: dict[str, int]
    expected: int
    received: int
    lag_p99_ms: float
    ack: dict[str, Any]
    ack_by_region: dict[str, dict[str, Any]]
    samples: dict[str, list[int]]
    cpu: CpuUsage
    drain_s: float
    backlog_ms: float
    """Largest rise of the SendMessage ack p50 from the first to the last quarter of the phase."""

    @property
    def delivered_ratio(self) -> float:
        """Received / expected deliveries (1.0 when nothing was expected)."""
        return self.received / self.expected if self.expected else 1.0

    @property
    def error_count(self) -> int:
        """Sends that failed."""
        return sum(self.errors.values())

    @property
    def too_many_errors(self) -> bool:
        """More than 0.1 % of the sends failed (a single transient failure is tolerated)."""
        return self.error_count > max(1, self.sent // 1000)

    @property
    def sustained(self) -> bool:
        """Sends acknowledged, >= 99 % delivered after the drain, no backlog, generators on time."""
        return (
            not self.too_many_errors
            and self.delivered_ratio >= 0.99
            and self.lag_p99_ms < 100
            and self.backlog_ms < 50
        )

    def problems(self) -> str:
        """Why the phase was not sustained (empty when it was)."""
        out = []
        if self.too_many_errors:
            out.append(f"send errors {self.errors}")
        if self.backlog_ms >= 50:
            out.append(
                f"a backlog built up (SendMessage ack p50 rose by {self.backlog_ms:.0f} ms "
                "from the first to the last quarter)"
            )
        if self.delivered_ratio < 0.99:
            out.append(
                f"only {self.delivered_ratio:.1%} of deliveries arrived within the drain window"
            )
        if self.lag_p99_ms >= 100:
            out.append(f"load generators fell behind schedule (p99 lag {self.lag_p99_ms:.0f} ms)")
        return "; ".join(out)

    @property
    def saturated(self) -> bool:
        """The machine's cores were busy at or above ``SATURATED_MACHINE_PERCENT``."""
        return self.cpu.machine_percent >= SATURATED_MACHINE_PERCENT

    @property
    def measurable(self) -> bool:
        """Sustained without saturating the machine: a fair latency measurement."""
        return self.sustained and not self.saturated

    def measurement_problems(self) -> str:
        """Why the phase is not a fair latency measurement (empty when it is)."""
        out = [self.problems()] if not self.sustained else []
        if self.saturated:
            out.append(
                f"the machine was saturated ({self.cpu.machine_percent:.0f}% of "
                f"{self.cpu.cores} cores busy)"
            )
        return "; ".join(out)

    def record(self) -> dict[str, Any]:
        """What results.json keeps of a probe or delivery attempt."""
        return {
            "rate": self.rate,
            "sustained": self.sustained,
            "machine_cpu_percent": self.cpu.machine_percent,
            "problems": self.measurement_problems(),
            "delivered_ratio": round(self.delivered_ratio, 4),
            "errors": self.errors,
        }

    def deliveries_per_s(self) -> float:
        """Deliveries received per second of sending."""
        return self.received / self.seconds if self.seconds else 0.0


async def run_load(ctx: Context, phase: str, rate: float, seconds: float, label: str) -> LoadResult:
    """Sends at ``rate`` msg/s for ``seconds`` from every region; collects what arrived."""
    regions = [r for r in ctx.regions if ctx.choices.get(r)]
    weights = {r: len(ctx.pop.users[r]) if ctx.pop else 1 for r in regions}
    total_w = sum(weights.values())
    rates = {r: rate * weights[r] / total_w for r in regions}
    total = sum(max(1, int(rates[r] * seconds)) for r in regions)
    sampler = ctx.sampler()
    sent_by: dict[str, int] = {}
    with progress_bar(ctx.console) as bar:
        task = bar.add_task(f"{ctx.name}: {label} @ {rate:g} msg/s", total=total)

        def on_send(region: str) -> Callable[[dict[str, Any]], None]:
            def update(p: dict[str, Any]) -> None:
                sent_by[region] = int(p["sent"])
                bar.update(task, completed=sum(sent_by.values()))

            return update

        before = sampler.snapshot()
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(
                ctx.gens[r].call(
                    "send",
                    {
                        "phase": phase,
                        "rate": rates[r],
                        "duration": seconds,
                        "choices": ctx.choices[r],
                        "seed": zlib.crc32(f"{ctx.seed}:{phase}:{r}".encode()),
                        "timeout": 10.0,
                    },
                    timeout=seconds + 60,
                    progress=on_send(r),
                )
                for r in regions
            )
        )
        cpu = sampler.usage(before, sampler.snapshot())
        bar.update(task, completed=total)
    send_s = time.monotonic() - t0
    by_region = dict(zip(regions, results, strict=True))
    expected = 0
    errors: dict[str, int] = {}
    ack: list[int] = []
    for res in by_region.values():
        for channel, n in res["ok_by_channel"].items():
            expected += n * ctx.streaming_members.get(channel, 0)
        for code, n in res["errors"].items():
            errors[code] = errors.get(code, 0) + n
        ack += res["ack_us"]
    # Drain: wait (bounded) until every expected delivery arrived.
    drain_deadline = time.monotonic() + 3.0 + 4 * ctx.max_latency_s()
    t_drain = time.monotonic()
    received = 0
    while True:
        counts = await _all(ctx, "received", lambda r: {}, timeout=10)
        received = sum(int(c["received"].get(phase, 0)) for c in counts.values())
        if received >= expected or time.monotonic() > drain_deadline:
            break
        await asyncio.sleep(0.1)
    drain_s = time.monotonic() - t_drain
    taken = await _all(ctx, "take_samples", lambda r: {"phase": phase}, timeout=60)
    samples: dict[str, list[int]] = {}
    received = 0
    for dst, res in taken.items():
        received += int(res["received"])
        for src, values in res["samples"].items():
            samples.setdefault(path_key(src, dst), []).extend(values)
    if cpu.background_percent >= 15:
        ctx.note(
            f"shared machine: other processes used {cpu.background_percent:.0f}% of the cores "
            f"during {label} @ {rate:g} msg/s"
        )
    return LoadResult(
        phase=phase,
        rate=rate,
        seconds=seconds,
        sent=sum(int(r["sent"]) for r in results),
        ok=sum(int(r["ok"]) for r in results),
        errors=errors,
        expected=expected,
        received=received,
        lag_p99_ms=max(float(r["lag_p99_ms"]) for r in results),
        ack=summarize(ack),
        ack_by_region={r: summarize(res["ack_us"]) for r, res in by_region.items()},
        backlog_ms=max(
            (
                float(r["ack_last_quarter_p50_ms"]) - float(r["ack_first_quarter_p50_ms"])
                for r in results
                if r["ack_us"]
            ),
            default=0.0,
        ),
        samples=samples,
        cpu=cpu,
        drain_s=round(drain_s if send_s else 0.0, 2),
    )


def _cpu_json(cpu: CpuUsage, top: int = 8) -> dict[str, Any]:
    return {
        "seconds": round(cpu.seconds, 2),
        "machine_percent_of_all_cores": cpu.machine_percent,
        "benchmark_percent_of_all_cores": cpu.watched_percent,
        "background_percent_of_all_cores": cpu.background_percent,
        "cores": cpu.cores,
        "per_process_percent_of_one_core": dict(cpu.top(len(cpu.per_process))),
        "top": [{"process": n, "percent_of_one_core": p} for n, p in cpu.top(top)],
    }


# -- 6. the floor -------------------------------------------------------------------------------


async def run_floor(ctx: Context) -> dict[str, Any]:
    """Bare NATS publish->receive over the same WAN proxies, per path.

    ``direct``: published in the sender's region, received in the receiver's.
    ``via``: the route chatmesh's events take, sender's region -> primary ->
    receiver's region, with a bare relay in the primary: the floor the
    chatmesh latency is divided by.
    """
    plan = ctx.plan
    creds = ctx.mesh.credentials["bench"]
    await _all(
        ctx,
        "floor_listen",
        lambda r: {
            "servers": ctx.mesh.nats_urls(r),
            "user": creds.user,
            "password": creds.password,
            "relay": r == ctx.primary,
        },
        timeout=30,
    )
    regions = ctx.regions
    per_region = plan.floor_rate / len(regions)

    async def phase(name: str, seconds: float) -> dict[str, dict[str, list[int]]]:
        await _all(
            ctx,
            "floor_send",
            lambda r: {"phase": name, "rate": per_region, "duration": seconds, "regions": regions},
            timeout=seconds + 30,
        )
        # Stragglers: two WAN legs at most, plus slack.
        await asyncio.sleep(0.5 + 3 * ctx.max_latency_s())
        taken = await _all(ctx, "floor_samples", lambda r: {"phase": name}, timeout=30)
        out: dict[str, dict[str, list[int]]] = {"direct": {}, "via": {}}
        for dst, res in taken.items():
            for mode, by_src in res["samples"].items():
                for src, values in by_src.items():
                    out[mode].setdefault(path_key(src, dst), []).extend(values)
        return out

    with progress_bar(ctx.console) as bar:
        task = bar.add_task(f"{ctx.name}: bare NATS floor @ {plan.floor_rate:g} msg/s", total=2)
        await phase("fw", 1.0)  # warm-up: gateway interest, connections (discarded)
        bar.update(task, advance=1)
        floor = await phase("f", plan.floor_s)
        bar.update(task, advance=1)
    ctx.floor = floor
    paths: dict[str, Any] = {}
    pngs = []
    for src in regions:
        for dst in regions:
            key = path_key(src, dst)
            paths[key] = {
                "category": path_category(src, dst, ctx.primary),
                "direct": summarize(floor["direct"].get(key, [])),
                "via_primary": summarize(floor["via"].get(key, [])),
            }
    png = ctx.plot(
        "floor-cdf",
        f"{ctx.name}: bare NATS publish->receive (direct and via the primary)",
        [(f"{k} direct", v, "-") for k, v in sorted(floor["direct"].items())]
        + [(f"{k} via primary", v, "--") for k, v in sorted(floor["via"].items())],
    )
    if png:
        pngs.append(png)
    summary = {f"{k} via_primary p50_ms": p["via_primary"].get("p50_ms") for k, p in paths.items()}
    summary.update(
        {f"{k} via_primary p99_ms": p["via_primary"].get("p99_ms") for k, p in paths.items()}
    )
    return {
        "method": "nats-py as user 'bench' publishes timestamped messages in the sender's region; "
        "'direct' subscribes in the receiver's region; 'via_primary' goes through a bare relay "
        "subscriber in the primary region (chatmesh's route). Same WAN proxies as chatmesh.",
        "rate_msgs_per_s": plan.floor_rate,
        "seconds": plan.floor_s,
        "paths": paths,
        "summary": summary,
        "pngs": pngs,
    }


# -- 1. delivery latency under load ------------------------------------------------------------


def _halved(plan: Plan, rate: float) -> float:
    """The next, lower rate to try after ``rate`` was not measurable."""
    return max(plan.min_rate, round(rate / 2, 1))


async def run_delivery(ctx: Context) -> dict[str, Any]:
    """Send->receive latency per path at a steady rate (scaled down if unsustainable)."""
    plan = ctx.plan
    rate = plan.rate
    probes = []
    for attempt in range(6):
        probe = await run_load(ctx, f"p{attempt}", rate, plan.probe_s, "delivery probe")
        probes.append(probe.record())
        if probe.measurable or rate <= plan.min_rate:
            break
        new_rate = _halved(plan, rate)
        ctx.note(
            f"scaled down: delivery rate {rate:g} -> {new_rate:g} msg/s "
            f"(not measurable on this machine: {probe.measurement_problems()})"
        )
        rate = new_rate
    if rate != plan.rate:
        ctx.note(f"delivery measured at {rate:g} msg/s instead of the planned {plan.rate:g} msg/s")
    attempts: list[dict[str, Any]] = []
    for attempt in range(3):
        res = await run_load(ctx, f"d{attempt}", rate, plan.delivery_s, "delivery")
        attempts.append(res.record())
        if res.measurable or rate <= plan.min_rate:
            break
        new_rate = _halved(plan, rate)
        ctx.note(
            f"scaled down: the {plan.delivery_s:g} s delivery phase at {rate:g} msg/s was not "
            f"measurable ({res.measurement_problems()}); measuring again at {new_rate:g} msg/s"
        )
        rate = new_rate
    if not res.measurable:
        ctx.note(
            f"delivery phase at {rate:g} msg/s was not a fair measurement: "
            f"{res.measurement_problems()}"
        )
    paths: dict[str, Any] = {}
    pngs = []
    for src in ctx.regions:
        for dst in ctx.regions:
            key = path_key(src, dst)
            lat = summarize(res.samples.get(key, []))
            floor = summarize(ctx.floor.get("via", {}).get(key, [])) if ctx.floor else {"n": 0}
            entry: dict[str, Any] = {
                "category": path_category(src, dst, ctx.primary),
                "target_ms": path_target(src, dst),
                "latency": lat,
                "floor_via_primary": floor,
            }
            if floor.get("n") and lat.get("n"):
                entry["ratio_to_floor"] = {
                    q: round(lat[f"{q}_ms"] / floor[f"{q}_ms"], 2) if floor[f"{q}_ms"] > 0 else None
                    for q in ("p50", "p99")
                }
            paths[key] = entry
            series: list[tuple[str, list[int], str]] = [
                (f"chatmesh {key}", res.samples.get(key, []), "-")
            ]
            if ctx.floor:
                series.append((f"bare NATS via primary {key}", ctx.floor["via"].get(key, []), "--"))
                series.append((f"bare NATS direct {key}", ctx.floor["direct"].get(key, []), ":"))
            png = ctx.plot(
                f"delivery-cdf-{src}-to-{dst}",
                f"{ctx.name}: send->receive {key} ({entry['category']}) @ {rate:g} msg/s",
                series,
                target_ms=path_target(src, dst),
            )
            if png:
                pngs.append(png)
                entry["png"] = png
    overview = ctx.plot(
        "delivery-cdf-all",
        f"{ctx.name}: send->receive, every path @ {rate:g} msg/s",
        [(k, v, "-") for k, v in sorted(res.samples.items())],
    )
    if overview:
        pngs.insert(0, overview)
    summary: dict[str, Any] = {
        "rate_msgs_per_s": rate,
        "deliveries_per_s": round(res.deliveries_per_s(), 1),
        "delivered_ratio": round(res.delivered_ratio, 4),
        "send_errors": sum(res.errors.values()),
    }
    edge = edge_cpu(res.cpu, res.deliveries_per_s())
    summary.update(edge)
    same = paths.get(path_key(ctx.primary, ctx.primary), {}).get("latency", {})
    ctx.console.print(
        f"  edges: {edge['edge_cpu_percent_of_one_core']}% of a core at "
        f"{summary['deliveries_per_s']:g} deliveries/s = "
        f"{edge['edge_cpu_percent_per_1000_deliveries_per_s']}% per 1,000 deliveries/s "
        f"({', '.join(f'{n} {p}%' for n, p in edge['edge_cpu_by_process'].items()) or 'no edge'}); "
        f"same-region delivery p50 / p99 {same.get('p50_ms')} / {same.get('p99_ms')} ms"
    )
    for region, ack in res.ack_by_region.items():
        summary[f"SendMessage ack from {region} p50_ms"] = ack.get("p50_ms")
        summary[f"SendMessage ack from {region} p99_ms"] = ack.get("p99_ms")
    for key, p in paths.items():
        for q in ("p50_ms", "p99_ms", "p999_ms", "max_ms"):
            summary[f"{key} {q}"] = p["latency"].get(q)
    return {
        "setup": ctx.setup,
        "planned_rate_msgs_per_s": plan.rate,
        "rate_msgs_per_s": rate,
        "seconds": plan.delivery_s,
        "probes": probes,
        "attempts": attempts,
        "sent": res.sent,
        "acknowledged": res.ok,
        "errors": res.errors,
        "expected_deliveries": res.expected,
        "received_deliveries": res.received,
        "drain_s": res.drain_s,
        "generator_lag_p99_ms": res.lag_p99_ms,
        "send_ack": res.ack,
        "send_ack_by_region": res.ack_by_region,
        "cpu": _cpu_json(res.cpu),
        "edge_cpu": edge,
        "paths": paths,
        "summary": summary,
        "pngs": pngs,
    }


# -- 2. throughput ceiling -------------------------------------------------------------------------


def edge_cpu(cpu: CpuUsage, deliveries_per_s: float) -> dict[str, Any]:
    """The edges' (Envoy processes') CPU during a phase, and per 1,000 deliveries/s.

    Every delivery crosses its region's edge once (the stream to the client),
    and every send once (the command), so this is what the edge costs per unit
    of the mesh's work, summed over the regions' edges.
    """
    per_edge = {n: p for n, p in cpu.per_process.items() if n.startswith("envoy-")}
    total = sum(per_edge.values())
    per_1000 = total / (deliveries_per_s / 1000) if deliveries_per_s > 0 else None
    return {
        "edge_cpu_percent_of_one_core": round(total, 1),
        "edge_cpu_by_process": {n: round(p, 1) for n, p in sorted(per_edge.items())},
        "edge_cpu_percent_per_1000_deliveries_per_s": None
        if per_1000 is None
        else round(per_1000, 1),
    }


def _chatmesh_services(ctx: Context, cpu: CpuUsage) -> list[tuple[str, float]]:
    """Busiest first: the chatmesh (Python) service processes, which py-spy can profile."""
    python = {n for n, svc in ctx.mesh.services.items() if getattr(svc, "kind", "") != "envoy"}
    return [(n, p) for n, p in cpu.top(len(cpu.per_process)) if n in python]


async def run_throughput(ctx: Context) -> dict[str, Any]:
    """Raises the send rate step by step; finds the latency knee and the capacity limit.

    Latency knee: the last rate at which the primary's same-region p99 stayed
    within 50 ms with no errors (ADR-010's criterion). Capacity limit: the last
    rate the mesh sustained at all (every send acknowledged, >= 99 % delivered
    within the drain window, generators on schedule, p99 under a second).
    Stepping goes on past the latency knee up to the capacity limit, so the CPU
    table and the profile show what saturates.
    """
    plan = ctx.plan
    primary_key = path_key(ctx.primary, ctx.primary)
    steps: list[dict[str, Any]] = []
    latency_knee: dict[str, Any] | None = None
    latency_broken = False
    capacity_knee: dict[str, Any] | None = None
    breaking: LoadResult | None = None
    last: LoadResult | None = None
    for i, rate in enumerate(plan.throughput_rates):
        res = await run_load(ctx, f"t{i}", rate, plan.step_s, f"throughput step {i + 1}")
        last = res
        same = summarize(res.samples.get(primary_key, []))
        worst = max((summarize(v).get("p99_ms", 0) for v in res.samples.values()), default=0)
        latency_ok = (
            bool(same.get("n"))
            and same["p99_ms"] <= SAME_REGION_TARGET_MS
            and not res.too_many_errors
        )
        capacity_ok = res.sustained and (not same.get("n") or same["p99_ms"] <= 1000)
        why = []
        if not same.get("n"):
            why.append(f"no {primary_key} samples")
        elif same["p99_ms"] > SAME_REGION_TARGET_MS:
            why.append(f"{primary_key} p99 {same['p99_ms']} ms > {SAME_REGION_TARGET_MS:g} ms")
        if res.too_many_errors or not capacity_ok:
            why.append(res.problems() or f"{primary_key} p99 {same.get('p99_ms')} ms > 1 s")
        step = {
            "rate_msgs_per_s": rate,
            "sent_per_s": round(res.sent / res.seconds, 1),
            "deliveries_per_s": round(res.deliveries_per_s(), 1),
            "delivered_ratio": round(res.delivered_ratio, 4),
            "errors": res.errors,
            "generator_lag_p99_ms": res.lag_p99_ms,
            "same_region_primary": same,
            "worst_path_p99_ms": worst,
            "send_ack": res.ack,
            "cpu": _cpu_json(res.cpu),
            "latency_ok": latency_ok,
            "capacity_ok": capacity_ok,
            "passed": latency_ok and capacity_ok,
            "why_not": "; ".join(why),
        }
        steps.append(step)
        ctx.console.print(
            f"  step {rate:g} msg/s: {step['deliveries_per_s']:g} deliveries/s, {primary_key} p99 "
            f"{same.get('p99_ms')} ms, machine CPU {res.cpu.machine_percent:.0f}%, busiest "
            + ", ".join(f"{n} {p:.0f}%" for n, p in res.cpu.top(3))
            + ("" if not why else f" [yellow]({step['why_not']})[/yellow]")
        )
        if latency_ok and capacity_ok and not latency_broken:
            latency_knee = step
        latency_broken = latency_broken or not latency_ok
        if not capacity_ok:
            breaking = res
            break
        capacity_knee = step
    if latency_knee is None:
        ctx.note(
            f"throughput: {primary_key} p99 exceeded {SAME_REGION_TARGET_MS:g} ms already at the "
            f"lowest rate tried ({plan.throughput_rates[0]:g} msg/s)"
        )
    if breaking is None:
        ctx.note(
            f"throughput: the largest planned rate ({plan.throughput_rates[-1]:g} msg/s) was "
            "still sustained; the capacity limit is above it"
        )
    limit = breaking or last
    assert limit is not None
    top = limit.cpu.top(6)
    name, pct = top[0]
    if pct >= 85:
        saturated = f"{name} ({pct:.0f}% of one core: saturated) at {limit.rate:g} msg/s"
    elif limit.cpu.machine_percent >= 90:
        saturated = (
            f"the machine ({limit.cpu.machine_percent:.0f}% of {limit.cpu.cores} cores) at "
            f"{limit.rate:g} msg/s; busiest {name} {pct:.0f}% of a core"
        )
    else:
        saturated = (
            f"no process saturated at {limit.rate:g} msg/s (busiest {name} {pct:.0f}% of a "
            f"core, machine {limit.cpu.machine_percent:.0f}%)"
        )
    profile = await _profile(ctx, limit)
    summary = {
        "latency_knee_rate_msgs_per_s": latency_knee["rate_msgs_per_s"] if latency_knee else 0.0,
        "latency_knee_deliveries_per_s": latency_knee["deliveries_per_s"] if latency_knee else 0.0,
        "capacity_rate_msgs_per_s": capacity_knee["rate_msgs_per_s"] if capacity_knee else 0.0,
        "capacity_deliveries_per_s": capacity_knee["deliveries_per_s"] if capacity_knee else 0.0,
        "breaking_rate_msgs_per_s": breaking.rate if breaking else None,
        "machine_cpu_percent_at_limit": limit.cpu.machine_percent,
        "hottest_process_cpu_percent_at_limit": pct,
    }
    return {
        "criterion": f"latency knee: last rate with {primary_key} p99 <= {SAME_REGION_TARGET_MS:g} ms "
        "and no send error; capacity: last rate with every send acknowledged, >= 99% delivered "
        "within the drain window, generators on schedule and p99 < 1 s",
        "step_seconds": plan.step_s,
        "steps": steps,
        "latency_knee": latency_knee,
        "capacity_knee": capacity_knee,
        "saturated": saturated,
        "hottest_processes": [{"process": n, "percent_of_one_core": p} for n, p in top],
        "profile": profile,
        "summary": summary,
        "pngs": [],
    }


async def _profile(ctx: Context, limit: LoadResult) -> dict[str, Any]:
    """Profiles the two busiest chatmesh services with py-spy under the limiting load."""
    candidates = _chatmesh_services(ctx, limit.cpu)[:2]
    if not candidates:
        ctx.note("profile skipped: no chatmesh service process was busy")
        return {"status": "skipped", "reason": "no busy chatmesh service"}
    if profiling.find_py_spy() is None:
        ctx.note("profile skipped: py-spy is not installed (pip install py-spy)")
        return {"status": "skipped", "reason": "py-spy not installed"}
    pids = {p["name"]: p["pid"] for p in ctx.mesh.state()["processes"]}
    seconds = ctx.plan.profile_s
    rate = 100
    outs = {name: ctx.out / f"{ctx.name}-profile-{name}.txt" for name, _ in candidates}
    load = asyncio.create_task(run_load(ctx, "prof", limit.rate, seconds + 1.0, "profiled load"))
    try:
        recs = await asyncio.gather(
            *(profiling.record(pids[name], outs[name], seconds, rate) for name, _ in candidates)
        )
    finally:
        res = await load
    result: dict[str, Any] = {
        "status": "ok",
        "tool": "py-spy record --format raw --gil (blocking, 100 Hz)",
        "rate_msgs_per_s": limit.rate,
        "seconds": seconds,
        "services": [],
    }
    lines: list[str] = []
    for (name, _), (ok, message) in zip(candidates, recs, strict=True):
        if not ok:
            ctx.note(f"profile of {name} failed: {message}")
            result["services"].append({"service": name, "status": "failed", "reason": message})
            continue
        prof = profiling.analyze(outs[name].read_text(), rate=rate, seconds=seconds)
        cpu = res.cpu.per_process.get(name, 0.0)
        svc_lines = profiling.summary_lines(name, cpu, limit.rate, res.cpu.machine_percent, prof)
        if not lines:
            lines = svc_lines
        result["services"].append(
            {
                "service": name,
                "cpu_percent_of_one_core": cpu,
                "raw": outs[name].name,
                "analysis": prof,
                "where_the_time_goes": svc_lines,
            }
        )
        (ctx.out / f"{ctx.name}-profile-{name}-summary.txt").write_text("\n".join(svc_lines) + "\n")
    result["where_the_time_goes"] = lines
    return result


# -- 3. history ---------------------------------------------------------------------------------------


async def run_history(ctx: Context, label: str = "embedded") -> dict[str, Any]:
    """GetHistory(limit=50) latency per region, on channels with more than 50 messages."""
    plan = ctx.plan
    primary_gen = ctx.gens[ctx.primary]
    writer = "h-writer"
    readers = {r: f"h-reader-{r}" for r in ctx.regions}
    created = await primary_gen.call(
        "create_channels",
        {
            "channels": [
                {"name": f"history {i}", "creator": writer, "members": [writer, *readers.values()]}
                for i in range(plan.history_channels)
            ]
        },
        timeout=120,
    )
    channels: list[str] = created["channel_ids"]
    with progress_bar(ctx.console) as bar:
        task = bar.add_task(f"{ctx.name}: history ({label})", total=2 + len(ctx.regions))
        seeded = await primary_gen.call(
            "seed_history",
            {"user": writer, "channels": channels, "count": plan.history_messages},
            timeout=300,
        )
        bar.update(task, advance=1)
        waited = await _all(
            ctx,
            "wait_history",
            lambda r: {"user": readers[r], "last_seq": seeded["last_seq"], "timeout": 120},
            timeout=180,
        )
        bar.update(task, advance=1)
        per_region: dict[str, Any] = {}
        samples: dict[str, list[int]] = {}
        # One region at a time: each region's numbers are its own query path, not contention.
        for region in ctx.regions:
            res = await ctx.gens[region].call(
                "history",
                {
                    "user": readers[region],
                    "channels": channels,
                    "requests": plan.history_requests,
                    "limit": 50,
                    "concurrency": 1,
                },
                timeout=300,
            )
            samples[region] = res["latency_us"]
            per_region[region] = {
                "latency": summarize(res["latency_us"]),
                "errors": res["errors"],
                "messages_per_page_min": res["min_messages"],
                "replicated_after_s": round(float(waited[region]["seconds"]), 2),
            }
            bar.update(task, advance=1)
    png = ctx.plot(
        f"history-{label}-cdf",
        f"{ctx.name}: GetHistory(limit=50) via the regional entry ({label} stores)",
        [(r, v, "-") for r, v in samples.items()],
        target_ms=HISTORY_TARGET_MS,
    )
    summary = {}
    for region, p in per_region.items():
        summary[f"{region} p50_ms"] = p["latency"].get("p50_ms")
        summary[f"{region} p99_ms"] = p["latency"].get("p99_ms")
    return {
        "stores": label,
        "method": f"{plan.history_channels} channels x {plan.history_messages} messages; closed loop, "
        "one call in flight per region, regions one after the other",
        "requests_per_region": plan.history_requests,
        "regions": per_region,
        "summary": summary,
        "pngs": [png] if png else [],
    }


# -- 4. presence ------------------------------------------------------------------------------------------


async def run_presence(ctx: Context) -> dict[str, Any]:
    """Stream opened in one region -> GetPresence ONLINE in each region (polled)."""
    plan = ctx.plan
    regions = ctx.regions
    viewers = {r: f"p-viewer-{r}" for r in regions}
    by_pair: dict[str, list[int]] = {}
    all_other: list[int] = []
    timeouts = 0
    poll_errors: dict[str, int] = {}
    run_tag = random.Random(ctx.seed).randrange(36**4)
    # GetPresence answers only about users who share a channel with the caller: each
    # sample user shares one with every viewer, created (and replicated) before any poll.
    samples = [f"p-{run_tag:x}-{src}-{i}" for src in regions for i in range(plan.presence_samples)]
    await ctx.gens[ctx.primary].call(
        "create_channels",
        {
            "channels": [
                {"name": f"presence {u}", "creator": u, "members": [u, *viewers.values()]}
                for u in samples
            ]
        },
        timeout=120,
    )
    with progress_bar(ctx.console) as bar:
        task = bar.add_task(
            f"{ctx.name}: presence propagation", total=plan.presence_samples * len(regions)
        )
        for src in regions:
            for i in range(plan.presence_samples):
                user = f"p-{run_tag:x}-{src}-{i}"
                arm = {
                    r: {"user": user, "viewer": viewers[r], "poll_ms": plan.poll_ms, "timeout": 30}
                    for r in regions
                }
                await _all(ctx, "presence_arm", arm.__getitem__, timeout=30)
                opened = await ctx.gens[src].call("presence_open", {"user": user}, timeout=60)
                wait = {r: {"user": user, "timeout": 40} for r in regions}
                seen = await _all(ctx, "presence_result", wait.__getitem__, timeout=60)
                worst = 0
                for dst, res in seen.items():
                    for code, n in (res.get("errors") or {}).items():
                        poll_errors[code] = poll_errors.get(code, 0) + n
                    if res["seen_ns"] is None:
                        timeouts += 1
                        continue
                    lat = (int(res["seen_ns"]) - int(opened["t0_ns"])) // 1000
                    by_pair.setdefault(path_key(src, dst), []).append(lat)
                    if dst != src:
                        worst = max(worst, lat)
                if len(regions) > 1:
                    all_other.append(worst)
                await ctx.gens[src].call("close_streams", {"users": [user]}, timeout=30)
                bar.update(task, advance=1)
    pairs: dict[str, dict[str, Any]] = {
        k: {
            "category": "same region" if k.split("->")[0] == k.split("->")[1] else "other region",
            "latency": summarize(v),
        }
        for k, v in sorted(by_pair.items())
    }
    png = ctx.plot(
        "presence-cdf",
        f"{ctx.name}: stream opened -> GetPresence ONLINE",
        [
            (k, v, "-" if k.split("->")[0] != k.split("->")[1] else ":")
            for k, v in sorted(by_pair.items())
        ],
        target_ms=PRESENCE_TARGET_MS,
    )
    overall = summarize(all_other)
    summary: dict[str, Any] = {
        "all_other_regions p50_ms": overall.get("p50_ms"),
        "all_other_regions p99_ms": overall.get("p99_ms"),
        "timeouts": timeouts,
    }
    for k, p in pairs.items():
        summary[f"{k} p50_ms"] = p["latency"].get("p50_ms")
        summary[f"{k} p99_ms"] = p["latency"].get("p99_ms")
    return {
        "method": f"a new user's first stream opens in the source region (t0 = call start); every "
        f"region's generator polls GetPresence every {plan.poll_ms:g} ms through its regional entry; "
        "latency = arrival of the first ONLINE answer - t0 (resolution ~ poll interval + one call)",
        "samples_per_source_region": plan.presence_samples,
        "pairs": pairs,
        "all_other_regions": overall,
        "timeouts": timeouts,
        "poll_errors": poll_errors,
        "summary": summary,
        "pngs": [png] if png else [],
    }


# -- 5. routing table at scale -------------------------------------------------------------------------------


async def _fanout_stats(address: str, identity: dict[str, str] | None) -> fpb.GetStatsResponse:
    async with internal_channel(identity, address) as channel:
        stub: Any = fgrpc.FanoutServiceStub  # the _grpc modules are untyped
        stats: fpb.GetStatsResponse = await stub(channel).GetStats(
            fpb.GetStatsRequest(), timeout=60
        )
        return stats


def _mb(n: float) -> float:
    return round(n / 2**20, 1)


async def run_routing(ctx: Context) -> dict[str, Any]:
    """50K users x 20 memberships in the Fan-Out's table; RSS, bytes per route, GetRoute time."""
    plan = ctx.plan
    primary = ctx.primary
    svc = ctx.mesh.services[f"fanout-{primary}"]
    dsn = str(svc.config.get("metadata_store", ""))
    if not dsn.startswith("sqlite://"):
        ctx.note(f"routing skipped: the primary metadata store is not SQLite ({dsn.split(':')[0]})")
        return {
            "status": "skipped",
            "reason": "needs the embedded (SQLite) metadata store",
            "summary": {},
            "pngs": [],
        }
    db = dsn[len("sqlite://") :]
    address = ctx.mesh.endpoints[primary]["grpc"]["fanout"]
    # The operator RPCs need the harness's operator identity (mutual TLS).
    identity = ctx.mesh.extra_state.get("service_tls")
    prefix = f"rt{random.Random(ctx.seed).randrange(36**3):x}-"

    def snap(stats: fpb.GetStatsResponse) -> dict[str, Any]:
        return {
            "rss_bytes": int(stats.rss_bytes),
            "rss_mib": _mb(stats.rss_bytes),
            "table_bytes": int(stats.table_bytes),
            "table_mib": _mb(stats.table_bytes),
            "routed_users": int(stats.routed_users),
            "routes": int(stats.routes),
            "channels": int(stats.channels),
            "memberships": int(stats.memberships),
            "instances": int(stats.instances),
        }

    with progress_bar(ctx.console) as bar:
        task = bar.add_task(f"{ctx.name}: routing table ({plan.routing_users:,} users)", total=5)
        before = snap(await _fanout_stats(address, identity))
        loaded = await ctx.gens[primary].call(
            "load_memberships",
            {
                "db": db,
                "users": plan.routing_users,
                "per_user": plan.routing_per_user,
                "channel_size": 10,
                "seed": ctx.seed,
                "prefix": prefix,
            },
            timeout=600,
        )
        bar.update(task, advance=1)
        t0 = time.monotonic()
        await svc.stop()
        await svc.restart(timeout=600)
        restart_s = time.monotonic() - t0
        bar.update(task, advance=1)
        with_members = snap(await _fanout_stats(address, identity))
        instances = [
            {
                "instance_id": f"bench-fake-{ctx.regions[i % len(ctx.regions)]}-{i}",
                "region": ctx.regions[i % len(ctx.regions)],
            }
            for i in range(plan.routing_instances)
        ]
        admin = ctx.mesh.credentials["admin"]
        registered = await ctx.gens[primary].call(
            "fake_instances",
            {
                "prefix": prefix,
                "users": plan.routing_users,
                "instances": instances,
                "servers": {r: ctx.mesh.nats_urls(r) for r in ctx.regions},
                "user": admin.user,
                "password": admin.password,
                "heartbeat_s": 1.0,
            },
            timeout=300,
        )
        bar.update(task, advance=1)
        try:
            after = snap(await _fanout_stats(address, identity))
            routes = await ctx.gens[primary].call(
                "get_route",
                {
                    "fanout": address,
                    "fanout_identity": identity,
                    "prefix": prefix,
                    "users": plan.routing_users,
                    "requests": plan.getroute_requests,
                    "seed": ctx.seed,
                    "concurrency": 1,
                },
                timeout=300,
            )
            bar.update(task, advance=1)
            final = snap(await _fanout_stats(address, identity))
        finally:
            stopped = await ctx.gens[primary].call("fake_stop", {}, timeout=60)
        bar.update(task, advance=1)
    pid = svc.process.pid
    rss_proc = rss_bytes(pid) if pid else None
    added_routes = max(1, after["routed_users"] - with_members["routed_users"])
    added_memberships = max(1, with_members["memberships"] - before["memberships"])
    rss_delta = after["rss_bytes"] - before["rss_bytes"]
    lookups = summarize(routes["latency_us"])
    adr_bytes = 2 * 2**30
    png = ctx.plot(
        "routing-getroute-cdf",
        f"{ctx.name}: FanoutService.GetRoute with {after['routed_users']:,} routed users",
        [("GetRoute (gRPC, one in flight)", routes["latency_us"], "-")],
    )
    summary = {
        "routed_users": after["routed_users"],
        "memberships": with_members["memberships"],
        "rss_before_mib": before["rss_mib"],
        "rss_after_mib": after["rss_mib"],
        "rss_delta_mib": _mb(rss_delta),
        "table_mib": after["table_mib"],
        "rss_bytes_per_user": round(rss_delta / added_routes, 1),
        "table_bytes_per_route": round(
            (after["table_bytes"] - with_members["table_bytes"]) / added_routes, 1
        ),
        "table_bytes_per_membership": round(
            (with_members["table_bytes"] - before["table_bytes"]) / added_memberships, 1
        ),
        "getroute_p50_ms": lookups.get("p50_ms"),
        "getroute_p99_ms": lookups.get("p99_ms"),
        "fanout_restart_s": round(restart_s, 2),
        "routes_registered_s": round(float(registered["registered_s"]), 2),
        "adr_estimate_ratio": round(after["rss_bytes"] / adr_bytes, 4),
    }
    return {
        "method": "memberships written straight into the primary's SQLite metadata store "
        f"({plan.routing_users:,} users x {plan.routing_per_user} channels of 10), Fan-Out restarted "
        f"(it loads every membership at start), then {plan.routing_instances} fake notification "
        "instances (NATS admin user, one per region in turn, connected to their region) sent "
        "RouteSnapshot requests with their share of the users and heartbeated every second; "
        "RSS and table size from FanoutService.GetStats; GetRoute timed from a generator process",
        "loaded": loaded,
        "before": before,
        "with_memberships": with_members,
        "after_routes": after,
        "final": final,
        "rss_now_bytes": rss_proc,
        "fake_instances": registered,
        "fake_resyncs": stopped.get("resyncs", 0),
        "getroute": {
            "latency": lookups,
            "routed_answers": routes["routed"],
            "errors": routes["errors"],
        },
        "adr_estimate_bytes": adr_bytes,
        "summary": summary,
        "pngs": [png] if png else [],
    }


async def close_quietly(gens: dict[str, LoadGenProcess]) -> None:
    """Closes every generator, ignoring errors (used on the way out)."""
    for gen in gens.values():
        with contextlib.suppress(Exception):
            await gen.close()


# -- flood: one user's flood is refused, another user's sends keep their latency -------------

FLOOD_SENDS = 150
"""Sends of the calm user per phase (paced at FLOOD_CALM_RATE)."""
FLOOD_CALM_RATE = 10.0
"""The calm user's send rate, msg/s: half its own limit, so it is never refused itself."""
FLOOD_RATE = 500.0
"""The flooding user's sends per second (open loop, no retries): 25x the default send limit."""


async def _calm_phase(
    client: ChatClient, channel_id: str, label: str
) -> tuple[list[int], int, list[tuple[float, int]]]:
    """Paced sends of the calm user.

    Returns:
        Their latencies (us), its failures, and ``(start_s, latency_us)`` of each send,
        start_s from the phase's start (to line up with the flood's burst).
    """
    latencies: list[int] = []
    timeline: list[tuple[float, int]] = []
    failures = 0
    start = next_at = time.perf_counter()
    for i in range(FLOOD_SENDS):
        next_at += 1 / FLOOD_CALM_RATE
        t0 = time.perf_counter()
        try:
            await client.send_message(channel_id, f"{label} {i}", timeout=10)
            latencies.append(int((time.perf_counter() - t0) * 1e6))
            timeline.append((round(t0 - start, 3), latencies[-1]))
        except Exception:  # noqa: BLE001 - counted; a calm user's failure is the finding
            failures += 1
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    return latencies, failures, timeline


FLOOD_CPU_SHOWN = 8
"""Busiest processes listed per phase in the flood's CPU figures."""


def _busiest(cpu: CpuUsage) -> dict[str, float]:
    return dict(cpu.top(FLOOD_CPU_SHOWN))


def _ratios(alone: dict[str, Any], flood: dict[str, Any]) -> str:
    """``"x1.05 / x1.20"``: the calm user's p50 and p99 during the flood over alone."""
    parts = []
    for key in ("p50_ms", "p99_ms"):
        a, f = alone.get(key), flood.get(key)
        parts.append(f"x{f / a:.2f}" if a and f else "-")
    return " / ".join(parts)


async def run_flood(ctx: Context) -> dict[str, Any]:
    """A user flooding SendMessage is refused (RATE_LIMITED); another user's sends are timed.

    Both users enter through the primary region's edge and share one channel (the
    flooder's admitted sends queue on the same channel lock as the calm user's). The
    calm user sends at a steady FLOOD_CALM_RATE, first alone, then from the moment the
    flood generator (its own process, open loop at FLOOD_RATE, no retries) says it is
    connected, so the measured window always holds the flood's start, when the
    flooder's bucket admits its whole burst at once. Reported: the calm user's p50/p99
    in both phases of the same run and their ratio, its slowest sends during the flood
    (when, from the phase's start), the flooder's accepted and refused counts (the
    edge's or the Command Service's bucket), its achieved rate and CPU, each phase's
    busiest processes (% of one core) and the machine's load: on a shared 2-core
    machine the generator's own client work competes with the mesh, and a reader must
    be able to tell.
    """
    edge = (ctx.mesh.endpoints.get(ctx.primary) or {}).get("edge")
    if not edge:
        return {"status": "skipped", "reason": "no edge in this mesh", "summary": {}, "pngs": []}
    keys = KeyDirectory(ctx.mesh.run_dir / "keys")
    tag = f"{random.Random(ctx.seed).randrange(36**4):x}"
    calm_user, hog_user = f"flood-calm-{tag}", f"flood-hog-{tag}"
    calm = ChatClient.from_edge(edge, token=mint(keys, calm_user), retry=RetryPolicy.none())
    outcomes: dict[str, int] = {}
    sampler = ctx.sampler()
    loadavg_before = os.getloadavg()
    try:
        channel_id = (await calm.create_channel("flood", [hog_user])).channel.channel_id
        with ctx.console.status(f"{ctx.name}: flood: calm user alone"):
            before = sampler.snapshot()
            alone, alone_failed, _ = await _calm_phase(calm, channel_id, "alone")
            cpu_alone = sampler.usage(before, sampler.snapshot())
        # The flooder runs in a process of its own: same machine, not the same event loop.
        flood_s = FLOOD_SENDS / FLOOD_CALM_RATE + 1.0
        with ctx.console.status(f"{ctx.name}: flood: calm user under a flood"):
            t0 = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tools.bench.flood", str(edge["grpc"]),
                mint(keys, hog_user), channel_id, str(flood_s), str(FLOOD_RATE),
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert proc.stdout is not None
            # Wait for the generator's connection (its start-up is not the flood), then
            # measure from its first send on.
            ready = json.loads((await proc.stdout.readline()).decode() or "{}")
            if ready.get("pid"):
                sampler.pids["flood-generator"] = int(ready["pid"])
            before = sampler.snapshot()
            flooded, flooded_failed, timeline = await _calm_phase(calm, channel_id, "flooded")
            cpu_flood = sampler.usage(before, sampler.snapshot())
            out, _ = await proc.communicate()
            seconds = time.perf_counter() - t0
            report = json.loads(out.decode().strip().splitlines()[-1] if out.strip() else "{}")
            outcomes = report.get("outcomes", {})
            flood_cpu_s = report.get("cpu_s")
            flood_seconds = report.get("seconds") or seconds
    finally:
        await calm.close()
    a, f = summarize(alone), summarize(flooded)
    attempts = sum(outcomes.values())
    service_refused = outcomes.get("RESOURCE_EXHAUSTED/RATE_LIMITED", 0)
    refused = service_refused + outcomes.get("RESOURCE_EXHAUSTED/RATE_LIMITED at the edge", 0)
    limits = ctx.mesh.topology.limits
    png = ctx.plot(
        "flood-cdf",
        f"{ctx.name}: another user's SendMessage latency, alone vs during a flood",
        [("alone", alone, ":"), ("during flood", flooded, "-")],
        target_ms=SAME_REGION_TARGET_MS,
    )
    summary: dict[str, Any] = {
        "calm alone p50_ms": a.get("p50_ms"),
        "calm alone p99_ms": a.get("p99_ms"),
        "calm during flood p50_ms": f.get("p50_ms"),
        "calm during flood p99_ms": f.get("p99_ms"),
        "calm p50 / p99 ratio, flood / alone": _ratios(a, f),
        "calm slowest sends during flood (ms at s)": ", ".join(
            f"{us / 1000:.1f} at {at:.2f}" for at, us in sorted(timeline, key=lambda x: -x[1])[:3]
        ),
        "calm failures": alone_failed + flooded_failed,
        "flood attempts": attempts,
        "flood attempts_per_s": round(attempts / flood_seconds, 1) if flood_seconds else None,
        "flood generator CPU %": (
            round(100 * flood_cpu_s / flood_seconds, 1) if flood_cpu_s and flood_seconds else None
        ),
        "refused at the edge": refused - service_refused,
        "refused by the Command Service": service_refused,
        "CPU during flood, % of a core": ", ".join(
            f"{name} {pct:g}" for name, pct in cpu_flood.top(4)
        ),
        "machine busy alone / flood, % of all cores (not the mesh)": (
            f"{cpu_alone.machine_percent:g} ({cpu_alone.background_percent:g}) / "
            f"{cpu_flood.machine_percent:g} ({cpu_flood.background_percent:g})"
        ),
        "load average (1 min) before / after": (
            f"{loadavg_before[0]:.2f} / {os.getloadavg()[0]:.2f}"
        ),
        "flood accepted": outcomes.get("accepted", 0),
        "flood refused RATE_LIMITED": refused,
        "flood other errors": attempts - refused - outcomes.get("accepted", 0),
        "send limit (per s / burst)": f"{limits.send_per_s:g} / {limits.send_burst}",
    }
    return {
        "status": "ok",
        "summary": summary,
        "alone": a,
        "during_flood": f,
        "during_flood_timeline": timeline,
        "cpu_percent_of_a_core": {
            "alone": _busiest(cpu_alone),
            "during_flood": _busiest(cpu_flood),
            "machine_alone_percent_of_all_cores": cpu_alone.machine_percent,
            "machine_during_flood_percent_of_all_cores": cpu_flood.machine_percent,
            "not_watched_alone_percent_of_all_cores": cpu_alone.background_percent,
            "not_watched_during_flood_percent_of_all_cores": cpu_flood.background_percent,
        },
        "flood_outcomes": outcomes,
        "seconds": round(seconds, 2),
        "pngs": [png] if png else [],
    }
