"""Notification Service configuration."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.bus.subjects import EVENTS_STREAM, WRITES_EVERY_REGION, all_stream_name
from mesh.core.config import CommonConfig

__all__ = ["NotificationConfig"]


@dataclass(frozen=True)
class NotificationConfig(CommonConfig):
    """Settings of a Notification Service instance (every region)."""

    history_store: str = "sqlite:///.run/data/us-east/history.db"
    """DSN of the region's history store (replay and gap filling)."""
    metadata_store: str = "sqlite:///.run/data/us-east/metadata.db"
    """DSN of the region's metadata store (membership checks on resume)."""
    valkey_primary: str = "redis://127.0.0.1:6379/0"
    """The Valkey primary as reached from this region (presence writes)."""
    valkey_replica: str = "redis://127.0.0.1:6379/0"
    """The region's Valkey replica (presence reads)."""
    stream_heartbeat: float = 15.0
    """Seconds of stream idleness after which a Heartbeat is sent to the client."""
    route_heartbeat: float = 1.0
    """Seconds between heartbeats to the Fan-Out Service (and Valkey liveness refreshes)."""
    route_timeout: float = 3.0
    """Seconds to wait for the Fan-Out Service to acknowledge a route change."""
    buffer_size: int = 2000
    """Events a stream may have queued before the client counts as too slow."""
    replay_page: int = 500
    """Events read from history per replay query."""
    streams_per_user: int = 16
    """Concurrent Subscribe streams one user may hold on this instance (0: no limit)."""
    catchup_timeout: float = 30.0
    """Seconds a sweep waits for history to reach the Fan-Out's position (history only),
    and a stream's catch-up waits for a client that stopped reading."""
    gap_timeout: float = 60.0
    """Seconds a channel's gap may stay unfilled, with no source making progress, before the
    stream ends with UNAVAILABLE (STREAM_GAP) naming it. Never delivered around."""
    fill_from_primary: bool = True
    """Fill gaps the region's history lacks from the primary's EVENTS stream (direct get
    across the gateway); in the every-region write mode, from ``stream``."""
    stream: str = ""
    """Every-region write mode: the region's stream sourcing every region's events, the
    second source of a gap (empty: ``ALL_<REGION>``). Unused in the primary mode (EVENTS)."""

    @property
    def events_stream(self) -> str:
        """The stream gaps are read from when history lacks them."""
        if self.writes != WRITES_EVERY_REGION:
            return EVENTS_STREAM
        return self.stream or all_stream_name(self.region)
