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
