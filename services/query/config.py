"""Query Service configuration."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.core.config import CommonConfig

__all__ = ["QueryConfig"]


@dataclass(frozen=True)
class QueryConfig(CommonConfig):
    """Settings of a Query Service (every region)."""

    history_store: str = "sqlite:///.run/data/us-east/history.db"
    """DSN of the region's history store (Cassandra: read at LOCAL_ONE in the region's DC)."""
    metadata_store: str = "sqlite:///.run/data/us-east/metadata.db"
    """DSN of the region's metadata store (MongoDB: readPreference=nearest)."""
    valkey_replica: str = "redis://127.0.0.1:6379/0"
    """The region's Valkey (replica outside the primary) for presence reads."""
    presence_timeout: float = 6.0
    """Every-region mode (ADR-026): seconds without another region's presence snapshot
    after which its users count as offline here (unless online elsewhere). The service
    then connects to NATS (``nats_*``) to hear the snapshots; the primary mode does not."""
