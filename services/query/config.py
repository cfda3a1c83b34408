"""Query Service configuration."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.bus.subjects import WRITES_EVERY_REGION, WRITES_PRIMARY
from mesh.core.config import CommonConfig, ConfigError

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
    writes: str = WRITES_PRIMARY
    """Write mode of the deployment (ADR-026): ``primary`` (every write goes to the
    primary region) or ``every-region`` (each region writes its own ``EVENTS_<REGION>``
    and reads ``ALL_<REGION>``)."""

    def __post_init__(self) -> None:
        if self.writes not in (WRITES_PRIMARY, WRITES_EVERY_REGION):
            raise ConfigError(
                f"writes: {self.writes!r} must be {WRITES_PRIMARY!r} or {WRITES_EVERY_REGION!r}"
            )
