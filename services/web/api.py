"""The edge's own gRPC endpoints: reflection of the public API and the edge's health.

Envoy routes ``/grpc.reflection.*`` and ``/grpc.health.v1.Health/*`` here, without
a token, so ``grpcurl list`` / ``describe`` and health probes work against the edge:

* reflection lists exactly what the edge serves (Command, Query, Notification,
  Health) with every file they import, and the error detail types
  (``google.rpc.ErrorInfo``, ``BadRequest``, the chatmesh reasons), so grpcurl
  can print a rich status; the internal Fan-Out Service is not in it;
* health: ``""`` is SERVING while this process serves; a public service is
  SERVING while the Envoy cluster that carries it has a healthy host (read from
  Envoy's loopback admin ``/clusters``, which Envoy's own active gRPC health
  checks and outlier detection keep current); unknown names are NOT_FOUND.

Example:
    >>> EdgeHealth.parse_pairs(("chatmesh.v1.QueryService=query-eu",))
    {'chatmesh.v1.QueryService': 'query-eu'}
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import httpx
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from chatmesh.v1 import command_service_pb2, errors_pb2, notification_service_pb2, query_service_pb2

__all__ = ["PUBLIC_SERVICES", "EdgeHealth", "enable_reflection"]

logger = logging.getLogger(__name__)

PUBLIC_SERVICES: tuple[str, ...] = (
    command_service_pb2.DESCRIPTOR.services_by_name["CommandService"].full_name,
    query_service_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name,
    notification_service_pb2.DESCRIPTOR.services_by_name["NotificationService"].full_name,
)
"""The gRPC services clients reach through the edge."""

# Imported for their descriptors: reflection answers file requests from the default pool.
_ERROR_FILES = (error_details_pb2.DESCRIPTOR, status_pb2.DESCRIPTOR, errors_pb2.DESCRIPTOR)
_HEALTH_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_SERVING: int = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING


def enable_reflection(server: grpc.aio.Server) -> None:
    """Adds server reflection of the edge's public API to ``server``."""
    reflection.enable_server_reflection(
        [*PUBLIC_SERVICES, _HEALTH_NAME, reflection.SERVICE_NAME], server
    )


class EdgeHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # grpc stubs untyped
    """``grpc.health.v1.Health`` for the edge, from Envoy's view of its upstreams."""

    def __init__(
        self, admin_url: str, clusters: dict[str, str], *, cache_seconds: float = 1.0
    ) -> None:
        """Args: clusters maps a public service name to the Envoy cluster that carries it."""
        self._admin = admin_url.rstrip("/")
        self._clusters = dict(clusters)
        self._cache_seconds = cache_seconds
        self._cached: tuple[float, dict[str, bool]] | None = None
        self._lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None
        self._serving = True

    @staticmethod
    def parse_pairs(pairs: Iterable[str]) -> dict[str, str]:
        """``["svc=cluster", ...]`` -> ``{svc: cluster}``.

        Raises:
            ValueError: A pair without ``=``.
        """
        out: dict[str, str] = {}
        for pair in pairs:
            service, sep, cluster = pair.partition("=")
            if not sep or not service or not cluster:
                raise ValueError(f"health_clusters: expected SERVICE=CLUSTER, got {pair!r}")
            out[service] = cluster
        return out

    def set_not_serving(self) -> None:
        """Reports NOT_SERVING for everything (draining)."""
        self._serving = False

    async def close(self) -> None:
        """Closes the admin client."""
        if self._client is not None:
            await self._client.aclose()

    async def _healthy_clusters(self) -> dict[str, bool]:
        async with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self._cache_seconds:
                return self._cached[1]
            if self._client is None:
                self._client = httpx.AsyncClient(timeout=2.0)
            healthy: dict[str, bool] = {}
            try:
                resp = await self._client.get(f"{self._admin}/clusters", params={"format": "json"})
                resp.raise_for_status()
                for cluster in resp.json().get("cluster_statuses", []):
                    healthy[cluster.get("name", "")] = any(
                        _host_healthy(h) for h in cluster.get("host_statuses", [])
                    )
            except (httpx.HTTPError, ValueError) as exc:
                logger.warning("cannot read Envoy's cluster health from %s: %s", self._admin, exc)
            self._cached = (now, healthy)
            return healthy

    async def status_of(self, service: str) -> int | None:
        """The health status of ``service`` (None: unknown name)."""
        if service == "":
            return _SERVING if self._serving else _NOT_SERVING
        cluster = self._clusters.get(service)
        if cluster is None:
            return None
        if not self._serving:
            return _NOT_SERVING
        return _SERVING if (await self._healthy_clusters()).get(cluster) else _NOT_SERVING

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        status = await self.status_of(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last: int | None = -1
        while True:
            status = await self.status_of(request.service)
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(
                    status=health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                    if status is None
                    else status
                )
            await asyncio.sleep(self._cache_seconds)


def _host_healthy(host: dict[str, Any]) -> bool:
    health = host.get("health_status", {})
    failed = any(
        health.get(flag)
        for flag in ("failed_active_health_check", "failed_outlier_check", "pending_active_hc")
    )
    return health.get("eds_health_status", "HEALTHY") == "HEALTHY" and not failed
