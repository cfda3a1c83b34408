"""The background supervisor behind ``chatmesh up``.

``python -m mesh.harness.daemon --topology dev --run-dir .run`` starts the whole mesh
(infrastructure, stores, services, edges), writes ``state.json`` when ready and
keeps everything running until SIGTERM/SIGINT, then stops every child. Its pid
is in ``supervisor.pid``; ``chatmesh down`` signals it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

from mesh.harness.edges import edges_hook
from mesh.harness.services import ServiceSettings, services_hook
from mesh.harness.supervisor import Mesh, ServiceHook
from mesh.topology import load

__all__ = ["PID_FILE", "default_hooks", "main"]

logger = logging.getLogger("mesh.harness.daemon")

PID_FILE = "supervisor.pid"
FAILED_FILE = "failed.json"


def default_hooks(stores: str, settings: ServiceSettings | None = None) -> list[ServiceHook]:
    """The hooks ``chatmesh up`` runs after the infrastructure: stores, services, edges."""
    hooks: list[ServiceHook] = []
    if stores == "production":
        from mesh.harness.production_stores import production_stores_hook

        hooks.append(production_stores_hook())
    hooks.append(services_hook(settings))
    hooks.append(edges_hook())
    return hooks


async def run(topology_source: str, run_dir: Path, stores: str | None) -> int:
    """Starts the mesh and serves until signalled. Returns the exit status."""
    topology = load(topology_source)
    if stores:
        from dataclasses import replace

        topology = replace(topology, stores=replace(topology.stores, backend=stores))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    mesh = Mesh(topology, run_dir, hooks=default_hooks(topology.stores.backend))
    try:
        starting = asyncio.create_task(mesh.start())
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stopping in done:
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
            return 1
        starting.result()
        logger.info("mesh ready in %.1fs; serving until signalled", mesh.ready_seconds or 0)
        await stop.wait()
        return 0
    except BaseException as exc:
        logger.exception("mesh failed to start")
        (run_dir / FAILED_FILE).write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    finally:
        await mesh.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the daemon process."""
    parser = argparse.ArgumentParser(prog="python -m mesh.harness.daemon")
    parser.add_argument("--topology", default="dev")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--stores", choices=["embedded", "production"], default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    run_dir: Path = args.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FAILED_FILE).unlink(missing_ok=True)
    (run_dir / PID_FILE).write_text(str(os.getpid()))
    try:
        return asyncio.run(run(args.topology, run_dir, args.stores))
    finally:
        (run_dir / PID_FILE).unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
