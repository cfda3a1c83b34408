"""Command Service configuration."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.bus.subjects import WRITES_EVERY_REGION, WRITES_PRIMARY
from mesh.core.config import CommonConfig, ConfigError
from mesh.core.ratelimit import Limit

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
    send_per_s: float = 20.0
    """Per-user token bucket of message writes (send, edit, delete): tokens per second."""
    send_burst: int = 60
    """... and its size (0 with a rate of 0: no limit). The topology's ``[limits]`` sets these."""
    typing_per_s: float = 4.0
    """Per-user SetTyping bucket: tokens per second."""
    typing_burst: int = 10
    """... and its size."""
    create_channel_per_s: float = 1.0
    """Per-user CreateChannel bucket: tokens per second."""
    create_channel_burst: int = 30
    """... and its size."""
    join_per_s: float = 2.0
    """Per-user JoinChannel bucket: tokens per second."""
    join_burst: int = 30
    """... and its size."""

    writes: str = WRITES_PRIMARY
    """Write mode of the deployment (ADR-026): ``primary`` (every write goes to the
    primary region) or ``every-region`` (each region writes its own ``EVENTS_<REGION>``
    and reads ``ALL_<REGION>``)."""
    events_stream: str = "EVENTS"
    """Stream the events are published to: EVENTS (primary mode) or the region's own
    ``EVENTS_<REGION>`` (every-region mode)."""

    def __post_init__(self) -> None:
        if self.writes not in (WRITES_PRIMARY, WRITES_EVERY_REGION):
            raise ConfigError(
                f"writes: {self.writes!r} must be {WRITES_PRIMARY!r} or {WRITES_EVERY_REGION!r}"
            )

    def limits(self) -> dict[str, Limit]:
        """The token bucket of each limited action."""
        return {
            "send": Limit(self.send_per_s, self.send_burst),
            "typing": Limit(self.typing_per_s, self.typing_burst),
            "create_channel": Limit(self.create_channel_per_s, self.create_channel_burst),
            "join": Limit(self.join_per_s, self.join_burst),
        }
