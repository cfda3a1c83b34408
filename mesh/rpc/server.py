"""One way to run a chatmesh gRPC service: interceptors, health, reflection, metrics, shutdown.

Every ``services/<name>/__main__.py`` builds a :class:`GrpcServer`, adds its
servicers, and calls :meth:`GrpcServer.run_until_signal`. The server gets the
standard interceptor chain, mutual TLS with service identities when configured
(``tls_cert``: :mod:`mesh.rpc.interceptors.peer`), gRPC health checking (NOT_SERVING while draining),
server reflection (so ``grpcurl list``/``describe`` work), a Prometheus HTTP
endpoint, HTTP/2 keepalive (dead client streams are noticed), and a ready file
with its bound addresses for the harness.

Example:
    >>> async def main(config) -> None:  # doctest: +SKIP
    ...     server = GrpcServer(config, "query")
    ...     server.add(query_service_pb2_grpc.add_QueryServiceServicer_to_server, servicer,
    ...                "chatmesh.v1.QueryService")
    ...     await server.run_until_signal()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import _async as health_aio, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Histogram, start_http_server

from mesh.core.auth import TokenVerifier
from mesh.core.config import CommonConfig
from mesh.core.pauses import PauseProbe, tune_gc
from mesh.rpc.interceptors import standard_chain

__all__ = ["GrpcServer", "configure_logging", "server_options"]

logger = logging.getLogger(__name__)

_PAUSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
GC_PAUSE = Histogram(
    "chatmesh_gc_pause_seconds",
    "Cyclic garbage collections and how long each held the process (mesh.core.pauses)",
    ["service", "generation"],
    buckets=_PAUSE_BUCKETS,
)
LOOP_LAG = Histogram(
    "chatmesh_event_loop_lag_seconds",
    "How late a 20 ms timer of the event loop fired: time the loop was held by other work",
    ["service"],
    buckets=_PAUSE_BUCKETS,
)


def configure_logging(level: str, service: str) -> None:
    """Configures the root logger of a service process (entry points only)."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Their INFO lines are per-request noise; ours carry the same facts once.
    for noisy in ("httpx", "cassandra", "pymongo"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def server_options() -> list[tuple[str, Any]]:
    """Channel arguments of every chatmesh server."""
    return [
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.max_receive_message_length", 4 * 1024 * 1024),
        ("grpc.so_reuseport", 0),
    ]


def _server_credentials(config: CommonConfig) -> grpc.ServerCredentials | None:
    """Mutual TLS from the config (None: plaintext).

    Raises:
        ValueError: Only some of ``tls_cert``, ``tls_key``, ``tls_client_ca`` are set.
    """
    files = (config.tls_cert, config.tls_key, config.tls_client_ca)
    if not any(files):
        return None
    if not all(files):
        raise ValueError("tls_cert, tls_key and tls_client_ca are set together or not at all")
    cert, key, ca = (Path(f).read_bytes() for f in files)
    # require_client_auth: a peer without a certificate of the internal CA
    # fails the handshake and never reaches a handler.
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


class GrpcServer:
    """A grpc.aio server with chatmesh's standard wiring."""

    def __init__(
        self,
        config: CommonConfig,
        service: str,
        *,
        authenticated: bool = True,
        public_prefixes: tuple[str, ...] = (),
        peer_roles: Mapping[str, Collection[str]] | None = None,
    ) -> None:
        """Creates the server (not started).

        Args:
            config: The service's configuration.
            service: Short name (``command``, ``query`` ...) for logs and metrics.
            authenticated: Require bearer tokens (False for internal services).
            public_prefixes: Method prefixes that need no token.
            peer_roles: Method prefix -> service identity roles that may call it
                (mutual TLS only, ``config.tls_cert``); other methods are open to
                every peer with a certificate of the internal CA.
        """
        self.config = config
        self.service = service
        verifier = None
        if authenticated:
            if not config.jwt_public_key:
                raise ValueError(f"{service}: jwt_public_key is required")
            verifier = TokenVerifier(
                Path(config.jwt_public_key).read_bytes(),
                issuer=config.jwt_issuer,
                audience=config.jwt_audience,
            )
        self._credentials = _server_credentials(config)
        self.server = grpc.aio.server(
            interceptors=standard_chain(
                service,
                verifier,
                public_prefixes=public_prefixes,
                default_timeout=config.default_timeout,
                access_log=config.access_log,
                peer_roles=dict(peer_roles or {}) if self._credentials else None,
            ),
            options=server_options(),
        )
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names: list[str] = []
        self._on_shutdown: list[Callable[[], Awaitable[None]]] = []
        self._on_drain: list[Callable[[], Awaitable[None]]] = []
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._stopping = asyncio.Event()
        self.pauses: PauseProbe | None = None
        """GC pauses and event-loop lag, exported as metrics once started."""
        self.serving = asyncio.Event()
        """Set once :meth:`start` has bound the port and the health service answers."""

    def add(
        self, register: Callable[[Any, grpc.aio.Server], None], servicer: Any, full_name: str
    ) -> None:
        """Adds a servicer with its generated ``add_…_to_server`` function."""
        register(servicer, self.server)
        self._service_names.append(full_name)

    def on_shutdown(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Registers a coroutine function run after the server stops (newest first)."""
        self._on_shutdown.append(hook)

    def on_drain(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Registers a coroutine function run when draining starts, before the server stops.

        Used to end streams with a proper status rather than have them cancelled.
        """
        self._on_drain.append(hook)

    @property
    def address(self) -> str:
        """``host:port`` the server is bound to."""
        host = self.config.grpc_listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Binds, starts serving, and writes the ready file."""
        reflection.enable_server_reflection(
            [
                *self._service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        if self._credentials is not None:
            self.port = self.server.add_secure_port(self.config.grpc_listen, self._credentials)
        else:
            self.port = self.server.add_insecure_port(self.config.grpc_listen)
        if self.port == 0:
            raise RuntimeError(f"{self.service}: cannot bind {self.config.grpc_listen}")
        await self.server.start()
        if self.config.metrics_listen:
            host, _, port = self.config.metrics_listen.rpartition(":")
            http_server, _thread = start_http_server(int(port), addr=host)
            self.metrics_port = int(http_server.server_port)
        for name in self._service_names:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        if self.config.ready_file:
            self._write_ready()
        # Start-up is over: what it allocated stays, so the collector stops
        # traversing it (CHATMESH_GC=default keeps CPython's settings, to compare).
        if os.environ.get("CHATMESH_GC", "tuned") != "default":
            tune_gc()
        gc_children = [GC_PAUSE.labels(self.service, str(g)) for g in range(3)]
        # A 100 ms ticker: a service's idle cost stays small (at 20 ms the seven
        # services' tickers showed in the single bench's idle CPU, 1.5 -> 4.7 %).
        self.pauses = PauseProbe(
            interval=0.1,
            on_gc=lambda gen, seconds: gc_children[gen].observe(seconds),
            on_lag=LOOP_LAG.labels(self.service).observe,
        )
        self.pauses.start()
        self.serving.set()
        logger.info(
            "%s serving gRPC on %s (metrics port %s)", self.service, self.address, self.metrics_port
        )

    def _write_ready(self) -> None:
        host = self.config.grpc_listen.rsplit(":", 1)[0]
        data = {
            "service": self.service,
            "instance_id": self.config.instance_id,
            "pid": os.getpid(),
            "grpc": self.address,
            "tls": self._credentials is not None,
            "metrics": f"http://{host}:{self.metrics_port}/metrics" if self.metrics_port else None,
        }
        path = Path(self.config.ready_file)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    async def stop(self) -> None:
        """Drains (health NOT_SERVING, in-flight calls get the grace period) and stops."""
        await self.health.enter_graceful_shutdown()
        for drain in self._on_drain:
            try:
                await drain()
            except Exception:
                logger.exception("drain hook failed")
        await self.server.stop(self.config.shutdown_grace)
        if self.pauses is not None:
            self.pauses.stop()
        while self._on_shutdown:
            hook = self._on_shutdown.pop()
            try:
                await hook()
            except Exception:
                logger.exception("shutdown hook failed")

    async def run_until_signal(self) -> None:
        """Starts, serves until SIGTERM/SIGINT, then stops."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stopping.set)
        await self.start()
        await self._stopping.wait()
        logger.info("%s shutting down", self.service)
        await self.stop()
