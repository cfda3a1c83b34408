"""``python -m services.fanout [CONFIG.json]``: runs the Fan-Out Service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sys

from chatmesh.v1 import fanout_service_pb2_grpc as pb_grpc
from mesh.bus.connection import connect
from mesh.bus.lease import Lease, kv_lease_store
from mesh.bus.natsbus import NatsBus
from mesh.core import config as config_mod, loop
from mesh.core.identity import OPERATOR
from mesh.rpc.server import GrpcServer, configure_logging
from mesh.stores import check_write_mode, open_metadata
from services.fanout.config import FanoutConfig
from services.fanout.server import FanoutServicer
from services.fanout.service import Fanout

logger = logging.getLogger("services.fanout")


async def main(cfg: FanoutConfig) -> None:
    check_write_mode(cfg.writes, metadata_store=cfg.metadata_store)
    nc = await connect(list(cfg.nats_servers), name=f"fanout-{cfg.instance_id}", user=cfg.nats_user,
                       password=cfg.nats_password, tls_ca=cfg.nats_tls_ca, pending_size=64 * 1024 * 1024)  # fmt: skip
    metadata = await open_metadata(cfg.metadata_store)
    bus = NatsBus(nc)
    fanout = Fanout(
        bus=bus,
        jetstream=bus,
        metadata=metadata,
        region=cfg.region,
        instance_timeout=cfg.instance_timeout,
        resync_grace=cfg.resync_grace,
        consumer_name=cfg.consumer_name,
        batch=cfg.batch,
        stream=cfg.events_stream,
        writes=cfg.writes,
        presence_index=cfg.presence_index,
        presence_interval=cfg.presence_interval,
        presence_timeout=cfg.presence_timeout,
    )
    # Internal operator API: no client tokens (it is not exposed by the edges);
    # with service identities on, only operators may call it.
    server = GrpcServer(
        cfg, "fanout", authenticated=False, peer_roles={"/chatmesh.v1.FanoutService/": [OPERATOR]}
    )
    server.add(
        pb_grpc.add_FanoutServiceServicer_to_server,
        FanoutServicer(fanout),
        "chatmesh.v1.FanoutService",
    )
    lease: Lease | None = None
    lease_task: asyncio.Task[None] | None = None
    if cfg.lease_ttl <= 0:
        await fanout.start()
    else:
        # Standby until the lease is ours: one consumer of EVENTS at a time keeps each
        # channel's deliveries in order. Losing it (this process was paused or cut
        # off while the other took over) ends the process: the supervisor starts it
        # again as a standby, with a fresh routing table.
        holder = f"fanout-{cfg.instance_id or cfg.region}/{os.getpid()}-{secrets.token_hex(3)}"
        lease = Lease(await kv_lease_store(nc), "fanout", holder, ttl=cfg.lease_ttl)

        async def acquired() -> None:
            await fanout.start()

        async def lost() -> None:
            logger.error("fan-out lease lost; stopping so that only the holder delivers")
            fanout.consumer.stop()
            os._exit(3)

        lease_task = asyncio.create_task(lease.run(on_acquired=acquired, on_lost=lost))

    async def drain() -> None:
        if lease_task is not None:  # stop renewing before releasing (see the command's)
            lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lease_task
        await fanout.stop()
        if lease is not None:
            await lease.release()

    async def close() -> None:
        await fanout.stop()
        await nc.drain()
        await metadata.close()

    server.on_drain(drain)
    server.on_shutdown(close)
    await server.run_until_signal()


if __name__ == "__main__":
    cfg = config_mod.load(FanoutConfig, sys.argv[1] if len(sys.argv) > 1 else None)
    configure_logging(cfg.log_level, "fanout")
    loop.run(main(cfg))
