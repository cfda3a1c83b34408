"""The single-region scenario (issue 14): what the hot path costs, beside bare NATS.

One region (topology ``single`` by default), the real edge, and issue 14's
workload: ``streams`` users, each holding one Subscribe stream on a connection
of its own through the edge (held by ``receivers`` load-generator processes),
each user in one channel of ``channel_size`` members, open-loop sends from other
generator processes. Measured, in this order:

* **RSS per live stream**: the notification instances' and the edge's RSS before
  and after the streams opened, the difference divided by the streams;
* **bare-NATS floor**: the same fan-out on nats-server alone (one subscription per
  (user, channel) in the receiver processes, open-loop publishes at the same
  deliveries/s): its delivery p50/p99 and nats-server's CPU per 1,000 deliveries/s;
* **delivery at ``delivery_rate``** deliveries/s: p50/p99 and every process's CPU
  per 1,000 deliveries/s (servers and load generators apart);
* **the knee**: rising open-loop steps until one fails (p99 > 50 ms, a send error,
  < 99 % delivered, a backlog, or generators behind schedule); bounded in time;
* **SendMessage** requests/s through the edge at each concurrency (closed loop)
  with p50/p99 and server CPU per send summed over every process, with ``ghz``
  when it builds and with the project's Python generator in separate processes;
* **GetHistory(50)** requests/s at each concurrency.

Every figure is reported as measured / issue 14's target / ratio to the floor
(where the floor measures the same thing). The run raises the per-user rate
limits (the checks still run on every call) so that a load tool with one user
can send at the measured rates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import zlib
from pathlib import Path
from typing import Any

from chatmesh.v1 import command_service_pb2, query_service_pb2
from mesh.core.auth import KeyDirectory, mint
from mesh.harness.servers.gotools import GoTool, GoToolError
from mesh.topology import Limits
from tools.bench import pauses
from tools.bench.plan import SinglePlan
from tools.bench.procstat import CpuSampler, CpuUsage, rss_bytes
from tools.bench.scenarios import Context, progress_bar
from tools.bench.stats import knee, per_1000, ratio, summarize
from tools.bench.workers import LoadGenProcess

__all__ = ["GHZ", "TARGETS", "bench_limits", "figures", "per_process_rows", "run_single", "summary"]

logger = logging.getLogger(__name__)

GHZ = GoTool(
    package="github.com/bojand/ghz/cmd/ghz",
    version="v0.93.0",
    built_name="ghz",
    name="ghz",
)
"""ghz, a gRPC load tool, built from the Go module proxy once per machine (the newest
version the proxy lists; about a minute to build)."""

P99_LIMIT_MS = 50.0
"""A knee step passes with p99 at or below this (and no error, no backlog)."""

TARGETS: dict[str, tuple[float, str]] = {
    "cpu_per_1000_deliveries": (25.0, "<="),
    "knee_deliveries_per_s": (5000.0, ">="),
    "delivery_p50_ms": (3.0, "<="),
    "delivery_p99_ms": (10.0, "<="),
    "send_rps_c32": (1000.0, ">="),
    "send_p99_ms_c32": (50.0, "<="),
    "send_cpu_ms": (1.5, "<="),
    "history_rps": (2000.0, ">="),
    "rss_kib_per_stream": (50.0, "<="),
}
"""Issue 14's targets: figure -> (limit, direction)."""


def bench_limits(limits: Limits) -> Limits:
    """Per-user limits high enough for one load-tool user; every check still runs."""
    big = 1_000_000
    return dataclasses.replace(
        limits,
        send_per_s=float(big),
        send_burst=big,
        create_channel_per_s=float(big),
        create_channel_burst=big,
        edge_per_s=float(big),
        edge_burst=big,
    )


def _is_server(name: str) -> bool:
    return not (name.startswith("gen-") or name == "bench-orchestrator")


def _cpu_split(cpu: CpuUsage) -> dict[str, Any]:
    servers = {n: p for n, p in cpu.per_process.items() if _is_server(n)}
    gens = {n: p for n, p in cpu.per_process.items() if not _is_server(n)}
    return {
        "seconds": round(cpu.seconds, 2),
        "machine_percent_of_all_cores": cpu.machine_percent,
        "background_percent_of_all_cores": cpu.background_percent,
        "server_percent_of_one_core": round(sum(servers.values()), 1),
        "servers": dict(sorted(servers.items(), key=lambda kv: -kv[1])),
        "generators_percent_of_one_core": round(sum(gens.values()), 1),
        "generators": dict(sorted(gens.items(), key=lambda kv: -kv[1])),
    }


@dataclasses.dataclass
class _Single:
    """The scenario's processes and population."""

    ctx: Context
    plan: SinglePlan
    receivers: list[LoadGenProcess]
    unary: list[LoadGenProcess]
    users_of: dict[int, list[str]] = dataclasses.field(default_factory=dict)
    """Receiver index -> its users."""
    channels: list[str] = dataclasses.field(default_factory=list)
    members: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    streaming: dict[str, int] = dataclasses.field(default_factory=dict)
    """Channel -> members whose stream is open."""
    choices: list[list[str]] = dataclasses.field(default_factory=list)

    @property
    def senders(self) -> list[LoadGenProcess]:
        return [self.ctx.gens[self.ctx.primary], *self.unary]

    def sampler(self) -> CpuSampler:
        sampler = self.ctx.sampler()
        for gen in [*self.receivers, *self.unary]:
            if gen.pid:
                sampler.pids[gen.name] = gen.pid
        return sampler

    def pids(self, prefix: tuple[str, ...]) -> dict[str, int]:
        return {
            p["name"]: int(p["pid"])
            for p in self.ctx.mesh.state()["processes"]
            if p.get("pid") and str(p["name"]).startswith(prefix)
        }


