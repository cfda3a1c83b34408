"""Regional edge configuration."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.config import CommonConfig

__all__ = ["DEFAULT_CORS_ORIGINS", "EdgeConfig"]

DEFAULT_CORS_ORIGINS: tuple[str, ...] = ("http://localhost:*",)
"""Browser origins allowed besides the edge's own: any local dev server."""


@dataclass(frozen=True)
class EdgeConfig(CommonConfig):
    """Settings of a region's public edge (one port: gRPC over h2c, gRPC-Web and Connect).

    ``grpc_listen`` is the edge's single listener; it speaks HTTP/1.1 and
    HTTP/2 (prior knowledge and ``Upgrade: h2c``) on the same port.
    """

    command_backend: str = "127.0.0.1:50051"
    """host:port of the primary's Command Service as reached from this region (a WAN link outside the primary)."""
    query_backend: str = "127.0.0.1:50052"
    """host:port of the region's Query Service."""
    notification_backends: tuple[str, ...] = ("127.0.0.1:50053",)
    """host:port of each of the region's Notification Service instances."""
    channels_per_backend: int = 2
    """gRPC channels (TCP connections) opened to each backend; calls are spread over them."""
    cors_origins: tuple[str, ...] = DEFAULT_CORS_ORIGINS
    """Browser origins allowed to call the edge, besides its own (``scheme://host:port``;
    the port may be ``*``). An empty list allows only the edge's own origin."""
    cors_max_age: int = 7200
    """Seconds browsers may cache a preflight answer."""
    static_dir: str = ""
    """Directory whose files (the web client) are served under ``/``; empty: none."""
    max_concurrent_streams: int = 1000
    """HTTP/2 streams one client connection may open at once."""
