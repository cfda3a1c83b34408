"""``chatmesh topology render``: every config a topology generates, written to a folder.

For reading and diffing: the NATS server configs (with a fixed example port
plan instead of the allocated ports ``chatmesh up`` uses, and placeholder
passwords), the JetStream stream definitions, the WAN link plan, and — where
those generators exist — the Envoy bootstraps and docker-compose file.

Example:
    >>> import tempfile, pathlib
    >>> from mesh.topology import load
    >>> paths = render_all(load("dev"), pathlib.Path(tempfile.mkdtemp()))
    >>> sorted(p.name for p in paths)[:2]
    ['links.json', 'nats-eu-1.conf']
"""

from __future__ import annotations

import json
from pathlib import Path

from mesh.bus.streams import all_stream_configs
from mesh.deploy.nats import (
    Credentials,
    NatsNodePlan,
    make_credentials,
    render_server_conf,
    service_permissions,
)
from mesh.topology import Topology

__all__ = ["example_nats_plans", "render_all"]

_BASE = {"client": 14222, "http": 18222, "cluster": 16222, "gateway": 17222}


def example_nats_plans(topology: Topology) -> dict[str, list[NatsNodePlan]]:
    """A deterministic port plan: region r, node i -> base + 10*r + i; gateway proxies on 19000+."""
    plans: dict[str, list[NatsNodePlan]] = {}
    names = topology.region_names
    for r, region in enumerate(names):
        nodes = topology.region(region).nats_nodes
        ports = [{k: v + 10 * r + i for k, v in _BASE.items()} for i in range(1, nodes + 1)]
        gateways: dict[str, list[str]] = {}
        for d, dst in enumerate(names):
            if dst == region:
                continue
            dst_nodes = topology.region(dst).nats_nodes
            gateways[dst] = [
                f"nats://127.0.0.1:{19000 + 100 * r + 10 * d + j}" for j in range(1, dst_nodes + 1)
            ]
        plans[region] = [
            NatsNodePlan(
                region=region,
                index=i,
                client_port=p["client"],
                http_port=p["http"],
                cluster_port=p["cluster"],
                gateway_port=p["gateway"],
                store_dir=f"./data/nats-{region}-{i}",
                routes=tuple(
                    f"nats-route://127.0.0.1:{q['cluster']}"
                    for j, q in enumerate(ports, 1)
                    if j != i or nodes == 1
                ),
                gateways=gateways,
            )
            for i, p in enumerate(ports, start=1)
        ]
    return plans


def render_all(topology: Topology, outdir: Path) -> list[Path]:
    """Writes every generated config for ``topology`` under ``outdir``; returns the paths."""
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    creds = {u: Credentials(u, f"<{u}-password>") for u in make_credentials(topology)}
    plans = example_nats_plans(topology)
    for region_plans in plans.values():
        for plan in region_plans:
            path = outdir / f"nats-{plan.server_name}.conf"
            path.write_text(render_server_conf(topology, plan, creds))
            written.append(path)
    streams = all_stream_configs(topology)
    path = outdir / "streams.json"
    path.write_text(json.dumps(streams, indent=2) + "\n")
    written.append(path)
    links = []
    for link in topology.links:
        carries = ["nats gateways", "valkey replication", "commands to the primary",
                   "cassandra inter-DC (production stores)"]  # fmt: skip
        if topology.every_region:
            carries.remove("commands to the primary")  # each region writes itself
        links.append({"regions": [link.a, link.b], "latency_ms": link.latency_ms,
                      "jitter_ms": link.jitter_ms, "carries": carries})  # fmt: skip
    path = outdir / "links.json"
    path.write_text(json.dumps(links, indent=2) + "\n")
    written.append(path)
    path = outdir / "nats-permissions.json"
    path.write_text(json.dumps(service_permissions(topology), indent=2) + "\n")
    written.append(path)
    try:
        from mesh.deploy.envoy import write_envoy_configs
    except ImportError:
        pass
    else:
        written += list(write_envoy_configs(topology, outdir / "envoy"))
    return written
