"""``python -m services.query [CONFIG.json]``: runs a Query Service."""

from __future__ import annotations

import sys

from chatmesh.v1 import query_service_pb2_grpc as pb_grpc
from mesh.bus.connection import connect
from mesh.bus.natsbus import NatsBus
from mesh.bus.subjects import WRITES_EVERY_REGION, Subjects
from mesh.core import config as config_mod, loop
from mesh.core.regional_presence import RegionalPresence
from mesh.rpc.server import GrpcServer, configure_logging
from mesh.stores import check_write_mode, open_history, open_metadata
from mesh.stores.presence import PresenceStore
from services.query.config import QueryConfig
from services.query.server import QueryServicer
from services.query.service import Queries


async def main(cfg: QueryConfig) -> None:
    check_write_mode(cfg.writes, history_store=cfg.history_store, metadata_store=cfg.metadata_store)
    history = await open_history(cfg.history_store)
    metadata = await open_metadata(cfg.metadata_store)
    # Reads only: both "primary" and replica point at the region's replica.
    presence = PresenceStore(
        primary_url=cfg.valkey_replica, replica_url=cfg.valkey_replica, region=cfg.region
    )
    every = cfg.writes == WRITES_EVERY_REGION
    remote = RegionalPresence(cfg.region, timeout=cfg.presence_timeout) if every else None
    queries = Queries(history, metadata, presence, writes=cfg.writes, remote_presence=remote)
    nc = None
    if every:  # the other regions' presence snapshots (ADR-026); listen only
        nc = await connect(list(cfg.nats_servers), name=f"query-{cfg.region}", user=cfg.nats_user,
                           password=cfg.nats_password, tls_ca=cfg.nats_tls_ca)  # fmt: skip
        await NatsBus(nc).subscribe(
            Subjects.PRESENCE_SNAPSHOT_ALL, queries.on_presence_snapshot, pending_msgs_limit=-1
        )
    server = GrpcServer(cfg, "query")
    server.add(pb_grpc.add_QueryServiceServicer_to_server, QueryServicer(queries),
               "chatmesh.v1.QueryService")  # fmt: skip

    async def close() -> None:
        if nc is not None:
            await nc.drain()
        await history.close()
        await metadata.close()
        await presence.close()

    server.on_shutdown(close)
    await server.run_until_signal()


if __name__ == "__main__":
    cfg = config_mod.load(QueryConfig, sys.argv[1] if len(sys.argv) > 1 else None)
    configure_logging(cfg.log_level, "query")
    loop.run(main(cfg))
