"""``python -m services.command [CONFIG.json]``: runs the Command Service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sys

from grpc_health.v1 import health_pb2

from chatmesh.v1 import command_service_pb2_grpc as pb_grpc
from mesh.bus.connection import connect
from mesh.bus.lease import Lease, kv_lease_store
from mesh.bus.natsbus import NatsBus
from mesh.core import config as config_mod, loop
from mesh.core.ratelimit import RateLimiter
from mesh.rpc.interceptors.metrics import RATE_LIMITED_TOTAL
from mesh.rpc.server import GrpcServer, configure_logging
from mesh.stores import open_command, open_metadata
from services.command.config import CommandConfig
from services.command.server import CommandServicer
from services.command.service import Commands

logger = logging.getLogger("services.command")

SERVICE_NAME = "chatmesh.v1.CommandService"
"""The health service name the edge checks: SERVING only while this instance writes."""


async def main(cfg: CommandConfig) -> None:
    nc = await connect(list(cfg.nats_servers), name=f"command-{cfg.instance_id}", user=cfg.nats_user,
                       password=cfg.nats_password, tls_ca=cfg.nats_tls_ca)  # fmt: skip
    command_store = await open_command(cfg.command_store)
    metadata = await open_metadata(cfg.metadata_store, primary_reads=True)
    bus = NatsBus(nc)
    lease: Lease | None = None
    if cfg.lease_ttl > 0:
        holder = f"command-{cfg.instance_id or cfg.region}/{os.getpid()}-{secrets.token_hex(3)}"
        lease = Lease(await kv_lease_store(nc), "command", holder, ttl=cfg.lease_ttl)
    # TODO(data): the every-region mode (ADR-026) publishes to cfg.events_stream
    # (EVENTS_<REGION>) on Subjects.origin_channel_events/origin_user_events; its
    # user (command-<region>) may publish nothing else, so writes fail until then.
    commands = Commands(
        bus=bus,
        events=bus,
        jetstream=bus,
        command_store=command_store,
        metadata=metadata,
        region=cfg.region,
        publish_timeout=cfg.publish_timeout,
        typing_ttl=cfg.typing_ttl,
        max_initial_members=cfg.max_initial_members,
        fence=lease.held if lease is not None else None,
        max_inflight=cfg.max_inflight,
        limiter=RateLimiter(
            cfg.limits(),
            on_refusal=lambda action: RATE_LIMITED_TOTAL.labels("command", action).inc(),
        ),
    )
    # Serve at once, shedding (UNAVAILABLE + RetryInfo) until the log's unpublished
    # entries are out: a client retries on a quick answer instead of waiting for a
    # connection that is refused or a call that times out.
    commands.catching_up = True
    server = GrpcServer(cfg, "command")
    server.add(pb_grpc.add_CommandServiceServicer_to_server, CommandServicer(commands, cfg.region),
               "chatmesh.v1.CommandService")  # fmt: skip

    async def set_serving(serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await server.health.set(SERVICE_NAME, status)

    async def take_over() -> None:
        try:
            repaired = await commands.take_over()
        except Exception as exc:  # noqa: BLE001 - each command flushes its channel first anyway
            logger.warning("republishing pending events failed (%s); the republisher retries", exc)
        else:
            if repaired:
                logger.info("republished pending events of %d channel(s)", repaired)
        await set_serving(True)

    async def writer() -> None:
        """The periodic republisher, and with a lease its renewals and hand-overs."""
        await server.serving.wait()
        if lease is None:
            await take_over()
        else:
            commands.catching_up = False  # the fence alone refuses while on standby
            await set_serving(False)

            async def lost() -> None:
                await set_serving(False)

            lease_task = asyncio.create_task(lease.run(on_acquired=take_over, on_lost=lost))
        try:
            while True:
                await asyncio.sleep(cfg.republish_interval)
                if lease is not None and not lease.held():
                    continue
                try:
                    await commands.republish_pending()
                except Exception as exc:  # noqa: BLE001 - retried next round
                    logger.warning("republish failed: %s", exc)
        finally:
            if lease is not None:
                lease_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lease_task

    task = asyncio.create_task(writer())

    async def drain() -> None:
        # Stop renewing first (or the next round would take the released key again),
        # then release: the standby takes over without waiting out the ttl.
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if lease is not None:
            await lease.release()

    async def close() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await nc.drain()
        await command_store.close()
        await metadata.close()

    server.on_drain(drain)
    server.on_shutdown(close)
    await server.run_until_signal()


if __name__ == "__main__":
    cfg = config_mod.load(CommandConfig, sys.argv[1] if len(sys.argv) > 1 else None)
    configure_logging(cfg.log_level, "command")
    loop.run(main(cfg))
