"""gRPC health checking (``grpc.health.v1.Health``) of the edge itself.

The edge is SERVING from start-up until it begins to drain, then NOT_SERVING,
for the whole server (``""``) and for each public service it routes. Unknown
service names are NOT_FOUND, as in grpcio's own health servicer. Protocol-free:
:mod:`services.edge.server` exposes these handlers over gRPC, gRPC-Web and
Connect.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable

from grpc_health.v1 import health_pb2

from mesh.core.errors import NotFound

__all__ = ["EdgeHealth"]

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class EdgeHealth:
    """Health status of the edge and of the services it serves."""

    def __init__(self, services: Iterable[str]) -> None:
        """Args: services are the full names that have a status besides ``""``."""
        self._names = ("", *services)
        self._serving = True
        self._changed = asyncio.Event()

    def _status(self, service: str) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        return _SERVING if self._serving else _NOT_SERVING

    def set_not_serving(self) -> None:
        """Marks everything NOT_SERVING (draining); watchers are told at once."""
        self._serving = False
        self._changed.set()

    async def check(self, request: health_pb2.HealthCheckRequest) -> health_pb2.HealthCheckResponse:
        """Health.Check.

        Raises:
            NotFound: The service is not one the edge serves.
        """
        if request.service not in self._names:
            raise NotFound("SERVICE_NOT_FOUND", f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=self._status(request.service))

    async def list(self, request: health_pb2.HealthListRequest) -> health_pb2.HealthListResponse:
        """Health.List: every service with its status."""
        response = health_pb2.HealthListResponse()
        for name in self._names:
            response.statuses[name].status = self._status(name)
        return response

    async def watch(
        self, request: health_pb2.HealthCheckRequest
    ) -> AsyncGenerator[health_pb2.HealthCheckResponse, None]:
        """Health.Watch: the current status, then each change (SERVICE_UNKNOWN for unknown names)."""
        if request.service not in self._names:
            yield health_pb2.HealthCheckResponse(status=_UNKNOWN)
            # An unknown name never changes status; the stream stays open as the
            # protocol asks, until the client leaves or the edge drains.
            await self._changed.wait()
            return
        last = None
        while True:
            status = self._status(request.service)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if not self._serving:
                return
            await self._changed.wait()
