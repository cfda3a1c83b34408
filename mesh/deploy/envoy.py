"""Per-region Envoy bootstraps: the public gRPC / gRPC-Web edge of a region.

One Envoy per region terminates client connections (HTTP/1.1 for gRPC-Web
from browsers, h2c for native gRPC) and routes by gRPC service:

* ``/chatmesh.v1.QueryService/`` and ``/chatmesh.v1.NotificationService/`` to
  the region's own services;
* ``/chatmesh.v1.CommandService/`` to the primary region's Command Service
  (locally in the primary, across the WAN elsewhere), tagged with
  ``x-chatmesh-origin-region``;
* ``/grpc.reflection.`` and ``/grpc.health.v1.Health/`` to the local Query
  Service, without a token, so ``grpcurl`` works against the edge.

The Fan-Out Service is internal and never routed. Filters run in the order
CORS -> jwt_authn -> gRPC-Web -> router; JWTs (ES256, issuer/audience from
:mod:`mesh.core.auth`) are checked on the three public prefixes and forwarded, so
the services verify them again (defence in depth, and the ``sub`` stays the
only source of identity).

Host names and container ports are those of the compose deployment
(:mod:`mesh.deploy.compose`): each service listens on a fixed port inside its own
container and is found by its service name through Docker's DNS. Those are
not host ports, so they cannot collide.

Example:
    >>> from mesh.topology import load
    >>> boot = render_envoy(load("dev"), "eu")
    >>> [c["name"] for c in boot["static_resources"]["clusters"]]
    ['command-primary', 'query-eu', 'notification-eu']
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mesh.core.auth import DEFAULT_AUDIENCE, DEFAULT_ISSUER
from mesh.topology import Topology

__all__ = [
    "ADMIN_PORT",
    "DEFAULT_CORS_ORIGINS",
    "DEFAULT_JWKS_PATH",
    "GRPC_PORT",
    "JWT_PROVIDER",
    "LISTEN_PORT",
    "PUBLIC_PREFIXES",
    "STREAM_IDLE_TIMEOUT_S",
    "cluster_name",
    "dump_yaml",
    "render_envoy",
    "render_envoy_yaml",
    "service_host",
    "write_envoy_configs",
]

logger = logging.getLogger(__name__)

LISTEN_PORT = 8080
"""The edge listener inside the Envoy container (published on the host's loopback by compose)."""
ADMIN_PORT = 9901
"""Envoy's admin interface, bound to the container's loopback only (``/ready`` for health checks)."""
GRPC_PORT = 50051
"""The gRPC port every chatmesh service listens on inside its container."""
DEFAULT_JWKS_PATH = "/etc/chatmesh/jwks.json"
"""Where compose mounts the deployment's JWKS (``deploy/<topology>/secrets/keys/jwks.json``)."""
DEFAULT_CORS_ORIGINS: tuple[str, ...] = ("http://localhost:5173", "http://127.0.0.1:5173")
"""Browser origins allowed by default: a local web dev server."""
JWT_PROVIDER = "chatmesh"
"""Name of the jwt_authn provider."""

PUBLIC_PREFIXES: dict[str, str] = {
    "command": "/chatmesh.v1.CommandService/",
    "query": "/chatmesh.v1.QueryService/",
    "notification": "/chatmesh.v1.NotificationService/",
}
"""The public gRPC services by kind: these, and only these, require a JWT at the edge."""
REFLECTION_PREFIX = "/grpc.reflection."
HEALTH_PREFIX = "/grpc.health.v1.Health/"

STREAM_IDLE_TIMEOUT_S = 60
"""Seconds a stream may carry no bytes before Envoy resets it.

Subscribe streams are long-lived but never silent for long: the Notification
Service sends a Heartbeat after ``stream_heartbeat`` (15 s) of idleness, so a
60 s budget tolerates three lost/late heartbeats while still reaping streams
whose client vanished without a FIN (mobile networks, sleeping laptops).
"""
UNARY_TIMEOUT_S = 15
"""Route timeout for unary calls without a ``grpc-timeout`` header, and the cap
on the header's value (a client cannot hold an upstream slot for an hour)."""

_UPSTREAM_HTTP = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_TYPE = "type.googleapis.com/"

_CORS_ALLOW_HEADERS = (
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "connect-protocol-version",
    "connect-timeout-ms",
)
_CORS_EXPOSE_HEADERS = ("grpc-status", "grpc-message", "grpc-status-details-bin")


def service_host(kind: str, region: str, index: int | None = None) -> str:
    """The DNS name of a chatmesh service container (its compose service name).

    Args:
        kind: ``command``, ``fanout``, ``worker``, ``query`` or ``notification``.
        region: The region it runs in.
        index: Instance number (1-based) for kinds with several instances per region.

    Returns:
        For example ``query-eu`` or ``notification-eu-2``.
    """
    return f"{kind}-{region}" + (f"-{index}" if index is not None else "")


def cluster_name(kind: str, region: str, *, topology: Topology) -> str:
    """The Envoy cluster that carries ``kind`` traffic from ``region``'s edge.

    The command cluster is ``command-primary`` outside the primary region so the
    WAN hop is visible in stats (``cluster.command-primary.*``).
    """
    if kind == "command" and region != topology.primary:
        return "command-primary"
    return f"{kind}-{region}"


def _duration(seconds: float) -> str:
    """A protobuf JSON Duration (``"1.5s"``)."""
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"{text}s"


def _cluster(
    name: str,
    hosts: Sequence[str],
    *,
    health_service: str,
    connect_timeout_s: float,
    max_requests: int,
    max_retries: int,
    least_request: bool,
    health_interval_s: float,
) -> dict[str, Any]:
    """A STRICT_DNS HTTP/2 cluster with active gRPC health checks."""
    return {
        "name": name,
        # Compose recreates containers with new IPs: STRICT_DNS re-resolves
        # every 5 s (Envoy's default refresh; the field to change it is
        # deprecated on Cluster) and follows the answer.
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_ONLY",
        "connect_timeout": _duration(connect_timeout_s),
        # Long-lived Subscribe streams make round robin uneven (it balances new
        # streams, not open ones); least-request balances the open ones.
        "lb_policy": "LEAST_REQUEST" if least_request else "ROUND_ROBIN",
        "typed_extension_protocol_options": {
            _UPSTREAM_HTTP: {
                "@type": _TYPE + _UPSTREAM_HTTP,
                "explicit_http_config": {
                    "http2_protocol_options": {
                        # Notices a dead upstream connection under idle
                        # streams (a half-open TCP would otherwise hold every
                        # Subscribe on it until the stream idle timeout).
                        "connection_keepalive": {"interval": "30s", "timeout": "5s"},
                    }
                },
                # Idle = no active streams; an upstream connection carrying a
                # Subscribe is never idle, so this only reaps unused ones.
                "common_http_protocol_options": {"idle_timeout": "3600s"},
            }
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
                "interval_jitter": "1s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                # Probe hosts that carry no traffic too, so the first request
                # after start-up does not hit an unchecked host.
                "no_traffic_interval": _duration(health_interval_s),
                "grpc_health_check": {"service_name": health_service},
            }
        ],
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": host, "port_value": GRPC_PORT}
                                }
                            }
                        }
                        for host in hosts
                    ]
                }
            ],
        },
    }


