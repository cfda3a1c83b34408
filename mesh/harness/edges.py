"""Starting one public edge per region, after the services.

:func:`edges_hook` returns a :data:`~mesh.harness.supervisor.ServiceHook` that runs
after :func:`mesh.harness.services.services_hook` (it reads the endpoints that
hook published). Per region it writes the edge's JSON config, starts
``python -m services.edge`` and waits until its ready file names the bound
ports and gRPC health answers SERVING. The edge's backends are the region's own Query
and Notification services and the Command Service *as reached from that
region*: in a secondary region that is the WAN link proxy to the primary, so
commands entering there pay the real cross-region latency.

Each region's endpoints gain ``edge``: ``{"grpc": "127.0.0.1:P", "http":
"http://127.0.0.1:Q", "metrics": ...}`` — native gRPC on P (gRPC's C core: the
fast path for SDKs and grpcurl), gRPC-Web, Connect and h2c gRPC on Q (browsers,
static files) — and ``web`` when the edge serves a web client.

For the web client (``web/``) the harness also writes ``data/web-edges.json``
once every edge is up (each edge serves it inside ``GET /config.json``, so the
page can offer every region), allows the other local edges' origins (they all
listen on 127.0.0.1, on ports chosen at start), and, development only, lets
each edge mint tokens at ``GET /dev/token?user=NAME`` with the run's own key
(:mod:`services.edge.webclient`; the production compose/Envoy shape never does).

Example:
    >>> async def demo(topology, run_dir) -> None:  # doctest: +SKIP
    ...     async with Mesh(topology, run_dir, hooks=[services_hook(), edges_hook()]) as mesh:
    ...         print(mesh.endpoints["eu"]["edge"]["grpc"])
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.harness.paths import repo_root
from mesh.harness.services import ServiceProcess
from mesh.harness.supervisor import Mesh, ServiceHook

__all__ = ["LOCAL_ORIGINS", "EdgeSettings", "edges_hook"]

LOCAL_ORIGINS: tuple[str, ...] = ("http://localhost:*", "http://127.0.0.1:*")
"""Origins the harness's edges allow: local dev servers, and each other's pages
(a page loaded from one region's edge may talk to another region's)."""


@dataclass(frozen=True)
class EdgeSettings:
    """Knobs of the edges the harness starts."""

    static_dir: Path | None = None
    """Web client served under ``/``; None: ``<repo>/web`` if it exists, else none."""
    cors_origins: tuple[str, ...] | None = None
    """Extra allowed browser origins; None: :data:`LOCAL_ORIGINS`."""
    dev_tokens: bool = True
    """Serve ``GET /dev/token`` (development only: mints tokens for anyone on this machine)."""
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
        edges_file = mesh.run_dir / "data" / "web-edges.json"
        edges_file.unlink(missing_ok=True)  # a previous run's ports are wrong now
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
                "edges_file": str(edges_file),
                "cors_origins": list(
                    LOCAL_ORIGINS if cfg.cors_origins is None else cfg.cors_origins
                ),
            }
            if cfg.dev_tokens:
                config["dev_token_keys"] = str(Path(mesh.extra_state["jwt_private_key"]).parent)
            edge = ServiceProcess(mesh, "edge", region, 1, config)
            mesh.processes[edge.name] = edge.process
            mesh.services[edge.name] = edge
            edges.append(edge)

        async def stop_all() -> None:
            await asyncio.gather(*(edge.stop() for edge in edges), return_exceptions=True)

        mesh.on_stop(stop_all)
        await asyncio.gather(*(edge.start() for edge in edges))
        for edge in edges:
            edge.watch()
        for edge in edges:
            assert edge.address is not None
            endpoint: dict[str, Any] = {"grpc": edge.address, "http": edge.info["http"]}
            if edge.metrics:
                endpoint["metrics"] = edge.metrics
            mesh.endpoints[edge.region]["edge"] = endpoint
            if static and (static / "index.html").is_file():
                mesh.endpoints[edge.region]["web"] = f"{edge.info['http']}/"
        _write_edges_file(edges_file, mesh, edges)

    return start


def _write_edges_file(path: Path, mesh: Mesh, edges: list[ServiceProcess]) -> None:
    """Writes the edge list the web client's region picker shows (atomically)."""
    data = {
        "edges": [
            {
                "region": edge.region,
                "url": edge.info["http"],
                "primary": edge.region == mesh.topology.primary,
            }
            for edge in edges
        ]
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
