"""Fan-Out Service configuration."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.bus.subjects import EVENTS_STREAM, WRITES_EVERY_REGION, all_stream_name
from mesh.core.config import CommonConfig

__all__ = ["FanoutConfig"]


@dataclass(frozen=True)
class FanoutConfig(CommonConfig):
    """Settings of the Fan-Out Service (the primary region; every region in the every-region mode)."""

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
    stream: str = ""
    """Stream to consume; empty: EVENTS in the primary mode, ``ALL_<REGION>`` in the
    every-region mode (``writes``: there one Fan-Out runs per region, routing to and
    taking routes from its own region's notification instances only)."""

    presence_index: bool = False
    """Every-region mode: overhear the other regions' route snapshots, updates and
    heartbeats (never answered) to know which remote users are online where, so presence
    converges after a partition (ADR-026). Needs the fan-out's NATS user to be allowed to
    subscribe to ``chatmesh.route.>`` (the every-region permissions confine it to its own
    region's route subjects)."""

    presence_interval: float = 2.0
    """Every-region mode: seconds between this region's presence snapshots (one is also
    sent soon after a route change), for the other regions' Fan-Out and Query Services."""
    presence_timeout: float = 6.0
    """Every-region mode: seconds without another region's presence snapshot after which its
    users count as offline here (unless online elsewhere); a few ``presence_interval``."""

    @property
    def events_stream(self) -> str:
        """The stream the durable consumer reads."""
        if self.stream:
            return self.stream
        return all_stream_name(self.region) if self.writes == WRITES_EVERY_REGION else EVENTS_STREAM
