"""``python -m services.fanout [CONFIG.json]``: runs the Fan-Out Service."""

from __future__ import annotations

import asyncio
import sys

from chatmesh.v1 import fanout_service_pb2_grpc as pb_grpc
from mesh.bus.connection import connect
from mesh.bus.natsbus import NatsBus
from mesh.core import config as config_mod
from mesh.core.identity import OPERATOR
from mesh.rpc.server import GrpcServer, configure_logging
from mesh.stores import open_metadata
from services.fanout.config import FanoutConfig
from services.fanout.server import FanoutServicer
from services.fanout.service import Fanout


async def main(cfg: FanoutConfig) -> None:
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
    await fanout.start()

    async def close() -> None:
        await fanout.stop()
        await nc.drain()
        await metadata.close()

    server.on_shutdown(close)
    await server.run_until_signal()


if __name__ == "__main__":
    cfg = config_mod.load(FanoutConfig, sys.argv[1] if len(sys.argv) > 1 else None)
    configure_logging(cfg.log_level, "fanout")
    asyncio.run(main(cfg))
