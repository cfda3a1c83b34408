"""Regional edge configuration."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.core.config import CommonConfig

__all__ = ["DEFAULT_CORS_ORIGINS", "EdgeConfig"]

DEFAULT_CORS_ORIGINS: tuple[str, ...] = ("http://localhost:*",)
"""Browser origins allowed besides the edge's own: any local dev server."""


@dataclass(frozen=True)
class EdgeConfig(CommonConfig):
    """Settings of a region's public edge.

    Two listeners, one edge: ``grpc_listen`` serves native gRPC through gRPC's C
    core (SDKs, grpcurl, services: the fast path); ``http_listen`` serves
    gRPC-Web, Connect and gRPC over HTTP/1.1 and HTTP/2 (prior knowledge and
    ``Upgrade: h2c``) for browsers, plus the web client's static files.
    """

    http_listen: str = "127.0.0.1:0"
    """host:port of the HTTP listener (gRPC-Web, Connect, h2c gRPC, static files)."""

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
    edges_file: str = ""
    """JSON file (``{"edges": [{"region", "url", "primary"}]}``) listing every region's edge,
    served to the web client as part of ``GET /config.json``; the harness writes it once all
    edges are up. Empty: the page only knows this edge."""
    dev_token_keys: str = ""
    """DEVELOPMENT ONLY. Key directory (``jwt-private.pem``) with which ``GET /dev/token?user=NAME``
    mints a token for anyone who asks. Empty (the default, and always in production): the
    endpoint does not exist. Refused unless ``grpc_listen`` is a loopback address."""
