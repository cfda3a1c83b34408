"""``python -m services.command [CONFIG.json]``: runs the Command Service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

from chatmesh.v1 import command_service_pb2_grpc as pb_grpc
from mesh.bus.connection import connect
from mesh.bus.natsbus import NatsBus
from mesh.core import config as config_mod
from mesh.core.ratelimit import RateLimiter
from mesh.rpc.interceptors.metrics import RATE_LIMITED_TOTAL
from mesh.rpc.server import GrpcServer, configure_logging
from mesh.stores import open_command, open_metadata
from services.command.config import CommandConfig
from services.command.server import CommandServicer
from services.command.service import Commands

logger = logging.getLogger("services.command")


async def main(cfg: CommandConfig) -> None:
    nc = await connect(list(cfg.nats_servers), name=f"command-{cfg.instance_id}", user=cfg.nats_user,
                       password=cfg.nats_password)  # fmt: skip
    command_store = await open_command(cfg.command_store)
    metadata = await open_metadata(cfg.metadata_store, primary_reads=True)
    bus = NatsBus(nc)
    commands = Commands(
        bus=bus,
        events=bus,
        jetstream=bus,
        command_store=command_store,
        metadata=metadata,
        region=cfg.region,
        publish_timeout=cfg.publish_timeout,
        typing_ttl=cfg.typing_ttl,
        limiter=RateLimiter(
            cfg.limits(),
            on_refusal=lambda action: RATE_LIMITED_TOTAL.labels("command", action).inc(),
        ),
    )
    # Repair what a crash may have left half-done before taking new commands.
    repaired = await commands.republish_pending()
    if repaired:
        logger.info("republished pending events of %d channel(s)", repaired)

    async def republisher() -> None:
        while True:
            await asyncio.sleep(cfg.republish_interval)
            try:
                await commands.republish_pending()
            except Exception as exc:  # noqa: BLE001 - retried next round
                logger.warning("republish failed: %s", exc)

    server = GrpcServer(cfg, "command")
    server.add(pb_grpc.add_CommandServiceServicer_to_server, CommandServicer(commands, cfg.region),
               "chatmesh.v1.CommandService")  # fmt: skip
    task = asyncio.create_task(republisher())

    async def close() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await nc.drain()
        await command_store.close()
        await metadata.close()

    server.on_shutdown(close)
    await server.run_until_signal()


if __name__ == "__main__":
    cfg = config_mod.load(CommandConfig, sys.argv[1] if len(sys.argv) > 1 else None)
    configure_logging(cfg.log_level, "command")
    asyncio.run(main(cfg))
