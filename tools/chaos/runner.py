"""One chaos run: start a mesh, run the workload through the schedule, settle, check.

:func:`run` is what ``make chaos`` (``python -m tools.chaos``) and the short
version in ``make test`` both call, so the test measures exactly what the tool
reports. The mesh is the one ``chatmesh up`` starts (the same hooks and default
service settings: the notification service's real 30 s catch-up timeout, real
heartbeats), in a run directory of its own.

After the last step the senders stop, and the run waits (bounded) until every
region's history of every channel stops changing at the same last seq, and then
until every subscriber's stream has reached that seq or gone quiet. Only then are
the histories read and the recording handed to :func:`tools.chaos.checker.check`.

Example:
    >>> async def demo(tmp: Path) -> None:  # doctest: +SKIP
    ...     recording, report = await run(RunOptions(topology="dev", schedule="short"), tmp)
    ...     print(report.total.lost, report.clean)
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.core.auth import KeyDirectory, mint
from mesh.harness.daemon import default_hooks
from mesh.harness.supervisor import Mesh
from mesh.topology import load
from tools.chaos.checker import Report, check
from tools.chaos.faults import run_step
from tools.chaos.recording import Recording
from tools.chaos.replication import MirrorWatch
from tools.chaos.schedule import Step, build
from tools.chaos.workload import Workload, WorkloadConfig

__all__ = ["RunOptions", "run", "settle"]

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RunOptions:
    """What to run."""

    topology: str = "dev"
    """A built-in topology name or a topology file."""
    stores: str | None = None
    """``embedded`` or ``production``; None: the topology's own."""
    schedule: str = "full"
    """``full`` or ``short`` (:func:`tools.chaos.schedule.build`)."""
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    steps: tuple[Step, ...] | None = None
    """An explicit schedule instead of ``schedule``."""
    only: tuple[str, ...] = ()
    """Keep only the baseline and the steps of these actions (``kill-nats`` ...); empty: all."""
    history_settle_timeout: float = 180.0
    """Seconds to wait, after the senders stop, for every history to stop changing."""
    stream_settle_timeout: float = 60.0
    """Seconds to wait, after that, for every stream to reach the histories' last seq."""


async def run(
    options: RunOptions, out: Path, progress: Progress | None = None
) -> tuple[Recording, Report]:
    """Runs the suite once on a fresh mesh under ``out`` and checks it.

    Args:
        options: Topology, schedule, workload.
        out: Directory for the mesh's run directory (``mesh/``: logs, data).
        progress: Called with a line of text as the run goes.

    Returns:
        The recording and the checker's report.
    """
    say = progress or (lambda line: logger.info("%s", line))
    topology = load(options.topology)
    if options.stores:
        topology = dataclasses.replace(
            topology, stores=dataclasses.replace(topology.stores, backend=options.stores)
        )
    mesh = Mesh(topology, out / "mesh", hooks=default_hooks(topology.stores.backend))
    rec = Recording(
        topology=topology.name,
        regions=list(topology.region_names),
        primary=topology.primary,
        channels=[],
        params={
            "schedule": options.schedule if options.steps is None else "custom",
            "stores": topology.stores.backend,
            "workload": dataclasses.asdict(options.workload),
        },
    )
    say(f"starting the {topology.name} mesh ({topology.stores.backend} stores)")
    started = time.monotonic()
    async with mesh:
        say(f"mesh ready in {time.monotonic() - started:.1f}s")
        running = set(mesh.services) | set(mesh.processes)
        if options.steps is not None:
            steps = list(options.steps)
        else:
            steps = build(options.schedule, topology, running)
            if options.only:
                steps = [s for s in steps if s.action in ("baseline", *options.only)]
            left_out = [
                s.name
                for s in build(options.schedule, topology)
                if s not in steps and (not options.only or s.action in options.only)
            ]
            if left_out:
                rec.params["left_out"] = left_out
                say(f"left out (this mesh runs no such process): {', '.join(left_out)}")
        rec.params["steps"] = [dataclasses.asdict(s) for s in steps]
        keys = KeyDirectory(mesh.run_dir / "keys")
        rec.started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        rec.t0 = time.monotonic()
        edges = {r: mesh.endpoints[r]["edge"] for r in topology.region_names}
        workload = Workload(edges, lambda user: mint(keys, user), rec, options.workload)
        watch = MirrorWatch(mesh, workload.clock)
        await watch.start()

        def probes(since: float) -> dict[str, bool]:
            return {**workload.caught_up(since), **watch.caught_up(since)}

        try:
            await workload.setup()
            say(
                f"{len(rec.channels)} channels, {len(rec.subscribers)} subscribers; "
                f"traffic at {options.workload.rate:g} msg/s"
            )
            workload.start_traffic()
            for i, step in enumerate(steps):
                say(f"[{i + 1}/{len(steps)}] {step.name}")
                window = await run_step(mesh, step, i, workload.clock, probes)
                if rec.windows:
                    rec.windows[-1].until = window.start
                rec.windows.append(window)
                say(f"    {_describe(window.notes)}")
            await workload.stop_traffic()
            say(f"traffic stopped after {len(rec.sends)} sends; settling")
            rec.settle = await settle(workload, options)
            say(f"    {_describe(rec.settle)}")
            await workload.fetch_histories()
        finally:
            if rec.windows:
                rec.windows[-1].until = workload.clock()
            await watch.stop()
            rec.mirrors = watch.samples
            await workload.close()
    report = check(rec)
    return rec, report


def _describe(notes: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in notes.items()) or "-"


async def settle(workload: Workload, options: RunOptions) -> dict[str, Any]:
    """Waits (bounded) until the histories, then the streams, stop changing.

    Returns:
        How long each wait took and whether it ended because things went quiet.
    """
    clock = workload.clock
    rec = workload.rec
    acked: dict[str, int] = {}
    for s in rec.sends:
        if s.ok:
            acked[s.channel] = max(acked.get(s.channel, 0), s.seq)
    t0 = clock()
    previous: dict[str, dict[str, int]] | None = None
    stable = 0
    seqs: dict[str, dict[str, int]] = {}
    histories_quiet = False
    while clock() - t0 < options.history_settle_timeout:
        seqs = await workload.last_seqs()
        agreed = all(
            len({seqs[r][ch] for r in seqs}) == 1 and seqs[rec.primary][ch] >= acked.get(ch, 0)
            for ch in rec.channels
        )
        stable = stable + 1 if agreed and seqs == previous else 0
        if stable >= 2:
            histories_quiet = True
            break
        previous = seqs
        await asyncio.sleep(2.0)
    histories_s = clock() - t0
    t1 = clock()
    regions = workload.subscriber_regions()
    streams_quiet = False
    last_tops: dict[str, dict[str, int]] = {}
    quiet_since = clock()
    while clock() - t1 < options.stream_settle_timeout:
        tops = workload.stream_tops()
        if all(
            tops[who].get(ch, 0) >= seqs.get(region, {}).get(ch, 0)
            for who, region in regions.items()
            for ch in rec.channels
        ):
            streams_quiet = True
            break
        if tops != last_tops:
            last_tops, quiet_since = tops, clock()
        elif clock() - quiet_since > 15.0:
            break  # nothing arrived for a while: the rest is not coming
        await asyncio.sleep(0.5)
    return {
        "histories_s": round(histories_s, 1),
        "histories_agree": histories_quiet,
        "streams_s": round(clock() - t1, 1),
        "streams_reached_last_seq": streams_quiet,
        "last_seqs": seqs,
    }