def _route(
    prefix: str,
    cluster: str,
    *,
    streaming: bool,
    retries: bool = False,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    action: dict[str, Any] = {"cluster": cluster}
    if streaming:
        # No overall deadline: a Subscribe lives as long as the client wants.
        # What bounds it is the idle timeout, fed by the 15 s heartbeats.
        action["timeout"] = "0s"
        action["idle_timeout"] = _duration(STREAM_IDLE_TIMEOUT_S)
        # 0 = honour the client's grpc-timeout as sent (no cap): a client that
        # gives its stream a deadline gets exactly that deadline.
        action["max_stream_duration"] = {"grpc_timeout_header_max": "0s"}
    else:
        # Without grpc-timeout the call gets UNARY_TIMEOUT_S; with it, the
        # client's deadline (capped at UNARY_TIMEOUT_S) becomes the route's
        # deadline and is forwarded upstream, so the service sees the same
        # deadline the client set (replaces the deprecated max_grpc_timeout).
        action["timeout"] = _duration(UNARY_TIMEOUT_S)
        action["max_stream_duration"] = {"grpc_timeout_header_max": _duration(UNARY_TIMEOUT_S)}
    if retries:
        # Only for idempotent reads. Retried: the upstream is unreachable or
        # overloaded at the transport level, or it cancelled the call while
        # draining for shutdown. Not retried: deadline-exceeded (the client's
        # budget is spent; a retry only adds load), resource-exhausted (retries
        # amplify overload), internal/unknown (not known to be transient).
        action["retry_policy"] = {
            "retry_on": "unavailable,cancelled,reset,connect-failure,refused-stream",
            "num_retries": 2,
            "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {
                        "@type": _TYPE
                        + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                    },
                }
            ],
            "host_selection_retry_max_attempts": 3,
        }
    route: dict[str, Any] = {"match": {"prefix": prefix}, "route": action}
    if headers:
        route["request_headers_to_add"] = [
            # Overwrite: a client must not be able to claim another origin.
            {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for key, value in headers.items()
        ]
    return route


def render_envoy(
    topology: Topology,
    region: str,
    *,
    cors_origins: Sequence[str] = DEFAULT_CORS_ORIGINS,
    jwks_path: str = DEFAULT_JWKS_PATH,
    jwks_inline: str | None = None,
    issuer: str = DEFAULT_ISSUER,
    audience: str = DEFAULT_AUDIENCE,
    primary_command_host: str | None = None,
    listen_port: int = LISTEN_PORT,
    admin_port: int = ADMIN_PORT,
) -> dict[str, Any]:
    """The Envoy bootstrap (as a dict in Envoy's JSON/YAML form) for one region's edge.

    Args:
        topology: The deployment.
        region: The region whose edge this is.
        cors_origins: Exact browser origins allowed by CORS.
        jwks_path: Path of the JWKS file inside the Envoy container.
        jwks_inline: The JWKS document itself; when given, it is embedded
            instead of read from ``jwks_path``.
        issuer: Expected ``iss`` claim (:data:`mesh.core.auth.DEFAULT_ISSUER`).
        audience: Expected ``aud`` claim (:data:`mesh.core.auth.DEFAULT_AUDIENCE`).
        primary_command_host: DNS name of the primary's Command Service as seen
            from this region (default: its compose service name). Outside the
            primary this is the WAN address.
        listen_port: The edge listener's port in the container.
        admin_port: The admin port (loopback of the container).

    Returns:
        A ``envoy.config.bootstrap.v3.Bootstrap`` in its JSON mapping.

    Raises:
        KeyError: ``region`` is not in ``topology``.
    """
    reg = topology.region(region)
    primary = topology.primary
    command_host = primary_command_host or service_host("command", primary)
    notification_hosts = [
        service_host("notification", region, i) for i in range(1, reg.notification_instances + 1)
    ]

    command_cluster = cluster_name("command", region, topology=topology)
    query_cluster = cluster_name("query", region, topology=topology)
    notification_cluster = cluster_name("notification", region, topology=topology)
    wan = region != primary
    clusters = [
        _cluster(
            command_cluster,
            [command_host],
            health_service="chatmesh.v1.CommandService",
            # A WAN round trip (up to ~200 ms RTT) plus TCP handshake retries.
            connect_timeout_s=5.0 if wan else 2.0,
            max_requests=10_000,
            max_retries=0,
            least_request=False,
            # Health probes cross the WAN from every secondary edge: less often.
            health_interval_s=10.0 if wan else 5.0,
        ),
        _cluster(
            query_cluster,
            [service_host("query", region)],
            health_service="chatmesh.v1.QueryService",
            connect_timeout_s=2.0,
            max_requests=10_000,
            max_retries=64,
            least_request=False,
            health_interval_s=5.0,
        ),
        _cluster(
            notification_cluster,
            notification_hosts,
            health_service="chatmesh.v1.NotificationService",
            connect_timeout_s=2.0,
            max_requests=100_000,
            max_retries=0,
            least_request=True,
            health_interval_s=5.0,
        ),
    ]

    routes = [
        _route(
            PUBLIC_PREFIXES["command"],
            command_cluster,
            streaming=False,
            headers={"x-chatmesh-origin-region": region},
        ),
        _route(PUBLIC_PREFIXES["query"], query_cluster, streaming=False, retries=True),
        _route(PUBLIC_PREFIXES["notification"], notification_cluster, streaming=True),
        # Reflection is a bidi stream held open by grpcurl for its session.
        _route(REFLECTION_PREFIX, query_cluster, streaming=True),
        # The Health service has a streaming Watch as well as Check.
        _route(HEALTH_PREFIX, query_cluster, streaming=True),
    ]

    cors_policy = {
        "@type": _TYPE + "envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"exact": origin} for origin in cors_origins],
        "allow_methods": "POST, OPTIONS",
        "allow_headers": ",".join(_CORS_ALLOW_HEADERS),
        "expose_headers": ",".join(_CORS_EXPOSE_HEADERS),
        # Preflights are cached by the browser for a day (Chromium caps at 2 h).
        "max_age": "86400",
        # Tokens travel in the authorization header, never in cookies.
        "allow_credentials": False,
    }

    local_jwks: dict[str, str] = (
        {"inline_string": jwks_inline} if jwks_inline is not None else {"filename": jwks_path}
    )
    jwt_config = {
        "@type": _TYPE + "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {
            JWT_PROVIDER: {
                "issuer": issuer,
                "audiences": [audience],
                "local_jwks": local_jwks,
                # Keep the token on the request: the services verify it again
                # and take the user id from its sub.
                "forward": True,
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                # Same leeway as mesh.core.auth.TokenVerifier.
                "clock_skew_seconds": 30,
            }
        },
        "rules": [
            {"match": {"prefix": prefix}, "requires": {"provider_name": JWT_PROVIDER}}
            for prefix in PUBLIC_PREFIXES.values()
        ],
        # The CORS filter answers preflights first; this keeps them token-free
        # even if the filter order ever changes.
        "bypass_cors_preflight": True,
    }

    hcm = {
        "@type": _TYPE
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "edge",
        # AUTO: HTTP/1.1 (gRPC-Web from browsers) and prior-knowledge h2c
        # (native gRPC) on one port.
        "codec_type": "AUTO",
        "use_remote_address": True,
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        # See STREAM_IDLE_TIMEOUT_S; routes set the same value explicitly.
        "stream_idle_timeout": _duration(STREAM_IDLE_TIMEOUT_S),
        # Only the headers must arrive promptly; request_timeout (whole request)
        # stays unset because it would also bound a client-streaming body.
        "request_headers_timeout": "10s",
        "common_http_protocol_options": {
            # A connection with no streams for an hour is closed; one with a
            # Subscribe is never idle.
            "idle_timeout": "3600s",
            "headers_with_underscores_action": "REJECT_REQUEST",
        },
        "http2_protocol_options": {
            "max_concurrent_streams": 100,
            "initial_stream_window_size": 65536,
            "initial_connection_window_size": 1048576,
            # Finds clients that vanished under an idle stream.
            "connection_keepalive": {"interval": "30s", "timeout": "10s"},
        },
        "access_log": [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": _TYPE + "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
                },
            }
        ],
        "route_config": {
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
        "http_filters": [
            {
                "name": "envoy.filters.http.cors",
                "typed_config": {"@type": _TYPE + "envoy.extensions.filters.http.cors.v3.Cors"},
            },
            {"name": "envoy.filters.http.jwt_authn", "typed_config": jwt_config},
            {
                "name": "envoy.filters.http.grpc_web",
                "typed_config": {
                    "@type": _TYPE + "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _TYPE + "envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }

    return {
        "node": {"id": f"edge-{region}", "cluster": f"chatmesh-edge-{region}"},
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}},
        },
        "overload_manager": {
            # Envoy's edge guidance: bound downstream connections so a flood
            # cannot exhaust file descriptors.
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _TYPE
                        + "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": 50_000,
                    },
                }
            ]
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "edge",
                    "address": {
                        "socket_address": {"address": "0.0.0.0", "port_value": listen_port}
                    },
                    "per_connection_buffer_limit_bytes": 32768,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
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


def render_envoy_yaml(topology: Topology, region: str, **options: Any) -> str:
    """:func:`render_envoy` as the YAML file Envoy reads (``-c envoy.yaml``), with a header."""
    # Round-trip through JSON so only plain JSON types reach the YAML dumper.
    boot = json.loads(json.dumps(render_envoy(topology, region, **options)))
    header = (
        f"Envoy bootstrap for the {region} edge (topology {topology.name}).\n"
        "Generated by mesh.deploy.envoy from the topology - do not edit; run `make compose-config`."
    )
    return dump_yaml(boot, header)


def write_envoy_configs(
    topology: Topology,
    outdir: Path,
    **options: Any,
) -> list[Path]:
    """Writes ``envoy-<region>.yaml`` for every region of ``topology``.

    Args:
        topology: The deployment.
        outdir: Folder to write into (created if missing).
        **options: Passed to :func:`render_envoy`.

    Returns:
        The written paths, primary region first.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for region in topology.region_names:
        path = outdir / f"envoy-{region}.yaml"
        path.write_text(render_envoy_yaml(topology, region, **options))
        paths.append(path)
        logger.debug("wrote %s", path)
    return paths
