"""Command Service configuration."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.core.config import CommonConfig

__all__ = ["CommandConfig"]


@dataclass(frozen=True)
class CommandConfig(CommonConfig):
    """Settings of the Command Service (primary region)."""

    command_store: str = "sqlite:///.run/data/us-east/command.db"
    """DSN of the command log (the write model)."""
    metadata_store: str = "sqlite:///.run/data/us-east/metadata.db"
    """DSN of the primary metadata store (channels, members, read markers)."""
    publish_timeout: float = 5.0
    """Seconds to wait for JetStream to acknowledge an event."""
    typing_ttl: float = 6.0
    """Seconds a typing indicator stays visible without a refresh."""
    republish_interval: float = 1.0
    """How often unacknowledged log entries are published again."""
    max_initial_members: int = 100
    """Most users CreateChannel may add besides the caller (they are added without
    being asked; the contract allows 1,000, this service refuses more than this)."""
    lease_ttl: float = 0.0
    """Seconds of the write lease in NATS KV (ADR-019): with two or more instances, the one
    holding it serves and the others answer UNAVAILABLE until it expires. 0: no lease,
    this instance is the only writer."""
    max_inflight: int = 512
    """Commands in progress above which new ones are refused at once (UNAVAILABLE with
    RetryInfo) instead of queueing until their deadline."""