def _entry(ctx: Context) -> dict[str, Any]:
    eps = ctx.mesh.endpoints[ctx.primary]
    edge = eps.get("edge")
    if ctx.entry == "edge" and edge and edge.get("grpc"):
        addr = str(edge["grpc"])
        return {"command": addr, "query": addr, "notification": [addr]}
    grpc_eps = eps["grpc"]
    return {
        "command": grpc_eps["command"],
        "query": grpc_eps["query"],
        "notification": list(grpc_eps["notification"]),
    }


async def _gens(ctx: Context, names: list[str]) -> list[LoadGenProcess]:
    gens = []
    try:
        for name in names:
            gen = LoadGenProcess(name, ctx.primary, ctx.out / "logs" / f"{name}-{ctx.name}.log")
            gens.append(gen)
            await gen.start()
            await gen.call(
                "init",
                {
                    "region": ctx.primary,
                    "keys_dir": str(ctx.mesh.run_dir / "keys"),
                    **_entry(ctx),
                },
                timeout=30,
            )
    except BaseException:
        for gen in gens:
            await gen.close()
        raise
    return gens


async def _deliver(
    s: _Single, phase: str, deliveries_per_s: float, seconds: float
) -> dict[str, Any]:
    """Open-loop sends at ``deliveries_per_s`` (split over the sender processes); what arrived."""
    per_send = sum(s.streaming.get(ch, 0) for _, ch in s.choices) / max(1, len(s.choices))
    rate = deliveries_per_s / max(per_send, 1e-9)
    senders = s.senders
    gens = [*s.receivers, *s.unary, s.ctx.gens[s.ctx.primary]]
    metrics = s.ctx.mesh.endpoints[s.ctx.primary].get("metrics") or {}
    await asyncio.gather(*(g.call("pauses", {}, timeout=10) for g in gens))
    pauses_before = await pauses.scrape(metrics)
    sampler = s.sampler()
    before = sampler.snapshot()
    results = await asyncio.gather(
        *(
            gen.call(
                "send",
                {
                    "phase": phase,
                    "rate": rate / len(senders),
                    "duration": seconds,
                    "choices": s.choices,
                    "seed": zlib.crc32(f"{s.ctx.seed}:{phase}:{i}".encode()),
                    "timeout": 10.0,
                },
                timeout=seconds + 60,
            )
            for i, gen in enumerate(senders)
        )
    )
    cpu = sampler.usage(before, sampler.snapshot())
    expected = sum(
        n * s.streaming.get(ch, 0) for r in results for ch, n in r["ok_by_channel"].items()
    )
    deadline = time.monotonic() + 3.0
    while True:
        counts = await asyncio.gather(*(g.call("received", {}, timeout=10) for g in s.receivers))
        received = sum(int(c["received"].get(phase, 0)) for c in counts)
        if received >= expected or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    pauses_after = await pauses.scrape(metrics)
    gen_pauses = await asyncio.gather(*(g.call("pauses", {}, timeout=10) for g in gens))
    taken = await asyncio.gather(
        *(g.call("take_samples", {"phase": phase}, timeout=60) for g in s.receivers)
    )
    samples = [v for t in taken for values in t["samples"].values() for v in values]
    received = sum(int(t["received"]) for t in taken)
    errors: dict[str, int] = {}
    ack: list[int] = []
    for r in results:
        ack += r["ack_us"]
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n
    sent = sum(int(r["sent"]) for r in results)
    backlog = max(
        (
            float(r["ack_last_quarter_p50_ms"]) - float(r["ack_first_quarter_p50_ms"])
            for r in results
            if r["ack_us"]
        ),
        default=0.0,
    )
    lag = max(float(r["lag_p99_ms"]) for r in results)
    lat = summarize(samples)
    delivered = received / expected if expected else 1.0
    why = []
    if not lat.get("n"):
        why.append("no deliveries")
    elif lat["p99_ms"] > P99_LIMIT_MS:
        why.append(f"p99 {lat['p99_ms']} ms > {P99_LIMIT_MS:g} ms")
    if errors:
        why.append(f"send errors {errors}")
    if delivered < 0.99:
        why.append(f"only {delivered:.1%} delivered")
    if backlog >= 50:
        why.append(f"backlog (ack p50 rose {backlog:.0f} ms)")
    if lag >= 100:
        why.append(f"load generators behind schedule (p99 lag {lag:.0f} ms): generator-bound")
    achieved = received / seconds if seconds else 0.0
    split = _cpu_split(cpu)
    return {
        "planned_deliveries_per_s": deliveries_per_s,
        "sends_per_s": round(sent / seconds, 1),
        "deliveries_per_s": round(achieved, 1),
        "expected": expected,
        "received": received,
        "delivered_ratio": round(delivered, 4),
        "errors": errors,
        "latency": lat,
        "send_ack": summarize(ack),
        "backlog_ms": round(backlog, 1),
        "generator_lag_p99_ms": lag,
        "cpu": split,
        "server_cpu_per_1000_deliveries_per_s": per_1000(
            split["server_percent_of_one_core"], achieved
        ),
        "cpu_per_1000_by_process": {n: per_1000(p, achieved) for n, p in split["servers"].items()},
        "pauses": {
            **{
                n: pauses.diff(pauses_before.get(n, {}), after)
                for n, after in sorted(pauses_after.items())
            },
            **{g.name: pauses.generator(p) for g, p in zip(gens, gen_pauses, strict=True)},
        },
        "passed": not why,
        "why_not": "; ".join(why),
        "_samples": samples,
    }


