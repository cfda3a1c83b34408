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
from mesh.bus.streams import mirror_consumer_name, parse_size, source_consumer_name
from mesh.bus.subjects import (
    EVENTS_STREAM,
    Subjects,
    all_stream_name,
    mirror_stream_name,
    origin_stream_name,
)
from mesh.topology import Topology

__all__ = [
    "FANOUT_CONSUMER",
    "GATEWAY_ADVERTISE_SENTINEL",
    "SYSTEM_USER",
    "Credentials",
    "NatsNodePlan",
    "NatsTls",
    "command_consumer",
    "command_user",
    "consumer_permissions",
    "fanout_user",
    "make_credentials",
    "query_user",
    "render_server_conf",
    "service_permissions",
    "worker_consumer",
]

SYSTEM_USER = "sys"
"""The SYS account's user (server events, ``$SYS`` requests): its own password, never admin's."""

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


FANOUT_CONSUMER = "fanout"
"""The Fan-Out Service's durable EVENTS consumer."""


def worker_consumer(region: str) -> str:
    """The durable consumer a region's worker reads its stream through."""
    return f"worker-{region}"


def consumer_permissions(stream: str, consumer: str) -> list[str]:
    """JetStream API subjects a user needs to run one durable pull consumer, and no more.

    Create (or find) that consumer, pull from it, ack its deliveries, read the
    stream's info and holes left by redelivery (DIRECT.GET, and MSG.GET from the
    stream's leader for what a direct get did not find). No other consumer
    of the stream can be created, read or deleted, nor can any consumer be
    deleted, and no ephemeral consumer can be made.
    """
    return [
        "$JS.API.INFO",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
        f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
    ]


def mirror_monitor_permissions(region: str) -> list[str]:
    """What a secondary's replication monitor needs beyond its worker's consumer.

    It compares the mirror with EVENTS (stream info of both) and, when the
    mirror stalls, re-creates the mirror's own durable consumer on EVENTS
    (``mesh.bus.replication``): that one consumer only, never a delete. The
    worker reads a hole in its mirror from EVENTS's leader (MSG.GET).
    """
    consumer = mirror_consumer_name(region)
    return [
        f"$JS.API.STREAM.INFO.{EVENTS_STREAM}",
        f"$JS.API.STREAM.MSG.GET.{EVENTS_STREAM}",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{EVENTS_STREAM}.{consumer}",
        f"$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}.{consumer}",
        f"$JS.API.CONSUMER.INFO.{EVENTS_STREAM}.{consumer}",
    ]


def _lease_permissions(key: str) -> list[str]:
    """What a service needs to hold its own write lease (ADR-019) and no other's."""
    return [
        f"$KV.{LEASE_BUCKET}.{key}",
        f"$JS.API.STREAM.INFO.KV_{LEASE_BUCKET}",
        f"$JS.API.DIRECT.GET.KV_{LEASE_BUCKET}.$KV.{LEASE_BUCKET}.{key}",
        f"$JS.API.STREAM.MSG.GET.KV_{LEASE_BUCKET}",
    ]


def command_user(topology: Topology, region: str) -> str:
    """The NATS user of ``region``'s Command Service: ``command`` or ``command-<region>``.

    The second in the every-region mode (ADR-026), one user per region.
    """
    return f"command-{region}" if topology.every_region else "command"


def fanout_user(topology: Topology, region: str) -> str:
    """The NATS user of ``region``'s Fan-Out Service: ``fanout`` or ``fanout-<region>``."""
    return f"fanout-{region}" if topology.every_region else "fanout"


def query_user(topology: Topology, region: str) -> str:
    """Every-region mode: the NATS user of ``region``'s Query Service (``query-<region>``).

    The primary mode's Query Service does not connect to NATS (empty string).
    """
    return f"query-{region}" if topology.every_region else ""


def command_consumer(region: str) -> str:
    """Every-region mode: a durable consumer on ``ALL_<REGION>`` for ``region``'s Command Service.

    It may run one to observe remote events (ADR-026: a reply sorts after what it answers).
    """
    return f"command-{region}"


