"""HTTP wiring of the regional edge: connectrpc apps behind one hypercorn port.

One ASGI app answers gRPC (HTTP/2, prior knowledge or ``Upgrade: h2c``),
gRPC-Web (HTTP/1.1 and HTTP/2) and Connect on a single port:

* ``/chatmesh.v1.{Command,Query,Notification}Service/*``: connectrpc endpoints
  built from the services' descriptors, each handled by
  :class:`~services.edge.forwarding.Forwarder` (authenticate, forward, relay);
* ``/grpc.health.v1.Health/*``: the edge's own health (:mod:`services.edge.health`);
* ``/grpc.reflection.v1{,alpha}.ServerReflection/*``: reflection of the public
  services (:mod:`services.edge.reflection`); health and reflection need no token;
* anything else: the web client (:mod:`services.edge.webclient`: ``/config.json``,
  the dev-only ``/dev/token``, and the static files if ``static_dir`` is set), else 404.

All of it sits behind :class:`~services.edge.cors.Cors`. This module is also
the one place where errors become wire statuses (:func:`to_connect_error`):
a backend's status is relayed with the same code, message and details;
an edge-side :class:`~mesh.core.errors.ChatmeshError` gets the same rich status the
services' error interceptor produces (:func:`mesh.rpc.status.to_status`);
anything else is INTERNAL, masked, and logged with an id (:func:`mesh.rpc.status.mask_internal`). One access-log line
and the standard RPC metrics (``service="edge"``) per call.

Example:
    >>> async def main(cfg: EdgeConfig) -> None:  # doctest: +SKIP
    ...     await EdgeServer(cfg).run_until_signal()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from connectrpc.code import Code
from connectrpc.compat import google_protobuf_codecs
from connectrpc.errors import ConnectError, ErrorDetail
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from prometheus_client import start_http_server
from protobuf.wkt import Any as AnyPb

from chatmesh.v1 import command_service_pb2, errors_pb2, notification_service_pb2, query_service_pb2
from mesh.core.auth import TokenVerifier
from mesh.core.errors import ChatmeshError
from mesh.rpc.interceptors.metrics import RPC_DURATION, RPC_TOTAL
from mesh.rpc.status import mask_internal, to_status
from services.edge.asgi import ASGIApp, Receive, Scope, Send, header, plain_response
from services.edge.config import EdgeConfig
from services.edge.cors import Cors, OriginPolicy
from services.edge.forwarding import ROUTES, BackendError, Forwarder
from services.edge.grpcproxy import GrpcProxy
from services.edge.health import EdgeHealth
from services.edge.reflection import reflection_apps
from services.edge.static import StaticFiles
from services.edge.webclient import WebClientApp, check_dev_token

__all__ = [
    "ERROR_FILES",
    "PUBLIC_FILES",
    "DescriptorApp",
    "EdgeApp",
    "EdgeServer",
    "build_app",
    "forwarding_app",
    "health_app",
    "own_origins",
    "to_connect_error",
]

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("chatmesh.access")

PUBLIC_FILES: tuple[FileDescriptor, ...] = (
    command_service_pb2.DESCRIPTOR,
    query_service_pb2.DESCRIPTOR,
    notification_service_pb2.DESCRIPTOR,
)
"""The proto files of the services the edge serves to clients."""
ERROR_FILES: tuple[FileDescriptor, ...] = (
    error_details_pb2.DESCRIPTOR,
    status_pb2.DESCRIPTOR,
    errors_pb2.DESCRIPTOR,
)
"""Files of the messages and enums in error details (``google.rpc.ErrorInfo`` ...)."""

_HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]

# connectrpc's codes are gRPC's, but for the spelling of CANCELLED.
_FROM_GRPC: dict[grpc.StatusCode, Code] = {
    code: Code.CANCELED if code is grpc.StatusCode.CANCELLED else Code[code.name]
    for code in grpc.StatusCode
    if code is not grpc.StatusCode.OK
}
_GRPC_NAME: dict[Code, str] = {code: grpc_code.name for grpc_code, code in _FROM_GRPC.items()}


# -- errors: the one mapping boundary -------------------------------------------------


def _details(status: status_pb2.Status) -> list[ErrorDetail]:
    # connectrpc carries details as protobuf-py Any; the bytes stay untouched.
    return [ErrorDetail(AnyPb(type_url=d.type_url, value=d.value)) for d in status.details]


def to_connect_error(exc: BaseException, method: str = "") -> ConnectError:
    """The status a client sees for an exception raised while handling ``method``.

    Args:
        exc: What the handler raised.
        method: For the log line of an internal error.
    """
    if isinstance(exc, ConnectError):
        return exc
    if isinstance(exc, BackendError):
        details: list[ErrorDetail] = []
        if exc.details:
            try:
                details = _details(status_pb2.Status.FromString(exc.details))
            except Exception:  # noqa: BLE001 - a corrupt detail must not hide the status
                logger.warning("unparsable grpc-status-details-bin from backend for %s", method)
        return ConnectError(_FROM_GRPC.get(exc.code, Code.UNKNOWN), exc.message, details)
    if isinstance(exc, ChatmeshError):
        return ConnectError(
            Code[exc.code] if exc.code != "CANCELLED" else Code.CANCELED,
            exc.message,
            _details(to_status(exc)),
        )
    if isinstance(exc, TimeoutError):
        return ConnectError(Code.DEADLINE_EXCEEDED, "the call did not complete within its deadline")
    internal = mask_internal(exc, method)
    return ConnectError(Code.INTERNAL, internal.message, _details(to_status(internal)))


# -- per-call bookkeeping ---------------------------------------------------------------


def _protocol(ctx: RequestContext[Any, Any]) -> str:
    content_type = ctx.request_headers.get("content-type", "")
    if content_type.startswith("application/grpc-web"):
        return "grpc-web"
    if content_type.startswith("application/grpc"):
        return "grpc"
    return "connect"


def _timeout(ctx: RequestContext[Any, Any]) -> float | None:
    remaining = ctx.timeout_ms
    return None if remaining is None else remaining / 1000.0


class _Call:
    """Times one call, converts what it raises, and logs it once (``with`` block)."""

    def __init__(self, method: str, ctx: RequestContext[Any, Any], *, stream: bool) -> None:
        self.method = method
        self.ctx = ctx
        self.user = "-"
        self.items: int | None = 0 if stream else None
        self.started = time.perf_counter()

    def __enter__(self) -> _Call:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self._log("OK")
            return
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            # The client left, or connectrpc's own deadline fired.
            remaining = self.ctx.timeout_ms
            self._log(
                "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
            )
            return
        error = to_connect_error(exc, self.method)
        self._log(_GRPC_NAME.get(error.code, "UNKNOWN"))
        raise error from None

    def _log(self, code: str) -> None:
        elapsed = time.perf_counter() - self.started
        RPC_TOTAL.labels("edge", self.method, code).inc()
        RPC_DURATION.labels("edge", self.method).observe(elapsed)
        level = logging.WARNING if code in ("INTERNAL", "UNKNOWN") else logging.INFO
        if access_logger.isEnabledFor(level):
            access_logger.log(
                level,
                "rpc %s service=edge protocol=%s user=%s code=%s %.1fms%s peer=%s",
                self.method,
                _protocol(self.ctx),
                self.user,
                code,
                elapsed * 1000,
                "" if self.items is None else f" items={self.items}",
                self.ctx.client_address,
            )


# -- connectrpc apps from descriptors --------------------------------------------------


class DescriptorApp(ConnectASGIApplication[object]):
    """A connectrpc ASGI app for one service, with endpoints built from its google.protobuf descriptor."""

    def __init__(self, service: ServiceDescriptor, endpoints: Mapping[str, Any]) -> None:
        """Args: endpoints maps ``/pkg.Service/Method`` to connectrpc ``Endpoint``s."""
        self._path = f"/{service.full_name}"
        super().__init__(
            service=object(), endpoints=lambda _svc: endpoints, codecs=google_protobuf_codecs()
        )

    @property
    def path(self) -> str:
        """URL prefix of the service."""
        return self._path


def _method_info(method: MethodDescriptor) -> MethodInfo[Any, Any]:
    if method.client_streaming:
        stream_type = (
            StreamType.BIDI_STREAM if method.server_streaming else StreamType.CLIENT_STREAM
        )
    else:
        stream_type = StreamType.SERVER_STREAM if method.server_streaming else StreamType.UNARY
    return MethodInfo(
        name=method.name,
        service_name=method.containing_service.full_name,
        input=GetMessageClass(method.input_type),
        output=GetMessageClass(method.output_type),
        idempotency_level=IdempotencyLevel.UNKNOWN,
        stream_type=stream_type,
    )


UnaryHandler = Callable[[Any, RequestContext[Any, Any]], Awaitable[Any]]
StreamHandler = Callable[[Any, RequestContext[Any, Any]], AsyncIterator[Any]]


def forwarding_app(service: ServiceDescriptor, forwarder: Forwarder) -> DescriptorApp:
    """The connectrpc app of one public service, every method forwarded by ``forwarder``.

    Raises:
        ValueError: The service has client-streaming methods (gRPC-Web cannot carry them).
    """
    endpoints: dict[str, Any] = {}
    for method in service.methods:
        if method.client_streaming:
            raise ValueError(f"{method.full_name}: client streaming is not supported at the edge")
        path = f"/{service.full_name}/{method.name}"
        info = _method_info(method)
        if method.server_streaming:
            endpoints[path] = Endpoint.server_stream(
                method=info, function=_forward_stream(path, info.output, forwarder)
            )
        else:
            endpoints[path] = Endpoint.unary(
                method=info, function=_forward_unary(path, info.output, forwarder)
            )
    return DescriptorApp(service, endpoints)


def _forward_unary(path: str, response_class: type[Message], forwarder: Forwarder) -> UnaryHandler:
    async def handle(request: Message, ctx: RequestContext[Any, Any]) -> Message:
        with _Call(path, ctx, stream=False) as call:
            caller = forwarder.authenticate(ctx.request_headers.get("authorization"))
            call.user = caller.identity.user_id
            return await forwarder.unary(
                path, request, response_class, caller=caller, timeout=_timeout(ctx)
            )

    return handle


def _forward_stream(
    path: str, response_class: type[Message], forwarder: Forwarder
) -> StreamHandler:
    async def handle(request: Message, ctx: RequestContext[Any, Any]) -> AsyncIterator[Message]:
        with _Call(path, ctx, stream=True) as call:
            caller = forwarder.authenticate(ctx.request_headers.get("authorization"))
            call.user = caller.identity.user_id
            relay = forwarder.stream(
                path, request, response_class, caller=caller, timeout=_timeout(ctx)
            )
            # aclosing: when the client goes away this generator is closed, and
            # the relay (and with it the backend call) must close too, now.
            async with contextlib.aclosing(relay) as items:
                async for item in items:
                    call.items = (call.items or 0) + 1
                    yield item

    return handle


def health_app(health: EdgeHealth) -> DescriptorApp:
    """The connectrpc app of ``grpc.health.v1.Health`` (no token needed)."""
    methods = _HEALTH.methods_by_name

    def unary(name: str, fn: Callable[[Any], Awaitable[Message]]) -> Any:
        path = f"/{_HEALTH.full_name}/{name}"

        async def handle(request: Message, ctx: RequestContext[Any, Any]) -> Message:
            with _Call(path, ctx, stream=False):
                return await fn(request)

        return Endpoint.unary(method=_method_info(methods[name]), function=handle)

    async def watch(
        request: health_pb2.HealthCheckRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[Message]:
        with _Call(f"/{_HEALTH.full_name}/Watch", ctx, stream=True):
            async with contextlib.aclosing(health.watch(request)) as items:
                async for item in items:
                    yield item

    endpoints: dict[str, Any] = {
        f"/{_HEALTH.full_name}/Check": unary("Check", health.check),
        f"/{_HEALTH.full_name}/List": unary("List", health.list),
        f"/{_HEALTH.full_name}/Watch": Endpoint.server_stream(
            method=_method_info(methods["Watch"]), function=watch
        ),
    }
    return DescriptorApp(_HEALTH, endpoints)


# -- the router -----------------------------------------------------------------------


def _grpc_over_http1(scope: Scope) -> bool:
    content_type = header(scope, b"content-type") or ""
    return (
        str(scope.get("http_version", "1.1")).startswith("1")
        and content_type.startswith("application/grpc")
        and not content_type.startswith("application/grpc-web")
    )


class EdgeApp:
    """Routes by gRPC service name to the connectrpc apps; other paths to the static files."""

    def __init__(
        self,
        services: Mapping[str, ASGIApp],
        static: ASGIApp | None = None,
        *,
        on_startup: Callable[[], Awaitable[None]] | None = None,
        on_shutdown: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Args: services maps full service names to apps; the hooks run at ASGI lifespan start/end."""
        self._services = dict(services)
        self._static = static
        self._on_startup = on_startup
        self._on_shutdown = on_shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            # No WebSockets here; refuse the handshake.
            await send({"type": "websocket.close", "code": 1008})
            return
        parts = scope["path"].split("/")
        app = self._services.get(parts[1]) if len(parts) == 3 else None
        if app is not None and _grpc_over_http1(scope):
            # Native gRPC needs HTTP/2 trailers; say so instead of failing inside connectrpc.
            await plain_response(
                send, 505, "gRPC needs HTTP/2; over HTTP/1.1 use gRPC-Web or Connect\n"
            )
        elif app is not None:
            await app(scope, receive, send)
        elif self._static is not None and scope["method"] in ("GET", "HEAD"):
            await self._static(scope, receive, send)
        else:
            await plain_response(send, 404, "not found\n", head=scope["method"] == "HEAD")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self._on_startup:
                        await self._on_startup()
                except Exception as exc:  # reported to the server, which exits
                    logger.exception("edge start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._on_shutdown:
                    await self._on_shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def own_origins(host: str, port: int) -> list[str]:
    """The browser origins of the edge's own pages (its static web client)."""
    origins = [f"http://{host}:{port}"]
    if host in ("127.0.0.1", "::1", "localhost"):
        origins += [f"http://localhost:{port}", f"http://127.0.0.1:{port}"]
    return sorted(set(origins))


def build_app(
    cfg: EdgeConfig,
    forwarder: Forwarder,
    health: EdgeHealth,
    origins: Iterable[str],
    *,
    on_startup: Callable[[], Awaitable[None]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> ASGIApp:
    """The whole edge as one ASGI app (CORS around the router).

    Args:
        cfg: The edge's configuration (CORS origins, static directory).
        forwarder: Relays the public services.
        health: The edge's health.
        origins: The edge's own origins, allowed besides ``cfg.cors_origins``.
        on_startup: Run at ASGI lifespan start-up.
        on_shutdown: Run at ASGI lifespan shutdown.
    """
    services: dict[str, ASGIApp] = {}
    for fd in PUBLIC_FILES:
        for service in fd.services_by_name.values():
            if service.full_name in ROUTES:
                services[service.full_name] = forwarding_app(service, forwarder)
    services[_HEALTH.full_name] = health_app(health)
    # The error detail types too, so grpcurl can print the details of a status.
    services.update(reflection_apps([*PUBLIC_FILES, health_pb2.DESCRIPTOR, *ERROR_FILES]))
    own = list(origins)
    static = StaticFiles(Path(cfg.static_dir)) if cfg.static_dir else None
    # /config.json and the dev-only /dev/token sit in front of the static files.
    web = WebClientApp.from_config(cfg, static, own)
    router = EdgeApp(services, web, on_startup=on_startup, on_shutdown=on_shutdown)
    return Cors(router, OriginPolicy([*own, *cfg.cors_origins]), max_age=cfg.cors_max_age)


# -- the process ----------------------------------------------------------------------


def _listen(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, int(port)))
    # Listening before the server runs: early connections wait in the backlog.
    sock.listen(1024)
    return sock


class EdgeServer:
    """The edge process: one hypercorn port, a metrics port, a ready file, graceful drain."""

    def __init__(self, cfg: EdgeConfig) -> None:
        """Prepares the edge (nothing is bound until :meth:`run_until_signal`).

        Raises:
            ValueError: No JWT public key, a backend kind without an address, or a
            dev token key on a non-loopback listener.
        """
        if not cfg.jwt_public_key:
            raise ValueError("edge: jwt_public_key is required")
        check_dev_token(cfg)
        self.cfg = cfg
        verifier = TokenVerifier(
            Path(cfg.jwt_public_key).read_bytes(), issuer=cfg.jwt_issuer, audience=cfg.jwt_audience
        )
        self.forwarder = Forwarder(
            region=cfg.region,
            verifier=verifier,
            backends={
                "command": [cfg.command_backend],
                "query": [cfg.query_backend],
                "notification": list(cfg.notification_backends),
            },
            channels_per_backend=cfg.channels_per_backend,
            default_timeout=cfg.default_timeout,
        )
        self.health = EdgeHealth([*ROUTES])
        self._verifier = verifier
        self.grpc: GrpcProxy | None = None  # grpc.aio objects belong to the running loop
        self.address: str | None = None
        self.grpc_address: str | None = None
        self.metrics_port: int | None = None
        self._stopping = asyncio.Event()

    def request_stop(self) -> None:
        """Asks :meth:`run_until_signal` to drain and stop (as SIGTERM does)."""
        self._stopping.set()

    def _write_ready(self) -> None:
        assert self.address is not None
        host = self.address.rpartition(":")[0]
        data = {
            "service": "edge",
            "region": self.cfg.region,
            "pid": os.getpid(),
            "grpc": self.grpc_address,
            "http": f"http://{self.address}",
            "metrics": f"http://{host}:{self.metrics_port}/metrics" if self.metrics_port else None,
        }
        path = Path(self.cfg.ready_file)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    async def run_until_signal(self) -> None:
        """Serves until SIGTERM/SIGINT (or :meth:`request_stop`), then drains and stops."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stopping.set)
        self.grpc = GrpcProxy(self.cfg, self._verifier)
        grpc_port = await self.grpc.start(self.cfg.grpc_listen)
        self.grpc_address = f"{self.cfg.grpc_listen.rpartition(':')[0]}:{grpc_port}"
        sock = _listen(self.cfg.http_listen)
        host, port = sock.getsockname()[:2]
        self.address = f"{host}:{port}"
        if self.cfg.metrics_listen:
            mhost, _, mport = self.cfg.metrics_listen.rpartition(":")
            http_server, _thread = start_http_server(int(mport), addr=mhost)
            self.metrics_port = int(http_server.server_port)

        async def started() -> None:
            if self.cfg.ready_file:
                self._write_ready()
            logger.info(
                "edge %s serving gRPC on %s; gRPC-Web, Connect and h2c gRPC on %s%s",
                self.cfg.region,
                self.grpc_address,
                self.address,
                f", static files from {self.cfg.static_dir}" if self.cfg.static_dir else "",
            )

        async def stopped() -> None:
            await self.forwarder.close()
            if self.grpc is not None:
                await self.grpc.stop(self.cfg.shutdown_grace)

        app = build_app(
            self.cfg,
            self.forwarder,
            self.health,
            own_origins(host, port),
            on_startup=started,
            on_shutdown=stopped,
        )
        config = HypercornConfig()
        # hypercorn adopts the listening socket; ours lets go of the descriptor
        # so it is closed exactly once, by hypercorn.
        config.bind = [f"fd://{sock.detach()}"]
        config.h2_max_concurrent_streams = self.cfg.max_concurrent_streams
        # hypercorn closes an HTTP/2 connection after keep_alive_max_requests
        # (default 1000) requests; frames the client already sent then hit a
        # CLOSED h2 connection (PROTOCOL_ERROR GOAWAY) and every call in flight on
        # it fails. gRPC clients keep one connection for hours: no such limit.
        config.keep_alive_max_requests = 2**62
        config.graceful_timeout = self.cfg.shutdown_grace
        config.accesslog = None  # one line per RPC comes from _Call
        config.errorlog = logging.getLogger("hypercorn.error")

        async def shutdown_trigger() -> None:
            await self._stopping.wait()
            logger.info(
                "edge %s draining (%d stream(s))", self.cfg.region, self.forwarder.active_streams
            )
            self.health.set_not_serving()
            self.forwarder.drain()

        await serve(app, config, shutdown_trigger=shutdown_trigger, mode="asgi")  # type: ignore[arg-type]
        logger.info("edge %s stopped", self.cfg.region)
