"""NATS server configuration generated from the topology: users, permissions, servers.

Pure (no processes): turns a :class:`~mesh.topology.Topology` plus a port plan
into nats-server configuration files. The harness (:mod:`mesh.harness.supervisor`)
writes them with allocated ports, the compose generator with container ports.
Subjects and stream names come from :mod:`mesh.bus.subjects`.

Example:
    >>> from mesh.topology import load
    >>> sorted(service_permissions(load("dev")))[:3]
    ['command', 'fanout', 'notification-eu']
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from mesh.bus.lease import LEASE_BUCKET
from mesh.bus.streams import parse_size
from mesh.bus.subjects import EVENTS_STREAM, Subjects
from mesh.topology import Topology

__all__ = [
    "GATEWAY_ADVERTISE_SENTINEL",
    "Credentials",
    "NatsNodePlan",
    "make_credentials",
    "render_server_conf",
    "service_permissions",
]

# The gateway address every server advertises. Remote gateways add gossiped
# addresses to the URLs they dial, which would let cross-region traffic bypass
# the link proxies (TOOLCHAIN-NOTES). Advertising a port that always refuses at
# once means the only dialable gateway URLs are the explicit, per-pair proxy
# URLs each server is configured with.
GATEWAY_ADVERTISE_SENTINEL = "127.0.0.1:1"


@dataclass(frozen=True)
class Credentials:
    """A NATS user of the CHATMESH account."""

    user: str
    password: str

    def url(self, server_url: str) -> str:
        """``server_url`` with the credentials embedded (``nats://user:pass@host:port``)."""
        return server_url.replace("nats://", f"nats://{self.user}:{self.password}@", 1)


def _lease_permissions(key: str) -> list[str]:
    """What a service needs to hold its own write lease (ADR-016) and no other's."""
    return [
        f"$KV.{LEASE_BUCKET}.{key}",
        f"$JS.API.STREAM.INFO.KV_{LEASE_BUCKET}",
        f"$JS.API.DIRECT.GET.KV_{LEASE_BUCKET}.$KV.{LEASE_BUCKET}.{key}",
        f"$JS.API.STREAM.MSG.GET.KV_{LEASE_BUCKET}",
    ]


def service_permissions(topology: Topology) -> dict[str, dict[str, Any]]:
    """Publish/subscribe permissions of every service user (least privilege).

    Returns:
        user name -> nats-server ``permissions`` block.
    """
    # Consumers read holes left by redelivery directly from the stream (DIRECT.GET).
    js_consume = [
        "$JS.API.INFO",
        "$JS.API.CONSUMER.>",
        "$JS.API.STREAM.INFO.>",
        "$JS.API.DIRECT.GET.>",
        "$JS.ACK.>",
    ]
    perms: dict[str, dict[str, Any]] = {
        # Writes durable events and typing; nothing else. It never subscribes
        # to events: only to its own inboxes for JetStream acks.
        "command": {
            "publish": {
                "allow": [
                    Subjects.EVENTS_ALL,
                    Subjects.TYPING_ALL,
                    "$JS.API.INFO",
                    f"$JS.API.STREAM.INFO.{EVENTS_STREAM}",
                    # A channel's newest event (its seq floor at start-up):
                    # nats-py's get_last_msg puts the subject in the request subject.
                    f"$JS.API.DIRECT.GET.{EVENTS_STREAM}.{Subjects.CHANNEL_EVENTS_ALL}",
                    *_lease_permissions("command"),
                ]
            },
            "subscribe": {"allow": ["_INBOX.>"]},
        },
        # Consumes EVENTS, hears typing/presence/routes, publishes deliveries.
        "fanout": {
            "publish": {
                "allow": [
                    Subjects.DELIVERY_ALL,
                    Subjects.ROUTE_RESYNC,
                    *js_consume,
                    *_lease_permissions("fanout"),
                ]
            },
            "subscribe": {"allow": ["chatmesh.eph.>", "chatmesh.route.>", "_INBOX.>"]},
            "allow_responses": True,
        },
    }
    for region in topology.region_names:
        # A notification instance may only announce itself in its own region,
        # only receive its own region's deliveries, and never publish events.
        perms[f"notification-{region}"] = {
            "publish": {
                "allow": [
                    f"chatmesh.route.update.{region}.>",
                    f"chatmesh.route.snapshot.{region}.>",
                    f"chatmesh.route.hb.{region}.>",
                    Subjects.PRESENCE_ALL,
                ]
            },
            "subscribe": {"allow": [f"chatmesh.dlv.{region}.>", Subjects.ROUTE_RESYNC, "_INBOX.>"]},
            "allow_responses": True,
        }
        # Workers only consume their region's stream (EVENTS or its mirror).
        perms[f"worker-{region}"] = {
            "publish": {"allow": js_consume},
            "subscribe": {"allow": ["_INBOX.>"]},
        }
    return perms


def make_credentials(topology: Topology) -> dict[str, Credentials]:
    """Fresh random passwords for the admin user and every service user."""
    users = ["admin", "bench", *service_permissions(topology)]
    return {u: Credentials(u, secrets.token_urlsafe(18)) for u in users}


@dataclass(frozen=True)
class NatsNodePlan:
    """Everything needed to render one server's config."""

    region: str
    index: int
    client_port: int
    http_port: int
    cluster_port: int
    gateway_port: int
    store_dir: str
    host: str = "127.0.0.1"
    routes: tuple[str, ...] = ()
    """``nats-route://host:port`` of the region's other nodes."""
    gateways: dict[str, list[str]] = field(default_factory=dict)
    """Remote region -> gateway URLs to dial (the link proxies)."""
    gateway_advertise: str = GATEWAY_ADVERTISE_SENTINEL
    """``host:port`` this server advertises to other gateways. The default refuses
    connections so traffic keeps to the link proxies; a deployment without link
    proxies (docker-compose) advertises its real, resolvable address."""

    @property
    def server_name(self) -> str:
        """``<region>-<index>``, unique in the super-cluster."""
        return f"{self.region}-{self.index}"

    @property
    def client_url(self) -> str:
        """``nats://host:port`` for clients."""
        return f"nats://{self.host}:{self.client_port}"

    @property
    def monitor_url(self) -> str:
        """``http://host:port`` of the monitoring endpoints."""
        return f"http://{self.host}:{self.http_port}"


def render_server_conf(
    topology: Topology,
    node: NatsNodePlan,
    credentials: dict[str, Credentials],
) -> str:
    """Renders one nats-server configuration file.

    The output is JSON, which nats-server's config parser accepts as-is; a
    header comment records where it came from.
    """
    perms = service_permissions(topology)
    sync = (
        topology.nats.sync_interval_primary
        if node.region == topology.primary
        else topology.nats.sync_interval_other
    )
    jetstream: dict[str, Any] = {
        "store_dir": node.store_dir,
        "max_memory_store": parse_size(topology.nats.max_memory_store),
        "max_file_store": parse_size(topology.nats.max_file_store),
    }
    if sync != "default":
        jetstream["sync_interval"] = sync
    users: list[dict[str, Any]] = [
        {"user": "admin", "password": credentials["admin"].password},
        {
            "user": "bench",
            "password": credentials["bench"].password,
            "permissions": {
                "publish": {"allow": ["bench.>"]},
                "subscribe": {"allow": ["bench.>", "_INBOX.>"]},
            },
        },
    ]
    for user, perm in perms.items():
        users.append({"user": user, "password": credentials[user].password, "permissions": perm})
    conf: dict[str, Any] = {
        "server_name": node.server_name,
        "host": node.host,
        "port": node.client_port,
        "http": f"{node.host}:{node.http_port}",
        "server_tags": [f"region:{node.region}"],
        "max_payload": 1 << 20,
        "ping_interval": "20s",
        "write_deadline": "5s",
        "jetstream": jetstream,
        "cluster": {
            "name": node.region,
            "listen": f"{node.host}:{node.cluster_port}",
            "routes": list(node.routes),
            # Clients of one region must not be told about other nodes' client
            # URLs beyond what they were configured with.
            "no_advertise": True,
        },
        "gateway": {
            "name": node.region,
            "listen": f"{node.host}:{node.gateway_port}",
            "advertise": node.gateway_advertise,
            "reject_unknown_cluster": True,
            "gateways": [{"name": r, "urls": urls} for r, urls in sorted(node.gateways.items())],
        },
        "accounts": {
            "CHATMESH": {"jetstream": "enabled", "users": users},
            "SYS": {"users": [{"user": "sys", "password": credentials["admin"].password}]},
        },
        "system_account": "SYS",
    }
    if len(topology.regions) == 1:
        # One region: no gateways to join; one node as well: a standalone
        # JetStream server (clustered JetStream needs peers it could reach).
        del conf["gateway"]
        if topology.region(node.region).nats_nodes == 1:
            del conf["cluster"]
    header = (
        f"# nats-server config for {node.server_name} (topology {topology.name}); "
        "generated by mesh.deploy.nats - do not edit\n"
    )
    return header + json.dumps(conf, indent=2) + "\n"
