"""``python -m services.notification [CONFIG.json]``: runs a Notification Service instance."""

from __future__ import annotations

import sys

from mesh.bus.connection import connect
from mesh.bus.natsbus import NatsBus
from mesh.core import config as config_mod, ids, loop
from mesh.core.ratelimit import StreamQuota
from mesh.rpc.interceptors.metrics import RATE_LIMITED_TOTAL
from mesh.rpc.server import GrpcServer, configure_logging
from mesh.stores import check_write_mode, open_history, open_metadata
from mesh.stores.presence import PresenceStore
from services.notification.config import NotificationConfig
from services.notification.hub import Hub
from services.notification.server import NotificationServicer, add_notification_service


async def main(cfg: NotificationConfig) -> None:
    check_write_mode(cfg.writes, history_store=cfg.history_store, metadata_store=cfg.metadata_store)
    instance_id = cfg.instance_id or ids.new(f"n-{cfg.region}")
    nc = await connect(list(cfg.nats_servers), name=f"notification-{instance_id}", user=cfg.nats_user,
                       password=cfg.nats_password, tls_ca=cfg.nats_tls_ca, pending_size=64 * 1024 * 1024)  # fmt: skip
    history = await open_history(cfg.history_store)
    metadata = await open_metadata(cfg.metadata_store)
    presence = PresenceStore(
        primary_url=cfg.valkey_primary,
        replica_url=cfg.valkey_replica,
        region=cfg.region,
        instance_id=instance_id,
        instance_ttl=max(5.0, cfg.route_heartbeat * 5),
    )
    bus = NatsBus(nc)
    hub = Hub(
        bus=bus,
        history=history,
        metadata=metadata,
        presence=presence,
        region=cfg.region,
        instance_id=instance_id,
        stream_heartbeat=cfg.stream_heartbeat,
        route_heartbeat=cfg.route_heartbeat,
        route_timeout=cfg.route_timeout,
        buffer_size=cfg.buffer_size,
        replay_page=cfg.replay_page,
        catchup_timeout=cfg.catchup_timeout,
        gap_timeout=cfg.gap_timeout,
        events=bus if cfg.fill_from_primary else None,
        events_stream=cfg.events_stream,
        writes=cfg.writes,
    )
    quota = StreamQuota(
        cfg.streams_per_user,
        on_refusal=lambda: RATE_LIMITED_TOTAL.labels("notification", "subscribe").inc(),
    )
    server = GrpcServer(cfg, "notification")
    server.add(
        add_notification_service,
        NotificationServicer(hub, quota),
        "chatmesh.v1.NotificationService",
    )
    await hub.start()
    # Streams end first (with SHUTTING_DOWN), then the server drains.
    server.on_shutdown(history.close)
    server.on_shutdown(metadata.close)
    server.on_shutdown(presence.close)
    server.on_shutdown(nc.drain)
    server.on_drain(hub.stop)
    await server.run_until_signal()


if __name__ == "__main__":
    cfg = config_mod.load(NotificationConfig, sys.argv[1] if len(sys.argv) > 1 else None)
    configure_logging(cfg.log_level, "notification")
    loop.run(main(cfg))
