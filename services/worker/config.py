"""Worker configuration."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.core.config import CommonConfig

__all__ = ["WorkerConfig"]


@dataclass(frozen=True)
class WorkerConfig(CommonConfig):
    """Settings of a worker."""

    history_store: str = "sqlite:///.run/data/us-east/history.db"
    """DSN of the history store this worker writes."""
    metadata_store: str = ""
    """DSN of the metadata store to project channel/member/read-marker events into
    (embedded backend outside the primary only); empty: leave metadata alone (the
    Command Service writes it, and MongoDB replicates it — a worker must never be
    a second writer of a ``mongodb://`` metadata store). Required with
    ``writes = "every-region"``: the region's ``metadata.db``, the one its Command
    Service uses, which learns other regions' channels, members and messages here."""
    stream: str = "EVENTS"
    """Stream to consume: EVENTS in the primary, the region's mirror elsewhere;
    ``ALL_<REGION>`` with ``writes = "every-region"`` (ADR-026)."""
    consumer_name: str = "worker-us-east"
    """Durable consumer name."""
    replication_interval: float = 2.0
    """Seconds between checks of the region's mirror against EVENTS (lag metrics, stall
    repair; secondary regions only), or in the every-region mode of the region's
    ``ALL_<REGION>`` against every origin it sources. 0: off."""
    batch: int = 512
    """Events requested per pull (and applied per transaction)."""
