"""gRPC metadata keys chatmesh reads or sets (one place, shared by services and edges)."""

from __future__ import annotations

__all__ = ["AUTHORIZATION", "EDGE_LISTENER", "INTERNAL_PREFIX", "ORIGIN_REGION"]

AUTHORIZATION = "authorization"
"""``Bearer <JWT>``: the caller's identity."""

INTERNAL_PREFIX = "x-chatmesh-"
"""Every header with this prefix is internal: the regional edge removes all of them
from client requests before it sets its own, so only the edge can speak with them."""

ORIGIN_REGION = "x-chatmesh-origin-region"
"""Set by the regional edge to the region whose entry received a command (clients' values are removed)."""

EDGE_LISTENER = "x-chatmesh-edge-listener"
"""Set by the regional edge on requests for the web service: the ``host:port`` of the
edge listener the client's connection really arrived on (Envoy's downstream local address)."""
