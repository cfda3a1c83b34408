"""Starting one public edge per region, after the services.

:func:`edges_hook` returns a :data:`~mesh.supervisor.ServiceHook` that runs
after :func:`mesh.services_plan.services_hook` (it reads the endpoints that
hook published). Per region it writes the edge's JSON config, starts
``python -m services.edge`` and waits until its ready file names the bound
port and gRPC health over that port answers SERVING (so h2c works before
anyone is told the address). The edge's backends are the region's own Query
and Notification services and the Command Service *as reached from that
region*: in a secondary region that is the WAN link proxy to the primary, so
commands entering there pay the real cross-region latency.

Each region's endpoints gain ``edge``: ``{"grpc": "127.0.0.1:P", "http":
"http://127.0.0.1:P", "metrics": ...}`` (one port serves gRPC over h2c,
gRPC-Web and Connect), and ``web`` when the edge serves a web client.

Example:
    >>> async def demo(topology, run_dir) -> None:  # doctest: +SKIP
    ...     async with Mesh(topology, run_dir, hooks=[services_hook(), edges_hook()]) as mesh:
    ...         print(mesh.endpoints["eu"]["edge"]["grpc"])
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.paths import repo_root
from mesh.services_plan import ServiceProcess
from mesh.supervisor import Mesh, ServiceHook

__all__ = ["EdgeSettings", "edges_hook"]


@dataclass(frozen=True)
class EdgeSettings:
    """Knobs of the edges the harness starts."""

    static_dir: Path | None = None
    """Web client served under ``/``; None: ``<repo>/web`` if it exists, else none."""
    cors_origins: tuple[str, ...] | None = None
    """Extra allowed browser origins; None: the edge's default (``http://localhost:*``)."""
    log_level: str = "INFO"
    """Root log level of the edge processes."""
    access_log: bool = True
    """Log one line per RPC at the edge."""


def _static_dir(settings: EdgeSettings) -> Path | None:
    if settings.static_dir is not None:
        return settings.static_dir
    web = repo_root() / "web"
    return web if web.is_dir() else None


def edges_hook(settings: EdgeSettings | None = None) -> ServiceHook:
    """The hook that starts every region's edge and records its endpoints."""
    cfg = settings or EdgeSettings()

    async def start(mesh: Mesh) -> None:
        public_key = mesh.extra_state.get("jwt_public_key")
        missing = [r for r in mesh.topology.region_names if "grpc" not in mesh.endpoints[r]]
        if not public_key or missing:
            raise RuntimeError(
                f"edges_hook must run after services_hook (no service endpoints for {missing})"
            )
        static = _static_dir(cfg)
        edges: list[ServiceProcess] = []
        for region in mesh.topology.region_names:
            backends = mesh.endpoints[region]["grpc"]
            config: dict[str, Any] = {
                "jwt_public_key": public_key,
                "log_level": cfg.log_level,
                "access_log": cfg.access_log,
                "command_backend": backends["command"],
                "query_backend": backends["query"],
                "notification_backends": list(backends["notification"]),
                "static_dir": str(static) if static else "",
            }
            if cfg.cors_origins is not None:
                config["cors_origins"] = list(cfg.cors_origins)
            edge = ServiceProcess(mesh, "edge", region, 1, config)
            mesh.processes[edge.name] = edge.process
            mesh.services[edge.name] = edge
            edges.append(edge)

        async def stop_all() -> None:
            await asyncio.gather(*(edge.stop() for edge in edges), return_exceptions=True)

        mesh.on_stop(stop_all)
        await asyncio.gather(*(edge.start() for edge in edges))
        for edge in edges:
            assert edge.address is not None
            endpoint: dict[str, Any] = {"grpc": edge.address, "http": f"http://{edge.address}"}
            if edge.metrics:
                endpoint["metrics"] = edge.metrics
            mesh.endpoints[edge.region]["edge"] = endpoint
            if static and (static / "index.html").is_file():
                mesh.endpoints[edge.region]["web"] = f"http://{edge.address}/"

    return start