def service_permissions(topology: Topology) -> dict[str, dict[str, Any]]:
    """Publish/subscribe permissions of every service user (least privilege).

    Returns:
        user name -> nats-server ``permissions`` block.
    """
    if topology.every_region:
        return _every_region_permissions(topology)
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
                    *consumer_permissions(EVENTS_STREAM, FANOUT_CONSUMER),
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
                    # Gap fills from the primary's EVENTS when the region's mirror
                    # is behind (answered by its leader; replies come to _INBOX).
                    f"$JS.API.STREAM.MSG.GET.{EVENTS_STREAM}",
                ]
            },
            "subscribe": {"allow": [f"chatmesh.dlv.{region}.>", Subjects.ROUTE_RESYNC, "_INBOX.>"]},
            "allow_responses": True,
        }
        # Workers only consume their region's stream (EVENTS or its mirror),
        # through their own durable consumer.
        stream = EVENTS_STREAM if region == topology.primary else mirror_stream_name(region)
        allow = consumer_permissions(stream, worker_consumer(region))
        if region != topology.primary:
            allow += mirror_monitor_permissions(region)
        perms[f"worker-{region}"] = {
            "publish": {"allow": allow},
            "subscribe": {"allow": ["_INBOX.>"]},
        }
    return perms


def _every_region_permissions(topology: Topology) -> dict[str, dict[str, Any]]:
    """Every-region mode (ADR-026): per region a command, fan-out, notification and worker user.

    Each is confined to its own region's subjects and streams.

    A region's Command Service writes only ``chatmesh.evt.<region>.>`` (its
    ``EVENTS_<REGION>``) and may read its region's ``ALL_<REGION>``; the Fan-Out, the
    worker and the notification instances read ``ALL_<REGION>`` only; deliveries and
    route messages stay inside the region. Typing and presence subjects carry no
    region: they reach every region's Fan-Out over the gateways.
    """
    names = topology.region_names
    perms: dict[str, dict[str, Any]] = {}
    for region in names:
        own = origin_stream_name(region)
        aggregate = all_stream_name(region)
        perms[command_user(topology, region)] = {
            "publish": {
                "allow": [
                    Subjects.origin_events_all(region),
                    Subjects.TYPING_ALL,
                    f"$JS.API.STREAM.INFO.{own}",
                    # A channel's newest event of this origin (its origin_seq floor).
                    f"$JS.API.DIRECT.GET.{own}.chatmesh.evt.{region}.ch.>",
                    # Remote events of a channel, read from the region's ALL_ stream.
                    *consumer_permissions(aggregate, command_consumer(region)),
                ]
            },
            "subscribe": {"allow": ["_INBOX.>"]},
        }
        perms[fanout_user(topology, region)] = {
            "publish": {
                "allow": [
                    f"chatmesh.dlv.{region}.>",
                    Subjects.ROUTE_RESYNC,
                    # Its region's online users, for the other regions (ADR-026).
                    Subjects.presence_snapshot(region),
                    *consumer_permissions(aggregate, FANOUT_CONSUMER),
                ]
            },
            "subscribe": {
                "allow": [
                    "chatmesh.eph.>",
                    f"chatmesh.route.update.{region}.>",
                    f"chatmesh.route.snapshot.{region}.>",
                    f"chatmesh.route.hb.{region}.>",
                    "_INBOX.>",
                ]
            },
            "allow_responses": True,
        }
        # The Query Service only listens to the regions' presence snapshots
        # (GetPresence = its region's Valkey + the others' snapshots).
        perms[query_user(topology, region)] = {
            "publish": {"deny": [">"]},
            "subscribe": {"allow": [Subjects.PRESENCE_SNAPSHOT_ALL, "_INBOX.>"]},
        }
        perms[f"notification-{region}"] = {
            "publish": {
                "allow": [
                    f"chatmesh.route.update.{region}.>",
                    f"chatmesh.route.snapshot.{region}.>",
                    f"chatmesh.route.hb.{region}.>",
                    Subjects.PRESENCE_ALL,
                    # Gap fills: from the region's ALL_ stream, or from the origin's
                    # own stream (answered by its leader, across the gateway).
                    f"$JS.API.STREAM.INFO.{aggregate}",
                    f"$JS.API.DIRECT.GET.{aggregate}",
                    f"$JS.API.DIRECT.GET.{aggregate}.>",
                    f"$JS.API.STREAM.MSG.GET.{aggregate}",
                    *(f"$JS.API.STREAM.MSG.GET.{origin_stream_name(r)}" for r in names),
                ]
            },
            "subscribe": {"allow": [f"chatmesh.dlv.{region}.>", Subjects.ROUTE_RESYNC, "_INBOX.>"]},
            "allow_responses": True,
        }
        # The worker also keeps the region's ALL_ sources moving (mesh.bus.sourcing):
        # it reads each origin's info, may reset the one consumer feeding its region,
        # and takes a stalled source out of its region's ALL_ and back while doing so.
        monitor = [
            f"$JS.API.STREAM.UPDATE.{aggregate}",
            *(
                p
                for r in names
                for p in (
                    f"$JS.API.STREAM.INFO.{origin_stream_name(r)}",
                    f"$JS.API.CONSUMER.RESET.{origin_stream_name(r)}.{source_consumer_name(region)}",
                )
            ),
        ]
        perms[f"worker-{region}"] = {
            "publish": {
                "allow": [*consumer_permissions(aggregate, worker_consumer(region)), *monitor]
            },
            "subscribe": {"allow": ["_INBOX.>"]},
        }
    return perms


