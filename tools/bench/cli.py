"""Command line of the benchmark: arguments, results directory, the run, the summary.

Example:
    >>> parse_args(["--quick"]).quick
    True
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from mesh.harness.paths import repo_root
from tools.bench.plan import (
    ALL_SCENARIOS,
    FULL,
    FULL_SINGLE,
    QUICK,
    QUICK_SINGLE,
    SCENARIOS,
    SINGLE,
)
from tools.bench.procstat import CpuSampler, machine_info
from tools.bench.report import print_summary, targets, write_docs

__all__ = ["main", "parse_args"]

logger = logging.getLogger("tools.bench")

DEFAULT_TOPOLOGIES = ("dev", "three-regions")
FIRST_TOPOLOGY_ONLY = ("throughput", "routing", "flood")
"""Scenarios that measure the primary's processes (the same in every topology): first topology only."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench",
        description="Measure ADR-010's targets on a running chatmesh mesh (emulated WAN on).",
    )
    parser.add_argument(
        "--scenarios",
        default=None,
        help=f"comma-separated subset of {','.join(ALL_SCENARIOS)} (default: all; --quick: "
        f"all but {SINGLE})",
    )
    parser.add_argument(
        "--topology",
        action="append",
        default=None,
        help="topology to run (repeatable; default: dev and three-regions for the multi-region "
        f"scenarios, single for {SINGLE}; --quick: dev)",
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (< 60 s, dev only)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results directory (default: bench-results/<timestamp>)",
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of every random choice (default 1)"
    )
    parser.add_argument(
        "--stores",
        choices=["auto", "embedded", "production"],
        default="auto",
        help="auto: also measure history on Cassandra if mesh/production_stores.py "
        "exists; embedded: never; production: require it",
    )
    parser.add_argument(
        "--all-topologies",
        action="store_true",
        help="run throughput and routing on every topology, not only the first",
    )
    parser.add_argument(
        "--docs",
        type=Path,
        default=None,
        help="markdown file whose generated block is rewritten (default: "
        "docs/benchmarks.md for full runs, none for --quick)",
    )
    parser.add_argument(
        "--entry",
        choices=["auto", "edge", "direct"],
        default="auto",
        help="how clients reach a region: its edge (auto: when the mesh has one) "
        "or the services' own addresses (to measure what the edge costs)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="on a shared machine: first wait up to SECONDS until it is < 10%% busy",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not touch any docs file")
    return parser.parse_args(argv)


def _results_dir(args: argparse.Namespace, stamp: str) -> Path:
    if args.out is not None:
        out: Path = args.out.resolve()
        if out.exists() and any(out.iterdir()):
            raise SystemExit(f"--out {out} is not empty: every run gets a fresh directory")
        out.mkdir(parents=True, exist_ok=True)
        return out
    base = repo_root() / "bench-results"
    out = base / stamp
    n = 1
    while out.exists():
        n += 1
        out = base / f"{stamp}-{n}"
    out.mkdir(parents=True)
    latest = base / "latest"
    tmp = base / f".latest-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(out.name)
    os.replace(tmp, latest)
    return out


