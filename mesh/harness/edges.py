"""Starting one public edge per region: Envoy, with the region's web service behind it.

:func:`edges_hook` returns a :data:`~mesh.harness.supervisor.ServiceHook` that runs
after :func:`mesh.harness.services.services_hook` (it reads the endpoints that
hook published). Per region it

1. allocates the edge's listener and admin ports on loopback (the web service
   and the page's region picker need to know every edge's address up front),
   and writes ``data/web-edges.json`` (the edge list ``/config.json`` serves);
2. starts the region's web service (:mod:`services.web`: the page, ``/config.json``,
   the development-only ``/dev/token``, reflection and the edge's health);
3. renders the region's Envoy bootstrap (:mod:`mesh.deploy.envoy`) from a local
   :class:`~mesh.deploy.envoy.EdgePlan` — loopback upstreams, the run's JWKS,
   the primary's Command Service *as reached from that region* (the WAN link
   proxy in a secondary, so commands entering there pay the real cross-region
   latency; the region's own Command Service in the every-region write mode) — and starts the stock ``envoy`` (:mod:`mesh.harness.envoy`),
   supervised like every service.

Each region's endpoints gain ``edge``: ``{"grpc": "127.0.0.1:P", "http":
"http(s)://127.0.0.1:P", "tls": bool, "ca_file": path-or-None, "admin":
"http://127.0.0.1:A"}`` — one listener for native gRPC, gRPC-Web and Connect
(``http`` is its URL form) — and ``web``, the page's URL, when ``web/`` has one.
With ``tls`` the harness makes a development CA and a certificate for
127.0.0.1/localhost (:mod:`mesh.deploy.tls`); the state then also carries
``edge_tls`` (the CA file and the certificate's SPKI pin for Chromium).

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

from mesh.core.auth import KeyDirectory
from mesh.core.identity import EDGE
from mesh.deploy.envoy import EdgePlan, EdgeTls, Upstream, UpstreamTls, cluster_name
from mesh.deploy.tls import DevTls
from mesh.harness.envoy import EnvoyProcess
from mesh.harness.identity import mesh_pki
from mesh.harness.paths import repo_root
from mesh.harness.ports import allocate
from mesh.harness.services import ServiceProcess
from mesh.harness.supervisor import Mesh, ServiceHook

__all__ = ["LOCAL_ORIGINS", "EdgeSettings", "edges_hook"]

LOCAL_ORIGINS: tuple[str, ...] = (
    "http://localhost:*",
    "http://127.0.0.1:*",
    "https://localhost:*",
    "https://127.0.0.1:*",
)
"""Origins the harness's edges allow: local dev servers, and each other's pages
(a page loaded from one region's edge may talk to another region's)."""

_HOST = "127.0.0.1"


@dataclass(frozen=True)
class EdgeSettings:
    """Knobs of the edges the harness starts."""

    static_dir: Path | None = None
    """Web client served under ``/``; None: ``<repo>/web`` if it exists, else none."""
    cors_origins: tuple[str, ...] | None = None
    """Allowed browser origins; None: :data:`LOCAL_ORIGINS`."""
    dev_tokens: bool = True
    """Serve ``GET /dev/token`` (development only: mints tokens for anyone on this machine)."""
    tls: bool = False
    """Terminate TLS on the public listeners with a development CA's certificate."""
    log_level: str = "INFO"
    """Root log level of the web services."""
    envoy_log_level: str = "info"
    """Envoy's ``--log-level``."""
    health_interval_s: float = 2.0
    """Envoy's active health-check interval for the local upstreams (loopback: cheap)."""


def _static_dir(settings: EdgeSettings) -> Path | None:
    if settings.static_dir is not None:
        return settings.static_dir
    web = repo_root() / "web"
    return web if web.is_dir() else None


