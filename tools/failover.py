"""Measures how long writes stay unavailable after a kill -9: ``python -m tools.failover``.

Starts a mesh as ``chatmesh up`` does (``--topology``, ``--stores``), sends steadily
through every region's edge (open loop, ``--rate`` msg/s per region, a retrying
client with full-jitter backoff and one ``client_msg_id`` per send), kills a process
as a crash would (SIGKILL, the harness not told; its watchdog restarts it), and
reports per region, for each of ``--repeat`` kills:

* ``first_write_s``: from the kill to the acknowledgement of the first send *issued
  after* the kill (it can only have been served by a live writer);
* ``longest_gap_s``: the longest time without any acknowledgement around the kill;
* ``failed``: sends that gave up (their budget spent).

Targets: ``command`` (the lease holder on ``ha``, else the only Command Service),
``fanout``, a service name (``worker-us-east``), or a NATS node (``nats-us-east-1``).
Figures are printed and written as JSON (``--out``); nothing is asserted.

Example:
    ``python -m tools.failover --stores production --kill command --repeat 3``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mesh.bus.lease import LEASE_BUCKET
from mesh.client import ChatClient, RetryPolicy
from mesh.core.auth import KeyDirectory, mint
from mesh.harness.daemon import default_hooks
from mesh.harness.process import Supervised
from mesh.harness.supervisor import Mesh
from mesh.topology import load

__all__ = ["main"]

logger = logging.getLogger("tools.failover")

RETRYING = RetryPolicy(max_attempts=None, budget=60, attempt_timeout=10, max_backoff=1.0)


@dataclass
class _Sends:
    issued: list[float] = field(default_factory=list)
    acked: list[tuple[float, float]] = field(default_factory=list)
    """(issued, acknowledged)."""
    failed: int = 0


async def _target(mesh: Mesh, name: str) -> Supervised:
    primary = mesh.topology.primary
    if name in ("command", "fanout"):
        if mesh.topology.region(primary).write_instances > 1:
            nc = await mesh.nats_client(primary, user="admin")
            try:
                entry = await (await nc.jetstream().key_value(LEASE_BUCKET)).get(name)
            finally:
                await nc.close()
            index = (entry.value or b"").decode().split("/", 1)[0].rsplit("-", 1)[1]
            name = f"{name}-{primary}" + ("" if index == "1" else f"-{index}")
        else:
            name = f"{name}-{primary}"
    if name.startswith("nats-"):
        for server in mesh.infrastructure():
            if server.name == name:
                return server
        raise SystemExit(f"no NATS node {name}")
    svc: Supervised = mesh.services[name]
    return svc


async def _sender(
    client: ChatClient, channel: str, rate: float, sends: _Sends, stop: asyncio.Event
) -> None:
    tasks: set[asyncio.Task[None]] = set()

    async def one(n: int) -> None:
        issued = time.monotonic()
        sends.issued.append(issued)
        try:
            await client.send_message(channel, f"failover #{n}")
            sends.acked.append((issued, time.monotonic()))
        except Exception:  # noqa: BLE001 - counted
            sends.failed += 1

    n = 0
    while not stop.is_set():
        task = asyncio.create_task(one(n))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*tasks)


def _figures(sends: _Sends, killed_at: float, until: float) -> dict[str, Any]:
    after = [acked for issued, acked in sends.acked if issued > killed_at and acked <= until]
    acks = sorted(a for _, a in sends.acked if killed_at - 5 <= a <= until)
    gaps = [b - a for a, b in itertools.pairwise(acks) if b > killed_at]
    return {
        "first_write_s": round(min(after) - killed_at, 2) if after else None,
        "longest_gap_s": round(max(gaps), 2) if gaps else None,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Starts the mesh, runs the kills, returns the figures."""
    topology = load(args.topology)
    if args.stores:
        topology = replace(topology, stores=replace(topology.stores, backend=args.stores))
    if args.write_instances:
        regions = tuple(
            replace(r, write_instances=args.write_instances) if r.name == topology.primary else r
            for r in topology.regions
        )
        topology = replace(topology, regions=regions)
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="failover-"))
    results: dict[str, Any] = {
        "topology": topology.name,
        "stores": topology.stores.backend,
        "write_instances": topology.region(topology.primary).write_instances,
        "kill": args.kill,
        "rate_per_region": args.rate,
        "runs": [],
    }
    async with Mesh(topology, run_dir, hooks=default_hooks(topology.stores.backend)) as mesh:
        keys = KeyDirectory(run_dir / "keys")
        clients = {
            r: ChatClient.from_edge(
                mesh.endpoints[r]["edge"], token=mint(keys, f"fo-{r}"), retry=RETRYING
            )
            for r in topology.region_names
        }
        try:
            primary = topology.primary
            created = await clients[primary].create_channel(
                "failover", [f"fo-{r}" for r in topology.region_names]
            )
            channel = created.channel.channel_id
            for c in clients.values():  # every region knows the channel before sending
                for _ in range(300):
                    try:
                        await c.get_channel(channel)
                        break
                    except Exception:  # noqa: BLE001 - not replicated yet
                        await asyncio.sleep(0.1)
            sends = {r: _Sends() for r in clients}
            stop = asyncio.Event()
            senders = [
                asyncio.create_task(_sender(c, channel, args.rate, sends[r], stop))
                for r, c in clients.items()
            ]
            await asyncio.sleep(args.warmup)
            for i in range(args.repeat):
                target = await _target(mesh, args.kill)
                before = {r: s.failed for r, s in sends.items()}
                killed_at = time.monotonic()
                target.process.signal(signal.SIGKILL)
                await asyncio.sleep(args.observe)
                until = time.monotonic()
                run_figures = {
                    r: {**_figures(s, killed_at, until), "failed": s.failed - before[r]}
                    for r, s in sends.items()
                }
                results["runs"].append({"target": target.name, "regions": run_figures})
                print(f"kill {i + 1}/{args.repeat} {target.name}: {json.dumps(run_figures)}",
                      flush=True)  # fmt: skip
            stop.set()
            await asyncio.gather(*senders)
        finally:
            for c in clients.values():
                await c.close()
    firsts = [
        f["first_write_s"]
        for run_ in results["runs"]
        for f in run_["regions"].values()
        if f["first_write_s"] is not None
    ]
    if firsts:
        results["first_write_s"] = {"median": statistics.median(firsts), "max": max(firsts)}
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.failover", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--topology", default="dev")
    parser.add_argument("--stores", choices=["embedded", "production"], default=None)
    parser.add_argument(
        "--kill", default="command", help="command, fanout, a service or nats-<node>"
    )
    parser.add_argument(
        "--write-instances",
        type=int,
        choices=[1, 2],
        default=None,
        help="Command/Fan-Out instances in the primary (2: active/standby, ADR-019)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rate", type=float, default=5.0, help="sends per second per region (5)")
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="seconds of traffic before the first kill"
    )
    parser.add_argument("--observe", type=float, default=20.0, help="seconds after each kill")
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the measurement; prints (and with ``--out`` writes) the figures as JSON."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    results = asyncio.run(run(args))
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