def _loadavg() -> str:
    """The 1/5/15-minute load averages (``/proc/loadavg``), e.g. ``1.98 0.70 0.26``."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


async def _run(
    args: argparse.Namespace, console: Console, out: Path, results: dict[str, Any]
) -> None:
    from tools.bench.runner import run_production_history, run_topology, versions

    plan = QUICK if args.quick else FULL
    single_plan = QUICK_SINGLE if args.quick else FULL_SINGLE
    default = SCENARIOS if args.quick else ALL_SCENARIOS
    chosen_text = args.scenarios if args.scenarios is not None else ",".join(default)
    selected = [s.strip() for s in chosen_text.split(",") if s.strip()]
    unknown = [s for s in selected if s not in ALL_SCENARIOS]
    if unknown:
        raise SystemExit(
            f"unknown scenario(s): {', '.join(unknown)} (choose from {', '.join(ALL_SCENARIOS)})"
        )
    selected = [s for s in ALL_SCENARIOS if s in selected]  # canonical order
    multi = [s for s in selected if s != SINGLE]
    runs: list[tuple[str, list[str]]]
    if args.topology:
        runs = [(t, list(selected)) for t in args.topology]
    else:
        runs = (
            [(t, multi) for t in (["dev"] if args.quick else DEFAULT_TOPOLOGIES)] if multi else []
        )
        if SINGLE in selected:
            runs.append(("single", [SINGLE]))
    topologies = [t for t, _ in runs]
    notes: list[str] = results["notes"]
    # The machine may be shared: measure what else runs before starting anything.
    idle = CpuSampler({})
    deadline = time.monotonic() + args.wait_quiet
    while True:
        before = idle.snapshot()
        await asyncio.sleep(2.0)
        busy = idle.usage(before, idle.snapshot()).machine_percent
        if busy < 10 or time.monotonic() >= deadline:
            break
        console.print(f"waiting for a quiet machine: {busy:.0f}% busy")
    results["meta"]["machine_busy_percent_before_start"] = busy
    if busy >= 10:
        note = (
            f"the machine was already {busy:.0f}% busy before the benchmark started (other "
            "processes); every number of this run is inflated by that load"
        )
        notes.append(note)
        console.print(f"[yellow]NOTE[/yellow] {note}")
    results["meta"]["versions"] = versions()
    results["meta"]["plan"] = plan.__dict__ | {"throughput_rates": list(plan.throughput_rates)}
    if SINGLE in selected:
        results["meta"]["single_plan"] = single_plan.__dict__ | {
            "knee_steps": list(single_plan.knee_steps),
            "concurrencies": list(single_plan.concurrencies),
        }
    results["meta"]["topologies"] = topologies
    results["meta"]["scenarios"] = selected
    path = out / "results.json"

    def save() -> None:
        results["targets"] = targets(results)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_clean(results), indent=2))
        os.replace(tmp, path)

    if args.quick:
        notes.append(
            f"--quick: smoke sizes ({plan.streams} streams, {plan.rate:g} msg/s, "
            f"{plan.routing_users:,} routing users), topologies {', '.join(topologies)}"
        )
    for i, (name, wanted) in enumerate(runs):
        chosen = [
            s for s in wanted if i == 0 or args.all_topologies or s not in FIRST_TOPOLOGY_ONLY
        ]
        skipped = [s for s in wanted if s not in chosen]
        if skipped:
            notes.append(
                f"[{name}] {', '.join(skipped)} run on {topologies[0]} only: they measure the "
                "primary's processes, which every topology shares (--all-topologies to repeat)"
            )
        results["topologies"][name] = {}
        await run_topology(
            name,
            plan=plan,
            selected=chosen,
            out=out,
            console=console,
            notes=notes,
            seed=args.seed,
            result=results["topologies"][name],
            save=save,
            single_plan=single_plan,
        )
        save()
    if "history" in selected:
        if args.quick and args.stores == "auto":
            notes.append(
                "[production] history on Cassandra skipped: --quick (starting Cassandra takes minutes)"
            )
            results["production"] = {"status": "skipped", "reason": "--quick"}
        elif args.stores == "embedded":
            results["production"] = {"status": "skipped", "reason": "--stores embedded"}
        else:
            try:
                results["production"] = await run_production_history(
                    plan=plan,
                    out=out,
                    console=console,
                    notes=notes,
                    seed=args.seed,
                    required=args.stores == "production",
                    entry=args.entry,
                )
            except Exception as exc:
                if args.stores == "production":
                    raise
                # The production-stores harness is someone else's moving part:
                # its failure must not throw away the embedded results.
                logger.exception("history on production stores failed")
                reason = f"failed: {type(exc).__name__}: {exc}"[:400]
                notes.append(f"[production] history on Cassandra {reason}")
                console.print(f"[yellow]NOTE[/yellow] history on Cassandra {reason}")
                results["production"] = {"status": "failed", "reason": reason}
        save()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (130 when interrupted)."""
    args = parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console = Console(width=150)  # logs and CI: wide enough for the tables
    started = dt.datetime.now(dt.UTC)
    out = _results_dir(args, started.strftime("%Y%m%d-%H%M%S"))
    (out / "logs").mkdir(exist_ok=True)
    handler = logging.FileHandler(out / "logs" / "bench.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    results: dict[str, Any] = {
        "meta": {
            "started_at": started.isoformat(timespec="seconds"),
            "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
            "results_dir": os.path.relpath(out, repo_root())
            if out.is_relative_to(repo_root())
            else str(out),
            "seed": args.seed,
            "quick": args.quick,
            "entry": args.entry,
            "machine": machine_info(),
            "loadavg_before": _loadavg(),
            "clock": "time.monotonic_ns (CLOCK_MONOTONIC, system-wide on Linux)",
        },
        "primary": "us-east",
        "topologies": {},
        "notes": [],
    }
    console.print(f"[bold]chatmesh benchmark[/bold] -> {out}")
    t0 = time.monotonic()
    status = 0

    async def runner() -> None:
        task = asyncio.current_task()
        assert task is not None
        # SIGTERM ends the run like Ctrl-C: cancel, then every finally stops its processes.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await _run(args, console, out, results)

    try:
        asyncio.run(runner())
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[red]interrupted[/red]: every process this run started has been stopped")
        results["notes"].append("run interrupted: results are partial")
        status = 130
    except SystemExit:
        raise
    except Exception as exc:  # reported; partial results are still written
        logger.exception("benchmark failed")
        console.print(f"[red]benchmark failed[/red]: {type(exc).__name__}: {exc}")
        results["notes"].append(f"run failed: {type(exc).__name__}: {exc}")
        status = 1
    results["meta"]["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["meta"]["duration_s"] = round(time.monotonic() - t0, 1)
    results["meta"]["loadavg_after"] = _loadavg()
    if results["topologies"]:
        primaries = {t.get("topology", {}).get("primary") for t in results["topologies"].values()}
        results["primary"] = next(iter(p for p in primaries if p), "us-east")
    results["targets"] = targets(results)
    (out / "results.json").write_text(json.dumps(_clean(results), indent=2))
    print_summary(console, results)
    docs = (
        None
        if args.no_docs
        else (args.docs or (None if args.quick else repo_root() / "docs" / "benchmarks.md"))
    )
    if docs is not None and status == 0:
        write_docs(docs, _clean(results))
        console.print(f"wrote {docs}")
    console.print(f"results: {out / 'results.json'} ({results['meta']['duration_s']:.0f} s)")
    return status
