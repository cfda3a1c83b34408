"""Fan-Out Service configuration."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.core.config import CommonConfig

__all__ = ["FanoutConfig"]


@dataclass(frozen=True)
class FanoutConfig(CommonConfig):
    """Settings of the Fan-Out Service (primary region)."""

    metadata_store: str = "sqlite:///.run/data/us-east/metadata.db"
    """DSN of the primary metadata store (membership snapshot at start-up)."""
    instance_timeout: float = 5.0
    """Seconds without a heartbeat after which a notification instance is dropped."""
    resync_grace: float = 1.0
    """Seconds to collect route snapshots after start-up before consuming events."""
    consumer_name: str = "fanout"
    """Durable consumer on EVENTS."""
    batch: int = 512
    """Events requested per pull."""
    lease_ttl: float = 0.0
    """Seconds of the fan-out lease in NATS KV (ADR-019): with two instances, only the one
    holding it consumes EVENTS; the other waits and takes over when it expires. 0: no
    lease, this instance is the only one."""
    stream: str = "EVENTS"
    """Stream to consume: EVENTS (primary mode) or the region's ``ALL_<REGION>``
    (every-region mode)."""
