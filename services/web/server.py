"""The web service process: hypercorn (HTTP/1.1) and a grpc.aio server, behind the edge.

Example:
    >>> async def main(cfg: WebConfig) -> None:  # doctest: +SKIP
    ...     await WebServer(cfg).run_until_signal()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2_grpc
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from services.web.api import EdgeHealth, enable_reflection
from services.web.config import WebConfig
from services.web.static import StaticFiles
from services.web.webclient import WebClientApp, check_dev_token

__all__ = ["WebServer"]

logger = logging.getLogger(__name__)


def _listen(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    # Listening before the server runs: early connections wait in the backlog.
    sock.listen(1024)
    return sock


class WebServer:
    """One region's web service: the page and its endpoints over HTTP, health and reflection over gRPC."""

    def __init__(self, cfg: WebConfig) -> None:
        """Prepares the service (nothing is bound until :meth:`run_until_signal`).

        Raises:
            ValueError: A dev token key on a non-loopback listener, or bad ``health_clusters``.
        """
        check_dev_token(cfg)
        self.cfg = cfg
        self.health = EdgeHealth(cfg.envoy_admin, EdgeHealth.parse_pairs(cfg.health_clusters))
        static = StaticFiles(Path(cfg.static_dir)) if cfg.static_dir else None
        self.app = WebClientApp.from_config(cfg, static)
        self._stopping = asyncio.Event()

    def request_stop(self) -> None:
        """Asks :meth:`run_until_signal` to stop (as SIGTERM does)."""
        self._stopping.set()

    def _write_ready(self, grpc_address: str, http_address: str) -> None:
        data = {
            "service": "web",
            "region": self.cfg.region,
            "pid": os.getpid(),
            "grpc": grpc_address,
            "http": f"http://{http_address}",
            "metrics": None,
        }
        path = Path(self.cfg.ready_file)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    async def run_until_signal(self) -> None:
        """Serves until SIGTERM/SIGINT (or :meth:`request_stop`), then stops."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stopping.set)
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        enable_reflection(server)
        port = server.add_insecure_port(self.cfg.grpc_listen)
        if port == 0:
            raise RuntimeError(f"web: cannot bind {self.cfg.grpc_listen}")
        await server.start()
        grpc_address = f"{self.cfg.grpc_listen.rpartition(':')[0]}:{port}"
        sock = _listen(self.cfg.http_listen)
        host, http_port = sock.getsockname()[:2]
        http_address = f"{host}:{http_port}"
        config = HypercornConfig()
        # hypercorn adopts the listening socket; ours lets go of the descriptor.
        config.bind = [f"fd://{sock.detach()}"]
        config.graceful_timeout = self.cfg.shutdown_grace
        config.accesslog = None  # Envoy's access log has every request
        config.errorlog = logging.getLogger("hypercorn.error")
        if self.cfg.ready_file:
            self._write_ready(grpc_address, http_address)
        logger.info(
            "web %s serving HTTP on %s (static files %s, dev tokens %s) and gRPC on %s",
            self.cfg.region,
            http_address,
            self.cfg.static_dir or "none",
            "on" if self.app.dev_tokens else "off",
            grpc_address,
        )

        async def shutdown_trigger() -> None:
            await self._stopping.wait()
            self.health.set_not_serving()

        try:
            await serve(self.app, config, shutdown_trigger=shutdown_trigger, mode="asgi")  # type: ignore[arg-type]
        finally:
            await server.stop(self.cfg.shutdown_grace)
            await self.health.close()
        logger.info("web %s stopped", self.cfg.region)
