"""gRPC metadata keys chatmesh reads or sets (one place, shared by services and edges)."""

from __future__ import annotations

__all__ = ["AUTHORIZATION", "ORIGIN_REGION"]

AUTHORIZATION = "authorization"
"""``Bearer <JWT>``: the caller's identity."""

ORIGIN_REGION = "x-chatmesh-origin-region"
"""Set by the regional edge to the region whose entry received a command (clients' values are replaced)."""