async def _floor(s: _Single, channel_index: dict[str, int]) -> dict[str, Any]:
    """Bare NATS doing the same fan-out at the same deliveries/s; nats-server's CPU."""
    ctx, plan = s.ctx, s.plan
    creds = ctx.mesh.credentials["bench"]
    servers = ctx.mesh.nats_urls(ctx.primary)
    auth = {"servers": servers, "user": creds.user, "password": creds.password}
    member_channels: dict[str, list[str]] = {}
    for ch, members in s.members.items():
        for m in members:
            member_channels.setdefault(m, []).append(f"bench.single.{channel_index[ch]}")
    await asyncio.gather(
        *(
            g.call(
                "nats_fanout_listen",
                {**auth, "subjects": [sub for u in s.users_of[i] for sub in member_channels[u]]},
                timeout=60,
            )
            for i, g in enumerate(s.receivers)
        )
    )
    subjects = [f"bench.single.{i}" for i in range(len(s.channels))]
    sender = ctx.gens[ctx.primary]
    rate = plan.delivery_rate / plan.channel_size
    await sender.call(
        "nats_fanout_send",
        {**auth, "phase": "nfw", "rate": rate, "duration": 1.0, "subjects": subjects},
        timeout=60,
    )
    await asyncio.sleep(0.5)
    await asyncio.gather(
        *(g.call("take_samples", {"phase": "nfw"}, timeout=30) for g in s.receivers)
    )
    sampler = s.sampler()
    before = sampler.snapshot()
    sent = await sender.call(
        "nats_fanout_send",
        {**auth, "phase": "nf", "rate": rate, "duration": plan.floor_s, "subjects": subjects},
        timeout=plan.floor_s + 60,
    )
    cpu = sampler.usage(before, sampler.snapshot())
    await asyncio.sleep(0.5)
    taken = await asyncio.gather(
        *(g.call("take_samples", {"phase": "nf"}, timeout=30) for g in s.receivers)
    )
    samples = [v for t in taken for values in t["samples"].values() for v in values]
    achieved = len(samples) / plan.floor_s
    split = _cpu_split(cpu)
    nats_cpu = sum(p for n, p in split["servers"].items() if n in _nats_names(ctx))
    return {
        "method": "nats-py as user 'bench': one subscription per (user, channel) in the "
        "receiver processes, open-loop publishes of '<phase> <t_ns>' to a random channel's "
        "subject from the sender process; same machine, same region, no WAN",
        "published": sent["published"],
        "deliveries_per_s": round(achieved, 1),
        "latency": summarize(samples),
        "nats_cpu_percent_of_one_core": round(nats_cpu, 1),
        "nats_cpu_per_1000_deliveries_per_s": per_1000(nats_cpu, achieved),
        "cpu": split,
        "_samples": samples,
    }


def _nats_names(ctx: Context) -> set[str]:
    """Process names of the mesh's nats-server nodes (named ``<region>-<n>``)."""
    return {node.process.name for nodes in ctx.mesh.nats_nodes.values() for node in nodes}


async def _server_cpu(s: _Single, seconds: float) -> CpuUsage:
    sampler = s.sampler()
    before = sampler.snapshot()
    await asyncio.sleep(seconds)
    return sampler.usage(before, sampler.snapshot())


async def _settle(s: _Single, idle_percent: float, budget_s: float = 15.0) -> float:
    """Waits (bounded) until the servers are back near idle; returns the seconds waited.

    A phase's backlog must not spill into the next one.
    """
    t0 = time.monotonic()
    while time.monotonic() - t0 < budget_s:
        cpu = _cpu_split(await _server_cpu(s, 0.5))
        if cpu["server_percent_of_one_core"] <= idle_percent + 10:
            break
    return round(time.monotonic() - t0, 1)


