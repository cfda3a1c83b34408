"""The edge's native gRPC listener: a byte-level pass-through on grpc.aio.

gRPC clients (the SDKs, grpcurl, other services) are served here by gRPC's
C core instead of hypercorn's pure-Python HTTP/2, which the benchmark showed to
be the mesh's hottest code under many long-lived streams. Requests and
responses are never decoded: the edge authenticates from the metadata, sets the
origin region, propagates the deadline, and relays bytes. Backends validate.
Browsers (gRPC-Web, Connect) keep using the HTTP listener (:mod:`services.edge.server`).

Example:
    >>> async def main(cfg, verifier) -> None:  # doctest: +SKIP
    ...     proxy = GrpcProxy(cfg, verifier)
    ...     port = await proxy.start("127.0.0.1:0")
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import _async as health_aio, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from chatmesh.v1 import command_service_pb2, notification_service_pb2, query_service_pb2
from mesh.core.auth import TokenVerifier
from mesh.core.headers import AUTHORIZATION, ORIGIN_REGION
from mesh.rpc.interceptors import AccessLog, Authenticator, Deadlines, ErrorMapper, Metrics
from mesh.rpc.interceptors.deadline import remaining
from mesh.rpc.server import server_options
from services.edge.config import EdgeConfig

__all__ = ["PUBLIC_SERVICES", "GrpcProxy"]

logger = logging.getLogger(__name__)

PUBLIC_SERVICES: tuple[ServiceDescriptor, ...] = (
    command_service_pb2.DESCRIPTOR.services_by_name["CommandService"],
    query_service_pb2.DESCRIPTOR.services_by_name["QueryService"],
    notification_service_pb2.DESCRIPTOR.services_by_name["NotificationService"],
)
_PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def _trailers(err: grpc.aio.AioRpcError) -> tuple[tuple[str, str | bytes], ...]:
    """A backend error's trailing metadata (grpc-status-details-bin included), to relay as-is."""
    items: Any = err.trailing_metadata() or ()  # the stubs type metadata items loosely
    return tuple((str(key), value) for key, value in items)


class GrpcProxy:
    """Forwards the public services' calls to the region's backends."""

    def __init__(self, cfg: EdgeConfig, verifier: TokenVerifier) -> None:
        """Plans channels to every backend; nothing connects until the first call."""
        self.cfg = cfg
        per = max(1, cfg.channels_per_backend)
        options = [("grpc.keepalive_time_ms", 20_000), ("grpc.keepalive_permit_without_calls", 1)]
        self._pools: dict[str, itertools.cycle[grpc.aio.Channel]] = {}
        self._channels: list[grpc.aio.Channel] = []
        backends = {
            "chatmesh.v1.CommandService": [cfg.command_backend],
            "chatmesh.v1.QueryService": [cfg.query_backend],
            "chatmesh.v1.NotificationService": list(cfg.notification_backends),
        }
        for name, addresses in backends.items():
            pool = [
                grpc.aio.insecure_channel(a, options=options) for a in addresses for _ in range(per)
            ]
            self._channels += pool
            self._pools[name] = itertools.cycle(pool)
        self.server = grpc.aio.server(
            interceptors=[
                AccessLog("edge"),
                Metrics("edge"),
                ErrorMapper(),
                Deadlines(cfg.default_timeout),
                Authenticator(verifier, public_prefixes=_PUBLIC_PREFIXES),
            ],
            options=server_options(),
        )
        for service in PUBLIC_SERVICES:
            handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                if method.server_streaming:
                    handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                        self._stream(service.full_name, path)
                    )
                else:
                    handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                        self._unary(service.full_name, path)
                    )
            self.server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service.full_name, handlers),)
            )
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [s.full_name for s in PUBLIC_SERVICES]
        reflection.enable_server_reflection(
            [
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )

    def _metadata(self, context: grpc.aio.ServicerContext[Any, Any]) -> tuple[tuple[str, str], ...]:
        auth = ""
        for key, value in context.invocation_metadata() or ():
            if key == AUTHORIZATION:
                auth = value if isinstance(value, str) else value.decode()
        # Clients' own origin header is dropped: the edge says where the call entered.
        return ((AUTHORIZATION, auth), (ORIGIN_REGION, self.cfg.region))

    def _unary(self, service: str, path: str) -> Any:
        async def handler(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            # No (de)serializers: bytes in, bytes out.
            call = next(self._pools[service]).unary_unary(path, None, None)
            try:
                response: bytes = await call(
                    request, metadata=self._metadata(context), timeout=remaining()
                )
            except grpc.aio.AioRpcError as err:
                await context.abort(
                    err.code(), err.details() or "", trailing_metadata=_trailers(err)
                )
            return response

        return handler

    def _stream(self, service: str, path: str) -> Any:
        async def handler(
            request: bytes, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[bytes]:
            client_deadline = context.time_remaining()
            call = next(self._pools[service]).unary_stream(path, None, None)(
                request, metadata=self._metadata(context), timeout=client_deadline
            )
            try:
                async for item in call:
                    yield item
            except grpc.aio.AioRpcError as err:
                await context.abort(
                    err.code(), err.details() or "", trailing_metadata=_trailers(err)
                )
            finally:
                call.cancel()  # the client went away: end the backend stream too

        return handler

    async def start(self, listen: str) -> int:
        """Binds ``listen`` and starts serving; returns the bound port."""
        port = self.server.add_insecure_port(listen)
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        for service in PUBLIC_SERVICES:
            await self.health.set(service.full_name, health_pb2.HealthCheckResponse.SERVING)
        return port

    async def stop(self, grace: float) -> None:
        """Drains and stops, then closes the backend channels."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for channel in self._channels:
            await channel.close(None)
