"""``python -m services.worker [CONFIG.json]``: runs a worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

from mesh.bus.connection import connect
from mesh.bus.eventbus import PullConsumer
from mesh.bus.natsbus import NatsBus
from mesh.bus.replication import ReplicationMonitor
from mesh.bus.sourcing import SourceMonitor
from mesh.bus.subjects import EVENTS_STREAM, WRITES_EVERY_REGION
from mesh.core import config as config_mod, loop
from mesh.rpc.server import GrpcServer, configure_logging
from mesh.stores import check_write_mode, open_history, open_metadata
from services.worker.config import WorkerConfig
from services.worker.service import Projector

logger = logging.getLogger("services.worker")


async def main(cfg: WorkerConfig) -> None:
    check_write_mode(cfg.writes, history_store=cfg.history_store, metadata_store=cfg.metadata_store)
    every_region = cfg.writes == WRITES_EVERY_REGION
    if every_region and not cfg.metadata_store:
        # The region's Command Service authorizes against channels, members and
        # messages written in other regions: only this worker brings them (ADR-026).
        raise config_mod.ConfigError(
            "writes = 'every-region' needs metadata_store: the worker projects every "
            "region's events into the region's metadata (ADR-026)"
        )
    nc = await connect(list(cfg.nats_servers), name=f"worker-{cfg.instance_id}", user=cfg.nats_user,
                       password=cfg.nats_password, tls_ca=cfg.nats_tls_ca)  # fmt: skip
    history = await open_history(cfg.history_store)
    metadata = await open_metadata(cfg.metadata_store) if cfg.metadata_store else None
    projector = Projector(history, metadata)
    bus = NatsBus(nc)
    # A secondary's mirror may hold a hole where EVENTS has messages: those are
    # read from EVENTS's leader (across the gateway) before anything after them.
    # Every-region mode: ALL_<REGION> sources every region's stream; there is no
    # EVENTS leader to read a hole from (the history applies per origin and its
    # positions stop below a hole; SourceMonitor keeps the sources moving).
    origin = EVENTS_STREAM if cfg.stream != EVENTS_STREAM and not every_region else None
    consumer = PullConsumer(
        bus, bus, cfg.stream, cfg.consumer_name, projector.handle, batch=cfg.batch, origin=origin
    )
    await consumer.ensure()
    # Health and metrics only: a worker has no API of its own.
    server = GrpcServer(cfg, "worker", authenticated=False)

    async def consume() -> None:
        while True:
            try:
                await consumer.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("consumer failed; restarting it")
                await asyncio.sleep(0.5)

    task = asyncio.create_task(consume())
    tasks = [task]
    if every_region and cfg.replication_interval > 0:
        # The region's ALL_ stream: its sources are kept moving after a cut (ADR-026).
        sources = SourceMonitor(nc, cfg.stream, interval=cfg.replication_interval)
        tasks.append(asyncio.create_task(sources.run(), name="source-monitor"))
    elif cfg.stream != EVENTS_STREAM and cfg.replication_interval > 0:
        # A secondary's worker reads the region's mirror: it also watches the mirror.
        monitor = ReplicationMonitor(nc, cfg.stream, interval=cfg.replication_interval)
        tasks.append(asyncio.create_task(monitor.run(), name="replication-monitor"))

    async def close() -> None:
        consumer.stop()
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await nc.drain()
        await history.close()
        if metadata is not None:
            await metadata.close()

    server.on_shutdown(close)
    await server.run_until_signal()


if __name__ == "__main__":
    cfg = config_mod.load(WorkerConfig, sys.argv[1] if len(sys.argv) > 1 else None)
    configure_logging(cfg.log_level, "worker")
    loop.run(main(cfg))
