"""Worker domain logic: apply batches of events to the stores, idempotently.

Redelivery (after a crash, before the ack) re-applies events the store has
already seen; :meth:`~mesh.stores.HistoryStore.apply` ignores them by
``(channel_id, seq)``, so no duplicate row is ever written.

In the every-region write mode (ADR-026) the worker reads ``ALL_<REGION>``,
every region's events interleaved; the stores apply them by ``(channel_id,
origin_region, origin_seq)`` and show them by the convergence rules, so the
arrival order does not matter. The metadata projection is what lets the
region's Command Service check memberships and edit or delete messages written
in other regions.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter

from chatmesh.v1 import events_pb2
from mesh.bus.interfaces import StreamMsg
from mesh.core.events import is_channel_log_event, is_origin_log_event
from mesh.stores import HistoryStore, MetadataStore

__all__ = ["Projector"]

logger = logging.getLogger(__name__)

APPLIED = Counter("chatmesh_worker_events_total", "Events seen by the worker", ["result"])


class Projector:
    """Applies stream batches to a history store (and optionally a metadata store)."""

    def __init__(self, history: HistoryStore, metadata: MetadataStore | None) -> None:
        self.history = history
        self.metadata = metadata
        self.applied = 0

    async def handle(self, msgs: list[StreamMsg]) -> None:
        """Applies one batch; returns when it is durable in the stores."""
        events: list[events_pb2.Event] = []
        for msg in msgs:
            try:
                events.append(events_pb2.Event.FromString(msg.data))
            except Exception:  # noqa: BLE001 - a poison message is skipped, not retried forever
                logger.error("skipping undecodable event at stream seq %s", msg.stream_seq)
                APPLIED.labels("undecodable").inc()
        if self.metadata is not None:
            for event in events:
                await self.metadata.apply(event)
        channel_events = [e for e in events if is_channel_log_event(e) or is_origin_log_event(e)]
        new = await self.history.apply(channel_events, msgs[-1].stream_seq)
        self.applied += new
        APPLIED.labels("new").inc(new)
        APPLIED.labels("duplicate").inc(len(channel_events) - new)