def _split(concurrency: int, procs: int) -> list[int]:
    n = max(1, min(concurrency, procs))
    return [concurrency // n + (1 if i < concurrency % n else 0) for i in range(n)]


async def _unary(
    s: _Single, op: str, concurrency: int, choices: list[list[str]], seconds: float
) -> dict[str, Any]:
    """Closed-loop calls from the Python generator processes; rate, latency, CPU per call."""
    parts = _split(concurrency, len(s.unary))
    sampler = s.sampler()
    before = sampler.snapshot()
    results = await asyncio.gather(
        *(
            s.unary[i].call(
                "unary_load",
                {
                    "op": op,
                    "concurrency": c,
                    "duration": seconds,
                    "choices": choices,
                    "seed": i + 17 * concurrency,
                    "limit": 50,
                },
                timeout=seconds + 60,
            )
            for i, c in enumerate(parts)
        )
    )
    cpu = sampler.usage(before, sampler.snapshot())
    lat = [v for r in results for v in r["latency_us"]]
    errors: dict[str, int] = {}
    for r in results:
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n
    elapsed = max(float(r["seconds"]) for r in results)
    return _unary_figures(
        "python",
        concurrency,
        len(lat),
        elapsed,
        summarize(lat),
        errors,
        cpu,
        {
            "processes": len(parts),
            "min_messages": min(int(r["min_messages"]) for r in results),
        },
    )


def _unary_figures(
    tool: str,
    concurrency: int,
    ok: int,
    elapsed: float,
    lat: dict[str, Any],
    errors: dict[str, int],
    cpu: CpuUsage,
    extra: dict[str, Any],
) -> dict[str, Any]:
    split = _cpu_split(cpu)
    server_s = split["server_percent_of_one_core"] / 100 * cpu.seconds
    return {
        "tool": tool,
        "concurrency": concurrency,
        "ok": ok,
        "requests_per_s": round(ok / elapsed, 1) if elapsed > 0 else 0.0,
        "latency": lat,
        "errors": errors,
        "server_cpu_ms_per_call": round(server_s * 1000 / ok, 3) if ok else None,
        "cpu": split,
        **extra,
    }


# -- ghz (an external gRPC load tool, built from the Go module proxy) ---------------------------


def _protoset(path: Path) -> Path:
    """The public services' descriptors (with every dependency) as a FileDescriptorSet."""
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(fd: Any) -> None:
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        fds.file.append(proto)

    add(command_service_pb2.DESCRIPTOR)
    add(query_service_pb2.DESCRIPTOR)
    path.write_bytes(fds.SerializeToString())
    return path


async def _ghz(
    s: _Single,
    binary: Path,
    call: str,
    concurrency: int,
    data: list[dict[str, Any]],
    token: str,
    seconds: float,
) -> dict[str, Any]:
    """One ghz run (closed loop, ``concurrency`` workers) with the servers' CPU sampled."""
    ctx = s.ctx
    edge = (ctx.mesh.endpoints[ctx.primary].get("edge") or {}) if ctx.entry == "edge" else {}
    host = _entry(ctx)["command"]
    work = ctx.out / "ghz"
    work.mkdir(exist_ok=True)
    protoset = work / "chatmesh.protoset"
    if not protoset.exists():
        _protoset(protoset)
    config: dict[str, Any] = {
        "protoset": str(protoset),
        "call": call,
        "host": host,
        "concurrency": concurrency,
        "connections": min(concurrency, 2),
        "duration": f"{seconds:g}s",
        "timeout": "10s",
        "data": data,
        "metadata": {"authorization": f"Bearer {token}"},
    }
    if edge.get("tls"):
        if edge.get("ca_file"):
            config["cacert"] = str(edge["ca_file"])
    else:
        config["insecure"] = True
    stem = f"{call.rsplit('.', 1)[1]}-c{concurrency}"
    cfg = work / f"{stem}.json"
    cfg.write_text(json.dumps(config))
    out = work / f"{stem}-report.json"
    proc = await asyncio.create_subprocess_exec(
        str(binary),
        "--config",
        str(cfg),
        "--format",
        "json",
        "--output",
        str(out),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    sampler = s.sampler()
    sampler.pids["gen-ghz"] = proc.pid
    before = sampler.snapshot()
    # Sample just before ghz exits: afterwards its CPU counters are gone.
    await asyncio.sleep(seconds)
    cpu = sampler.usage(before, sampler.snapshot())
    _, err = await asyncio.wait_for(proc.communicate(), seconds + 60)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"ghz exited {proc.returncode}: {err.decode()[-600:]}")
    report = json.loads(out.read_text())
    codes: dict[str, int] = report.get("statusCodeDistribution") or {}
    ok = int(codes.get("OK", 0))
    errors = {k: int(v) for k, v in codes.items() if k != "OK"}
    # ghz ends a --duration run by closing its connections under the calls still in
    # flight (at most one per worker): those are not the server's errors.
    cut = 0
    for msg, n in (report.get("errorDistribution") or {}).items():
        code = "Canceled" if "code = Canceled" in msg else "Unavailable"
        if ("transport is closing" in msg or code == "Canceled") and errors.get(code):
            take = min(int(n), concurrency - cut, errors[code])
            errors[code] -= take
            cut += take
    errors = {k: v for k, v in errors.items() if v}
    lat = {d["percentage"]: d["latency"] / 1e6 for d in report.get("latencyDistribution") or []}
    latency = {
        "n": ok,
        "p50_ms": round(lat.get(50, float("nan")), 2),
        "p99_ms": round(lat.get(99, float("nan")), 2),
        "mean_ms": round(float(report.get("average", 0)) / 1e6, 2),
    }
    elapsed = float(report.get("total", 0)) / 1e9 or seconds
    return _unary_figures(
        "ghz",
        concurrency,
        ok,
        elapsed,
        latency,
        errors,
        cpu,
        {
            "rps_reported": round(float(report.get("rps", 0)), 1),
            "cut_at_end": cut,
            "error_samples": list((report.get("errorDistribution") or {}).items())[:3],
        },
    )


# -- the scenario ---------------------------------------------------------------------------------


async def run_single(ctx: Context, plan: SinglePlan) -> dict[str, Any]:
    """Runs the single-region measurements on ``ctx``'s primary region."""
    ghz_build = asyncio.create_task(GHZ.ensure_async())
    receivers = await _gens(ctx, [f"gen-recv-{i + 1}" for i in range(plan.receivers)])
    unary = await _gens(ctx, [f"gen-unary-{i + 1}" for i in range(plan.unary_procs)])
    s = _Single(ctx, plan, receivers, unary)
    try:
        return await _measure(s, ghz_build)
    finally:
        for gen in [*receivers, *unary]:
            await gen.close()
        if not ghz_build.done():
            ghz_build.cancel()


def _cut(users: list[str], size: int) -> list[list[str]]:
    """``users`` in consecutive groups of ``size`` (the last may be smaller)."""
    return [users[i : i + size] for i in range(0, len(users), size)]


async def _create(
    gen: LoadGenProcess, name: str, groups: list[list[str]], *, concurrency: int = 16,
    timeout: float = 600,
) -> list[str]:  # fmt: skip
    """One channel per group (its first member creates it); their ids, in order."""
    created = await gen.call(
        "create_channels",
        {
            "channels": [
                {"name": f"{name} {i}", "creator": g[0], "members": g} for i, g in enumerate(groups)
            ],
            "concurrency": concurrency,
        },
        timeout=timeout,
    )
    return list(created["channel_ids"])


async def _measure(s: _Single, ghz_build: asyncio.Task[Path]) -> dict[str, Any]:
    ctx, plan = s.ctx, s.plan
    primary = ctx.gens[ctx.primary]
    result: dict[str, Any] = {"status": "ok", "plan": dataclasses.asdict(plan)}
    # Users and channels: user i is in channel i // channel_size; receivers take turns.
    users = [f"u-{ctx.primary}-{i:05d}" for i in range(plan.streams)]
    groups = _cut(users, plan.channel_size)
    t0 = time.monotonic()
    s.channels = await _create(primary, "single", groups)
    s.members = dict(zip(s.channels, groups, strict=True))
    channel_index = {ch: i for i, ch in enumerate(s.channels)}
    s.users_of = {i: users[i :: plan.receivers] for i in range(plan.receivers)}
    watched = ("notification-", "envoy-")
    rss_pids = s.pids(watched)
    await asyncio.sleep(1.0)
    rss_before = {n: rss_bytes(p) or 0 for n, p in rss_pids.items()}
    with progress_bar(ctx.console) as bar:
        task = bar.add_task(
            f"{ctx.name}: opening {plan.streams} streams (1 per connection)", total=plan.streams
        )
        done: dict[int, int] = {}

        def on_open(i: int) -> Any:
            def update(p: dict[str, Any]) -> None:
                done[i] = int(p["opened"])
                bar.update(task, completed=sum(done.values()))

            return update

        opened = await asyncio.gather(
            *(
                g.call(
                    "open_streams",
                    {
                        "users": s.users_of[i],
                        "budget_s": plan.stream_open_budget_s,
                        "concurrency": 8,
                        "per_connection": 1,
                    },
                    timeout=plan.stream_open_budget_s + 120,
                    progress=on_open(i),
                )
                for i, g in enumerate(s.receivers)
            )
        )
    open_users = {u for r in opened for u in r["opened"]}
    open_s = max(float(r["elapsed_s"]) for r in opened)
    if len(open_users) < plan.streams:
        lost = {k: v for r in opened for k, v in r["failed"].items()}
        ctx.note(
            f"single: {len(open_users)}/{plan.streams} streams opened in {open_s:.0f} s"
            + (f"; {len(lost)} failed, e.g. {next(iter(lost.values()))}" if lost else "")
        )
    await asyncio.sleep(2.0)
    rss_after = {n: rss_bytes(p) or 0 for n, p in rss_pids.items()}
    delta = sum(rss_after.values()) - sum(rss_before.values())
    result["streams"] = {
        "target": plan.streams,
        "open": len(open_users),
        "per_connection": 1,
        "seconds": round(open_s, 1),
        "streams_per_s": round(len(open_users) / open_s, 1) if open_s else None,
        "open_latency": summarize([v for r in opened for v in r["open_us"]]),
        "setup_s": round(time.monotonic() - t0, 1),
    }
    result["rss"] = {
        "processes": sorted(rss_pids),
        "before_bytes": rss_before,
        "after_bytes": rss_after,
        "delta_bytes": delta,
        "kib_per_stream": round(delta / 1024 / len(open_users), 1) if open_users else None,
        "kib_per_stream_by_process": {
            n: round((rss_after[n] - rss_before[n]) / 1024 / len(open_users), 1) for n in rss_pids
        }
        if open_users
        else {},
    }
    idle = _cpu_split(await _server_cpu(s, 3.0))
    result["idle"] = {
        "seconds": idle["seconds"],
        "server_percent_of_one_core": idle["server_percent_of_one_core"],
        "servers": idle["servers"],
        "note": "no sends: the streams' heartbeats and the services' own timers",
    }
    idle_pct = float(idle["server_percent_of_one_core"])
    s.streaming = {ch: sum(1 for m in ms if m in open_users) for ch, ms in s.members.items()}
    s.choices = [[m, ch] for ch, ms in s.members.items() for m in ms]
    ctx.console.print(
        f"  {len(open_users)} streams open in {open_s:.0f} s; RSS +{delta / 2**20:.1f} MiB "
        f"({result['rss']['kib_per_stream']} KiB per stream: "
        + ", ".join(f"{n} {v}" for n, v in result["rss"]["kib_per_stream_by_process"].items())
        + ")"
    )

    with ctx.console.status(f"{ctx.name}: bare-NATS floor @ {plan.delivery_rate:g} deliveries/s"):
        floor = await _floor(s, channel_index)
    pngs = []
    ctx.console.print(
        f"  bare NATS @ {floor['deliveries_per_s']:g} deliveries/s: p50 / p99 "
        f"{floor['latency'].get('p50_ms')} / {floor['latency'].get('p99_ms')} ms, nats-server "
        f"{floor['nats_cpu_per_1000_deliveries_per_s']}% of a core per 1,000 deliveries/s"
    )

    await _deliver(s, "sw", plan.delivery_rate / 2, 2.0)  # warm-up (discarded)
    with ctx.console.status(f"{ctx.name}: delivery @ {plan.delivery_rate:g} deliveries/s"):
        delivery = await _deliver(s, "sd", plan.delivery_rate, plan.delivery_s)
    ctx.console.print(
        f"  chatmesh @ {delivery['deliveries_per_s']:g} deliveries/s: p50 / p99 "
        f"{delivery['latency'].get('p50_ms')} / {delivery['latency'].get('p99_ms')} ms, servers "
        f"{delivery['server_cpu_per_1000_deliveries_per_s']}% of a core per 1,000 deliveries/s, "
        f"generators {delivery['cpu']['generators_percent_of_one_core']}% of a core"
        + (f" [yellow]({delivery['why_not']})[/yellow]" if delivery["why_not"] else "")
    )
    ctx.console.print(f"    pauses: {pauses.brief(delivery['pauses'])}")
    png = ctx.plot(
        "single-delivery-cdf",
        f"{ctx.name}: send->receive @ {plan.delivery_rate:g} deliveries/s, chatmesh vs bare NATS",
        [
            ("chatmesh (through the edge)", delivery.pop("_samples"), "-"),
            ("bare NATS fan-out", floor.pop("_samples"), "--"),
        ],
        target_ms=10.0,
    )
    if png:
        pngs.append(png)
    result["floor"] = floor
    result["delivery"] = delivery
    delivery["settled_after_s"] = await _settle(s, idle_pct)

    steps: list[dict[str, Any]] = []
    started = time.monotonic()
    for i, rate in enumerate(plan.knee_steps):
        if time.monotonic() - started > plan.knee_budget_s:
            ctx.note(
                f"single: knee search stopped after {plan.knee_budget_s:g} s (time bound) "
                f"before {rate:g} deliveries/s"
            )
            break
        step = await _deliver(s, f"sk{i}", rate, plan.step_s)
        step.pop("_samples")
        step["settled_after_s"] = await _settle(s, idle_pct)
        steps.append(step)
        ctx.console.print(
            f"  step {rate:g} deliveries/s: got {step['deliveries_per_s']:g}/s, p99 "
            f"{step['latency'].get('p99_ms')} ms, servers {step['cpu']['server_percent_of_one_core']}%"
            f", generators {step['cpu']['generators_percent_of_one_core']}%, machine "
            f"{step['cpu']['machine_percent_of_all_cores']}%"
            + (f" [yellow]({step['why_not']})[/yellow]" if step["why_not"] else "")
        )
        ctx.console.print(f"    pauses: {pauses.brief(step['pauses'])}")
        if not step["passed"]:
            break
    knee_rate = knee([(st["planned_deliveries_per_s"], st["passed"]) for st in steps])
    knee_step: dict[str, Any] | None = next(
        (st for st in steps if st["planned_deliveries_per_s"] == knee_rate), None
    )
    failed: dict[str, Any] | None = next((st for st in steps if not st["passed"]), None)
    result["knee"] = {
        "criterion": f"rising open-loop steps of {plan.step_s:g} s; a step passes with p99 <= "
        f"{P99_LIMIT_MS:g} ms, no send error, >= 99% delivered, no backlog and the generators on "
        "schedule; the knee is the last passed step before the first failed one",
        "deliveries_per_s": knee_rate,
        "achieved_deliveries_per_s": knee_step["deliveries_per_s"] if knee_step else None,
        "failed_at": failed["planned_deliveries_per_s"] if failed else None,
        "failed_because": failed["why_not"] if failed else None,
        "steps": steps,
    }
    if failed is None and steps and len(steps) == len(plan.knee_steps):
        ctx.note(f"single: every knee step passed: the knee is above {plan.knee_steps[-1]:g}")

    # SendMessage: users without streams (no deliveries), user i in channel i // size.
    senders = [f"s-{ctx.primary}-{i:05d}" for i in range(plan.send_users)]
    sgroups = _cut(senders, plan.channel_size)
    send_channels = await _create(primary, "send", sgroups)
    send_choices = [[u, ch] for ch, g in zip(send_channels, sgroups, strict=True) for u in g]
    keys = KeyDirectory(ctx.mesh.run_dir / "keys")
    ghz_user = sgroups[0][0]
    ghz_channels = [ch for ch, g in zip(send_channels, sgroups, strict=True) if ghz_user in g]
    # The ghz user is a member of its own channel only; give it more channels to spread over.
    ghz_groups = [[ghz_user, *g[1:]] for g in sgroups[1:16]]
    ghz_channels += await _create(primary, "ghz", ghz_groups, concurrency=8, timeout=300)
    try:
        built = await asyncio.wait_for(asyncio.shield(ghz_build), 300)
        ghz_status = f"ghz {built.name.split('-', 1)[1]}"
        binary: Path | None = built
    except (GoToolError, TimeoutError, OSError) as exc:
        binary = None
        ghz_status = f"ghz did not build ({type(exc).__name__}: {str(exc)[-300:]})"
        ctx.note(f"single: {ghz_status}; the Python generator alone measures the unary rates")
    sends: list[dict[str, Any]] = []
    histories: list[dict[str, Any]] = []
    with ctx.console.status(f"{ctx.name}: SendMessage closed loop"):
        for c in plan.concurrencies:
            if binary is not None:
                await _settle(s, idle_pct)
                data: list[dict[str, Any]] = [
                    {
                        "channel_id": ch,
                        "text": "ghz {{.RequestNumber}}",
                        "client_msg_id": "{{.UUID}}",
                    }
                    for ch in ghz_channels
                ]
                try:
                    sends.append(
                        await _ghz(
                            s,
                            binary,
                            "chatmesh.v1.CommandService.SendMessage",
                            c,
                            data,
                            mint(keys, ghz_user),
                            plan.unary_s,
                        )
                    )
                except Exception as exc:  # noqa: BLE001 - reported; the Python run still measures
                    ctx.note(f"single: ghz SendMessage c={c} failed: {exc}")
            await _settle(s, idle_pct)
            sends.append(await _unary(s, "send", c, send_choices, plan.unary_s))
            for r in sends[-2 if binary else -1 :]:
                _print_unary(ctx, "SendMessage", r)

    # GetHistory(50): channels with more than 50 messages, read by their members.
    hgroups = sgroups[16 : 16 + plan.history_channels] or sgroups[: plan.history_channels]
    # One reader (ghz's user) is a member of every history channel.
    hgroups = [[hgroups[0][0], *g[1:]] for g in hgroups]
    hchannels = await _create(primary, "history", hgroups, timeout=120)
    for ch, g in zip(hchannels, hgroups, strict=True):
        seeded = await primary.call(
            "seed_history",
            {"user": g[0], "channels": [ch], "count": plan.history_messages},
            timeout=300,
        )
        await primary.call(
            "wait_history",
            {"user": g[0], "last_seq": seeded["last_seq"], "timeout": 60},
            timeout=90,
        )
    hchoices = [[u, ch] for ch, g in zip(hchannels, hgroups, strict=True) for u in g]
    with ctx.console.status(f"{ctx.name}: GetHistory(50) closed loop"):
        for c in plan.concurrencies:
            if binary is not None:
                await _settle(s, idle_pct)
                data = [{"channel_id": ch, "limit": 50} for ch in hchannels]
                try:
                    histories.append(
                        await _ghz(
                            s,
                            binary,
                            "chatmesh.v1.QueryService.GetHistory",
                            c,
                            data,
                            mint(keys, hgroups[0][0]),
                            plan.unary_s,
                        )
                    )
                except Exception as exc:  # noqa: BLE001 - reported
                    ctx.note(f"single: ghz GetHistory c={c} failed: {exc}")
            await _settle(s, idle_pct)
            histories.append(await _unary(s, "history", c, hchoices, plan.unary_s))
            for r in histories[-2 if binary else -1 :]:
                _print_unary(ctx, "GetHistory(50)", r)
    result["process_kinds"] = {n: "nats-server" for n in _nats_names(ctx)}
    result["send"] = sends
    result["history"] = histories
    result["load_tool"] = ghz_status
    result["pngs"] = pngs
    result["summary"] = summary(result)
    return result


def _print_unary(ctx: Context, label: str, r: dict[str, Any]) -> None:
    ctx.console.print(
        f"  {label} c={r['concurrency']} ({r['tool']}): {r['requests_per_s']:g} req/s, p50 / p99 "
        f"{r['latency'].get('p50_ms')} / {r['latency'].get('p99_ms')} ms, server CPU "
        f"{r['server_cpu_ms_per_call']} ms per call, load generator "
        f"{r['cpu']['generators_percent_of_one_core']}% of a core"
        + (f", errors {r['errors']}" if r["errors"] else "")
    )


def _best(runs: list[dict[str, Any]], concurrency: int | None = None) -> dict[str, Any] | None:
    """The run with the most requests/s (at ``concurrency`` when given) without errors.

    A run counts when at most 0.1 % of its calls failed (one stray failure is tolerated).
    """
    pool = [
        r
        for r in runs
        if (concurrency is None or r["concurrency"] == concurrency)
        and sum(r["errors"].values()) <= max(1, r["ok"] // 1000)
    ]
    return max(pool, key=lambda r: r["requests_per_s"], default=None)


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The flat numbers of a single-region result (what the figures table reads)."""
    d, f, k = result["delivery"], result["floor"], result["knee"]
    send32 = _best(result["send"], 32) or _best(result["send"])
    hist = _best(result["history"])
    out: dict[str, Any] = {
        "streams_open": result["streams"]["open"],
        "delivery deliveries_per_s": d["deliveries_per_s"],
        "delivery p50_ms": d["latency"].get("p50_ms"),
        "delivery p99_ms": d["latency"].get("p99_ms"),
        "floor p50_ms": f["latency"].get("p50_ms"),
        "floor p99_ms": f["latency"].get("p99_ms"),
        "server_cpu_per_1000_deliveries_per_s": d["server_cpu_per_1000_deliveries_per_s"],
        "floor nats_cpu_per_1000_deliveries_per_s": f["nats_cpu_per_1000_deliveries_per_s"],
        "generators_cpu_percent_at_delivery": d["cpu"]["generators_percent_of_one_core"],
        "knee_deliveries_per_s": k["deliveries_per_s"],
        "rss_kib_per_stream": result["rss"]["kib_per_stream"],
    }
    for r in result["send"]:
        key = f"SendMessage c={r['concurrency']} {r['tool']}"
        out[f"{key} req_per_s"] = r["requests_per_s"]
        out[f"{key} p99_ms"] = r["latency"].get("p99_ms")
        out[f"{key} server_cpu_ms"] = r["server_cpu_ms_per_call"]
    for r in result["history"]:
        out[f"GetHistory(50) c={r['concurrency']} {r['tool']} req_per_s"] = r["requests_per_s"]
    out["send_best_c32 req_per_s"] = send32["requests_per_s"] if send32 else None
    out["history_best req_per_s"] = hist["requests_per_s"] if hist else None
    return out


def figures(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 14's figures: measured, target, whether met, and the ratio to the bare-NATS floor."""
    d, f, k = result["delivery"], result["floor"], result["knee"]
    send32 = _best(result["send"], 32)
    hist = _best(result["history"])
    rows: list[dict[str, Any]] = []

    def add(
        key: str,
        label: str,
        measured: float | None,
        floor: float | None,
        unit: str,
        where: str = "",
    ) -> None:
        limit, op = TARGETS[key]
        met = None if measured is None else (measured <= limit if op == "<=" else measured >= limit)
        rows.append(
            {
                "key": key,
                "figure": label,
                "measured": measured,
                "unit": unit,
                "target": f"{op} {limit:g}",
                "met": met,
                "floor": floor,
                "ratio_to_floor": ratio(measured, floor),
                "where": where,
            }
        )

    add(
        "cpu_per_1000_deliveries",
        "server CPU per 1,000 deliveries/s (% of a core, all processes)",
        d["server_cpu_per_1000_deliveries_per_s"],
        f["nats_cpu_per_1000_deliveries_per_s"],
        "%",
        f"at {d['deliveries_per_s']:g} deliveries/s",
    )
    knee_rate = k["deliveries_per_s"]
    if knee_rate is None and k["steps"]:
        knee_rate = 0.0  # the first step already failed: below the lowest rate tried
    add(
        "knee_deliveries_per_s",
        "most deliveries/s with p99 <= 50 ms, no errors, no backlog",
        knee_rate,
        None,
        "/s",
        f"failed at {k['failed_at']:g}: {k['failed_because']}" if k["failed_at"] else "",
    )
    unsustained = f"not sustained: {d['why_not']}" if d.get("why_not") else ""
    add(
        "delivery_p50_ms",
        f"delivery p50 at {d['planned_deliveries_per_s']:g} deliveries/s",
        d["latency"].get("p50_ms"),
        f["latency"].get("p50_ms"),
        "ms",
        unsustained,
    )
    add(
        "delivery_p99_ms",
        f"delivery p99 at {d['planned_deliveries_per_s']:g} deliveries/s",
        d["latency"].get("p99_ms"),
        f["latency"].get("p99_ms"),
        "ms",
        unsustained,
    )
    tool = f" ({send32['tool']})" if send32 else ""
    add(
        "send_rps_c32",
        f"SendMessage requests/s at concurrency 32{tool}",
        send32["requests_per_s"] if send32 else None,
        None,
        "/s",
    )
    add(
        "send_p99_ms_c32",
        f"SendMessage p99 at concurrency 32{tool}",
        send32["latency"].get("p99_ms") if send32 else None,
        None,
        "ms",
    )
    add(
        "send_cpu_ms",
        f"server CPU per SendMessage, all processes{tool}",
        send32["server_cpu_ms_per_call"] if send32 else None,
        None,
        "ms",
    )
    add(
        "history_rps",
        "GetHistory(50) requests/s (best concurrency)"
        + (f" ({hist['tool']}, c={hist['concurrency']})" if hist else ""),
        hist["requests_per_s"] if hist else None,
        None,
        "/s",
    )
    add(
        "rss_kib_per_stream",
        "RSS per live stream (notification + edge)",
        result["rss"]["kib_per_stream"],
        None,
        "KiB",
    )
    return rows


def per_process_rows(result: dict[str, Any]) -> list[tuple[str, float, float | None]]:
    """(process, % of a core, % per 1,000 deliveries/s) at the delivery measurement, busiest first."""
    d = result["delivery"]
    kinds = result.get("process_kinds") or {}
    rows = [
        (f"{n} ({kinds[n]})" if n in kinds else n, p, d["cpu_per_1000_by_process"].get(n))
        for n, p in d["cpu"]["servers"].items()
    ]
    rows.append(
        (
            "TOTAL servers",
            d["cpu"]["server_percent_of_one_core"],
            d["server_cpu_per_1000_deliveries_per_s"],
        )
    )
    for n, p in d["cpu"]["generators"].items():
        rows.append((f"(load) {n}", p, per_1000(p, d["deliveries_per_s"])))
    return rows
