"""Command line of the fault suite: arguments, results directory, the run, the table.

``python -m tools.chaos --topology dev|ha [--stores production] [--schedule full|short]
[--seed N] [--rate R]`` runs once and writes ``chaos-results/<timestamp>-<topology>/``:
``recording.json`` (everything recorded), ``report.json`` (the checker's counts),
``table.md``, ``chaos.log`` and the mesh's own logs under ``mesh/``. ``--recheck
FILE`` checks a saved recording again without a mesh. The exit status is 1 when
anything was lost, duplicated, out of order or undelivered without notice (or the
run failed), 0 when the run was clean.

Example:
    >>> parse_args(["--seed", "7"]).seed
    7
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import signal
import sys
from pathlib import Path

from rich.console import Console

from mesh.harness.paths import repo_root
from tools.chaos.checker import Report, check
from tools.chaos.recording import Recording
from tools.chaos.report import markdown, print_table
from tools.chaos.runner import RunOptions, run
from tools.chaos.schedule import SCHEDULES
from tools.chaos.workload import WorkloadConfig

__all__ = ["main", "parse_args", "write_results"]

logger = logging.getLogger("tools.chaos")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.chaos",
        description="Fault suite: workload through the edges, faults one at a time, a checker.",
    )
    parser.add_argument("--topology", default="dev", help="built-in name or file (default dev)")
    parser.add_argument(
        "--stores",
        choices=["embedded", "production"],
        default=None,
        help="override the topology's stores (production: Cassandra + MongoDB wire)",
    )
    parser.add_argument("--schedule", choices=SCHEDULES, default="full")
    parser.add_argument(
        "--only",
        default="",
        metavar="ACTION[,ACTION]",
        help="run only the baseline and these actions of the schedule (e.g. kill-nats,kill)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of every random choice")
    parser.add_argument("--rate", type=float, default=30.0, help="messages/s, all senders (30)")
    parser.add_argument("--senders", type=int, default=2, help="senders per region (2)")
    parser.add_argument("--subscribers", type=int, default=2, help="subscribers per region (2)")
    parser.add_argument("--channels", type=int, default=3, help="shared channels (3)")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    parser.add_argument(
        "--recheck",
        type=Path,
        default=None,
        metavar="RECORDING",
        help="check a saved recording.json again (no mesh) and print its table",
    )
    return parser.parse_args(argv)


def write_results(out: Path, rec: Recording, report: Report) -> None:
    """Writes ``recording.json``, ``report.json`` and ``table.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rec.save(out / "recording.json")
    data = {
        "topology": rec.topology,
        "started_at": rec.started_at,
        "params": rec.params,
        "settle": rec.settle,
        "skipped_ticks": rec.skipped_ticks,
        **report.to_json(),
    }
    (out / "report.json").write_text(json.dumps(data, indent=2))
    (out / "table.md").write_text(markdown(rec, report))


def _results_dir(args: argparse.Namespace, topology: str) -> Path:
    if args.out is not None:
        out: Path = args.out.resolve()
    else:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
        out = repo_root() / "chaos-results" / f"{stamp}-{Path(topology).stem}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=200)
    if args.recheck is not None:
        rec = Recording.load(args.recheck)
        report = check(rec)
        print_table(console, rec, report)
        return 0 if report.clean else 1
    out = _results_dir(args, args.topology)
    handler = logging.FileHandler(out / "chaos.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    options = RunOptions(
        topology=args.topology,
        stores=args.stores,
        schedule=args.schedule,
        only=tuple(a for a in args.only.split(",") if a),
        workload=WorkloadConfig(
            rate=args.rate,
            senders_per_region=args.senders,
            subscribers_per_region=args.subscribers,
            channels=args.channels,
            seed=args.seed,
        ),
    )
    console.print(f"[bold]chatmesh chaos[/bold] ({args.topology}, {args.schedule}) -> {out}")

    def progress(line: str) -> None:
        logger.info("%s", line)
        console.print(line, highlight=False)

    async def runner() -> tuple[Recording, Report]:
        task = asyncio.current_task()
        assert task is not None
        # SIGTERM ends the run like Ctrl-C: cancel, then every finally stops its processes.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await run(options, out, progress)

    try:
        rec, report = asyncio.run(runner())
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[red]interrupted[/red]: every process this run started has been stopped")
        return 130
    except Exception as exc:  # reported, with the log's path
        logger.exception("chaos run failed")
        console.print(
            f"[red]chaos run failed[/red]: {type(exc).__name__}: {exc} (see {out}/chaos.log)"
        )
        return 1
    write_results(out, rec, report)
    print_table(console, rec, report)
    console.print(f"results: {out}")
    return 0 if report.clean else 1
