"""Configuration of a region's web service."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.core.config import CommonConfig

__all__ = ["WebConfig"]


@dataclass(frozen=True)
class WebConfig(CommonConfig):
    """Settings of the web service that sits behind a region's Envoy edge.

    Two listeners: ``http_listen`` (HTTP/1.1: the page, ``/config.json``,
    ``/dev/token``, ``/healthz``) and ``grpc_listen`` (reflection of the public
    API and the edge's gRPC health). Envoy routes to both; neither is meant to be
    reached without it.
    """

    http_listen: str = "127.0.0.1:0"
    """host:port of the HTTP listener."""
    static_dir: str = ""
    """Directory whose files (the web client) are served under ``/``; empty: none."""
    edges_file: str = ""
    """JSON file (``{"edges": [{"region", "url", "primary"}]}``) listing every region's edge,
    served in ``GET /config.json`` for the page's region picker. Empty: only this edge."""
    edge_url: str = ""
    """The public URL of this region's edge (``http(s)://host:port``): the page's own origin."""
    edge_listen: str = ""
    """host:port of the Envoy listener that serves this web service (the edge's public listener)."""
    envoy_admin: str = ""
    """URL of the edge's Envoy admin interface (loopback): upstream health for gRPC health checks."""
    health_clusters: tuple[str, ...] = ()
    """``<gRPC service>=<Envoy cluster>`` pairs: a service is SERVING at the edge while its cluster
    has a healthy host."""
    dev_token_keys: str = ""
    """DEVELOPMENT ONLY. Key directory (``jwt-private.pem``) with which ``GET /dev/token?user=NAME``
    mints a token for anyone who asks. Empty (the default, and always in production): the
    endpoint does not exist. Refused unless ``edge_listen`` and ``http_listen`` are loopback."""