def make_credentials(topology: Topology) -> dict[str, Credentials]:
    """Fresh random passwords for the admin, system and bench users and every service user."""
    users = ["admin", SYSTEM_USER, "bench", *service_permissions(topology)]
    return {u: Credentials(u, secrets.token_urlsafe(18)) for u in users}


@dataclass(frozen=True)
class NatsTls:
    """One server's certificate (internal CA) for TLS on client, route and gateway links."""

    cert_file: str
    key_file: str
    ca_file: str
    """The internal CA: routes and gateways verify each other's certificates against it."""


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
    """Address clients, routes and gateways bind."""
    monitor_host: str = "127.0.0.1"
    """Address the HTTP monitoring endpoints bind: loopback only, since ``/connz``
    and ``/accountz`` list every connection and user (health checks run on the
    server's own host or container)."""
    routes: tuple[str, ...] = ()
    """``nats-route://host:port`` of the region's other nodes."""
    gateways: dict[str, list[str]] = field(default_factory=dict)
    """Remote region -> gateway URLs to dial (the link proxies)."""
    gateway_advertise: str = GATEWAY_ADVERTISE_SENTINEL
    """``host:port`` this server advertises to other gateways. The default refuses
    connections so traffic keeps to the link proxies; a deployment without link
    proxies (docker-compose) advertises its real, resolvable address."""
    tls: NatsTls | None = None
    """TLS on every link (clients: encrypted and the server verified, passwords
    still authenticate; routes and gateways: mutual TLS); None: plaintext."""

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
        return f"http://{self.monitor_host}:{self.http_port}"


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
    sync = topology.sync_interval(node.region)
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
        "http": f"{node.monitor_host}:{node.http_port}",
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
            "SYS": {
                "users": [{"user": SYSTEM_USER, "password": credentials[SYSTEM_USER].password}]
            },
        },
        "system_account": "SYS",
    }
    if node.tls is not None:
        files = {
            "cert_file": node.tls.cert_file,
            "key_file": node.tls.key_file,
            "ca_file": node.tls.ca_file,
            "timeout": 2,
        }
        # Clients prove who they are with their password, over TLS.
        conf["tls"] = {**files, "verify": False}
        # Servers prove it to each other with their certificates.
        conf["cluster"]["tls"] = {**files, "verify": True}
        conf["gateway"]["tls"] = {**files, "verify": True}
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