def edges_hook(settings: EdgeSettings | None = None) -> ServiceHook:
    """The hook that starts every region's edge and records its endpoints."""
    cfg = settings or EdgeSettings()

    async def start(mesh: Mesh) -> None:
        topo = mesh.topology
        missing = [r for r in topo.region_names if "grpc" not in mesh.endpoints[r]]
        if "jwt_private_key" not in mesh.extra_state or missing:
            raise RuntimeError(
                f"edges_hook must run after services_hook (no service endpoints for {missing})"
            )
        keys = KeyDirectory(Path(mesh.extra_state["jwt_private_key"]).parent)
        tls: DevTls | None = None
        if cfg.tls:
            tls = DevTls(mesh.run_dir / "tls")
            tls.ensure()
            mesh.extra_state["edge_tls"] = {
                "ca_file": str(tls.ca_path),
                "spki_sha256": tls.spki_pin(),
            }
        scheme = "https" if tls else "http"
        ports = {r: (allocate(_HOST), allocate(_HOST)) for r in topo.region_names}
        urls = {r: f"{scheme}://{_HOST}:{ports[r][0]}" for r in topo.region_names}
        edges_file = mesh.run_dir / "data" / "web-edges.json"
        _write_edges_file(edges_file, mesh, urls)
        static = _static_dir(cfg)
        origins = LOCAL_ORIGINS if cfg.cors_origins is None else cfg.cors_origins

        webs: dict[str, ServiceProcess] = {}
        for region in topo.region_names:
            listen, admin = ports[region]
            health = {
                "chatmesh.v1.CommandService": cluster_name("command", region, topology=topo),
                "chatmesh.v1.QueryService": cluster_name("query", region, topology=topo),
                "chatmesh.v1.NotificationService": cluster_name(
                    "notification", region, topology=topo
                ),
            }
            config: dict[str, Any] = {
                "log_level": cfg.log_level,
                "static_dir": str(static) if static else "",
                "edges_file": str(edges_file),
                "edge_url": urls[region],
                "edge_listen": f"{_HOST}:{listen}",
                "envoy_admin": f"http://{_HOST}:{admin}",
                "health_clusters": [f"{svc}={cluster}" for svc, cluster in health.items()],
                "http_listen": f"{_HOST}:0",
                "metrics_listen": "",
            }
            if cfg.dev_tokens:
                config["dev_token_keys"] = str(keys.path)
            web = ServiceProcess(mesh, "web", region, 1, config)
            mesh.processes[web.name] = web.process
            mesh.services[web.name] = web
            webs[region] = web

        envoys: list[EnvoyProcess] = []

        async def stop_all() -> None:
            await asyncio.gather(*(e.stop() for e in envoys), return_exceptions=True)
            await asyncio.gather(*(w.stop() for w in webs.values()), return_exceptions=True)

        mesh.on_stop(stop_all)
        await asyncio.gather(*(web.start() for web in webs.values()))
        for web in webs.values():
            web.watch()

        for region in topo.region_names:
            listen, admin = ports[region]
            backends = mesh.endpoints[region]["grpc"]
            web = webs[region]
            assert web.address is not None
            upstream_tls = None
            if "service_tls" in mesh.extra_state:
                # The services speak mutual TLS: the edge presents edge/<region>,
                # the one identity whose x-chatmesh-* headers they believe.
                files = mesh_pki(mesh).issue(EDGE, region)
                upstream_tls = UpstreamTls(str(files.cert), str(files.key), str(files.ca))
            plan = EdgePlan(
                region=region,
                listen=Upstream(_HOST, listen),
                admin=Upstream(_HOST, admin),
                command=Upstream.parse(backends["command"]),
                command_peers=tuple(Upstream.parse(a) for a in backends.get("commands", [])[1:]),
                query=(Upstream.parse(backends["query"]),),
                notification=tuple(Upstream.parse(a) for a in backends["notification"]),
                web_http=Upstream.parse(web.info["http"].split("//", 1)[1]),
                web_grpc=Upstream.parse(web.address),
                jwks_path=str(keys.jwks_path),
                cors_origins=tuple(origins),
                tls=EdgeTls(str(tls.cert_path), str(tls.key_path)) if tls else None,
                upstream_tls=upstream_tls,
                dev_tokens=cfg.dev_tokens,
                health_interval_s=cfg.health_interval_s,
            )
            envoy = EnvoyProcess(topo, plan, mesh.run_dir, log_level=cfg.envoy_log_level)
            mesh.processes[envoy.name] = envoy.process
            mesh.services[envoy.name] = envoy
            envoys.append(envoy)
        await asyncio.gather(*(envoy.start() for envoy in envoys))
        for envoy in envoys:
            envoy.watch()
            region = envoy.region
            mesh.endpoints[region]["edge"] = {
                "grpc": envoy.address,
                "http": urls[region],
                "tls": tls is not None,
                "ca_file": str(tls.ca_path) if tls else None,
                "admin": envoy.admin_url,
            }
            if static and (static / "index.html").is_file():
                mesh.endpoints[region]["web"] = f"{urls[region]}/"

    return start


def _write_edges_file(path: Path, mesh: Mesh, urls: dict[str, str]) -> None:
    """Writes the edge list the web client's region picker shows (atomically)."""
    data = {
        "edges": [
            {"region": region, "url": url, "primary": region == mesh.topology.primary}
            for region, url in urls.items()
        ]
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
