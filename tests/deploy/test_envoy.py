"""Generated Envoy bootstraps pass the real ``envoy --mode validate`` and route as the topology says.

Both targets of the one generator are checked: the compose (production) plans
of every topology and region, validated by the real binary with the
deployment's files bind-mounted at their container paths in a private mount
namespace (:func:`mesh.harness.envoy.validate_config`), and local plans like
the harness builds. Every bootstrap is also parsed into Envoy's own API types
(``xds-protos``) with unknown fields rejected and deprecated fields refused, so
a mistake is named precisely. Then the routes, filters, JWT rules, CORS and
timeouts are checked against the topology.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import (
    any_pb2,
    descriptor_pool,
    duration_pb2,
    json_format,
    message,
    message_factory,
)

from mesh.core.auth import DEFAULT_AUDIENCE, DEFAULT_ISSUER, MAX_TOKEN_LIFETIME, KeyDirectory
from mesh.core.headers import INTERNAL_PREFIX, ORIGIN_REGION
from mesh.deploy import envoy as edge
from mesh.deploy.tls import DevTls, ServicePki
from mesh.harness.envoy import validate_config
from mesh.harness.paths import repo_root
from mesh.topology import Topology, load
from services.notification.config import NotificationConfig

# Importing a module registers its messages, so typed_config Anys resolve.
_TYPE_MODULES = [
    "envoy.config.bootstrap.v3.bootstrap_pb2",
    "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
    "envoy.extensions.filters.http.cors.v3.cors_pb2",
    "envoy.extensions.filters.http.jwt_authn.v3.config_pb2",
    "envoy.extensions.filters.http.grpc_web.v3.grpc_web_pb2",
    "envoy.extensions.filters.http.router.v3.router_pb2",
    "envoy.extensions.filters.http.rbac.v3.rbac_pb2",
    "envoy.extensions.filters.http.set_filter_state.v3.set_filter_state_pb2",
    "envoy.extensions.filters.http.header_mutation.v3.header_mutation_pb2",
    "envoy.extensions.filters.http.connect_grpc_bridge.v3.config_pb2",
    "envoy.extensions.filters.http.local_ratelimit.v3.local_rate_limit_pb2",
    "envoy.extensions.filters.http.lua.v3.lua_pb2",
    "envoy.extensions.transport_sockets.tls.v3.tls_pb2",
    "envoy.extensions.access_loggers.filters.cel.v3.cel_pb2",
    "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2",
    "envoy.extensions.access_loggers.stream.v3.stream_pb2",
    "envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2",
    "envoy.extensions.resource_monitors.downstream_connections.v3.downstream_connections_pb2",
]
for _module in _TYPE_MODULES:
    importlib.import_module(_module)

from envoy.config.bootstrap.v3 import bootstrap_pb2  # noqa: E402 - after the registrations above
from validate import validate_pb2  # noqa: E402

TOPOLOGIES = ["dev", "three-regions", "ha"]
CASES = [(name, region) for name in TOPOLOGIES for region in load(name).region_names]


# --- validation helpers --------------------------------------------------------


def parse_bootstrap(data: dict[str, Any]) -> bootstrap_pb2.Bootstrap:
    """Parses like Envoy does: unknown fields and wrong types are errors."""
    boot = bootstrap_pb2.Bootstrap()
    json_format.ParseDict(data, boot, ignore_unknown_fields=False)
    return boot


def _unpack(any_msg: any_pb2.Any) -> message.Message:
    name = any_msg.type_url.split("/")[-1]
    desc = descriptor_pool.Default().FindMessageTypeByName(name)
    inner = message_factory.GetMessageClass(desc)()
    assert any_msg.Unpack(inner), f"cannot unpack {name}"
    return inner


def _seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


_WRAPPERS = {
    f"google.protobuf.{t}Value"
    for t in ("UInt32", "UInt64", "Int32", "Int64", "Double", "Float", "String", "Bool")
}


def _check_scalar(
    path: str, value: Any, rules: validate_pb2.FieldRules, problems: list[str]
) -> None:
    kind = rules.WhichOneof("type")
    if kind is None:
        return
    r = getattr(rules, kind)
    if isinstance(value, message.Message) and value.DESCRIPTOR.full_name in _WRAPPERS:
        value = value.value  # type: ignore[attr-defined]  # PGV applies scalar rules to the wrapped value
    if kind == "string":
        if r.HasField("min_len") and len(value) < r.min_len:
            problems.append(f"{path}: shorter than {r.min_len}")
        if r.HasField("max_len") and len(value) > r.max_len:
            problems.append(f"{path}: longer than {r.max_len}")
    elif kind in ("uint32", "uint64", "int32", "int64", "double", "float"):
        for op, bad in (
            ("gt", value <= r.gt),
            ("gte", value < r.gte),
            ("lt", value >= r.lt),
            ("lte", value > r.lte),
        ):
            if r.HasField(op) and bad:
                problems.append(f"{path}: {value} violates {op} {getattr(r, op)}")
    elif kind == "duration" and isinstance(value, duration_pb2.Duration):
        secs = _seconds(value)
        for op in ("gt", "gte", "lt", "lte"):
            if r.HasField(op):
                limit = _seconds(getattr(r, op))
                bad = {
                    "gt": secs <= limit,
                    "gte": secs < limit,
                    "lt": secs >= limit,
                    "lte": secs > limit,
                }[op]
                if bad:
                    problems.append(f"{path}: {secs}s violates {op} {limit}s")


def pgv_problems(msg: message.Message, path: str = "") -> list[str]:
    """The protoc-gen-validate rules Envoy enforces when it loads a config.

    Covers what a hand-written config gets wrong: required messages and
    oneofs, string lengths, numeric and duration bounds, enum values that do
    not exist, minimum list sizes, and fields marked deprecated.
    """
    problems: list[str] = []
    desc = msg.DESCRIPTOR
    for oneof in desc.oneofs:
        if (
            oneof.GetOptions().Extensions[validate_pb2.required]
            and msg.WhichOneof(oneof.name) is None
        ):
            problems.append(f"{path or desc.name}: oneof {oneof.name} is required")
    for field in desc.fields:
        fpath = f"{path}.{field.name}" if path else field.name
        oneof = field.containing_oneof
        if oneof is not None and msg.WhichOneof(oneof.name) != field.name:
            continue  # PGV checks a oneof member only when it is the one set
        opts = field.GetOptions()
        rules = opts.Extensions[validate_pb2.rules]
        repeated = field.is_repeated
        is_map = (
            repeated
            and field.message_type is not None
            and field.message_type.GetOptions().map_entry
        )
        if repeated:
            items = getattr(msg, field.name)
            if len(items) and opts.deprecated:
                problems.append(f"{fpath}: deprecated field")
            if rules.WhichOneof("type") == "repeated" and rules.repeated.min_items > len(items):
                problems.append(f"{fpath}: needs at least {rules.repeated.min_items} item(s)")
            if is_map:
                value_field = field.message_type.fields_by_name["value"]
                for key, item in items.items():
                    if value_field.message_type is not None:
                        problems += pgv_problems(item, f"{fpath}[{key}]")
            elif field.message_type is not None:
                for i, item in enumerate(items):
                    problems += _nested(item, f"{fpath}[{i}]")
            continue
        if field.message_type is not None:
            present = msg.HasField(field.name)
            if not present:
                if rules.message.required or (
                    rules.WhichOneof("type") in ("any", "duration")
                    and getattr(rules, rules.WhichOneof("type")).required
                ):
                    problems.append(f"{fpath}: required")
                continue
            if opts.deprecated:
                problems.append(f"{fpath}: deprecated field")
            value = getattr(msg, field.name)
            _check_scalar(fpath, value, rules, problems)
            problems += _nested(value, fpath)
            continue
        value = getattr(msg, field.name)
        set_explicitly = (
            msg.HasField(field.name) if field.has_presence else value != field.default_value
        )
        if set_explicitly and opts.deprecated:
            problems.append(f"{fpath}: deprecated field")
        if field.enum_type is not None:
            if (
                rules.WhichOneof("type") == "enum"
                and rules.enum.defined_only
                and value not in field.enum_type.values_by_number
            ):
                problems.append(f"{fpath}: undefined enum value {value}")
            continue
        if set_explicitly or rules.WhichOneof("type") == "string":
            _check_scalar(fpath, value, rules, problems)
    return problems


def _nested(value: message.Message, path: str) -> list[str]:
    if isinstance(value, any_pb2.Any):
        return pgv_problems(_unpack(value), f"{path}<{value.type_url.split('/')[-1]}>")
    return pgv_problems(value, path)


def validate_envoy(data: dict[str, Any]) -> bootstrap_pb2.Bootstrap:
    """Parse + PGV + deprecation checks; raises on the first kind of failure."""
    boot = parse_bootstrap(data)
    problems = pgv_problems(boot)
    if problems:
        raise ValueError("invalid Envoy config:\n" + "\n".join(problems))
    return boot


# --- accessors ------------------------------------------------------------------


def _hcm(boot: dict[str, Any]) -> dict[str, Any]:
    [listener] = boot["static_resources"]["listeners"]
    [chain] = listener["filter_chains"]
    [flt] = chain["filters"]
    return flt["typed_config"]  # type: ignore[no-any-return]


def _route_list(boot: dict[str, Any]) -> list[dict[str, Any]]:
    [vhost] = _hcm(boot)["route_config"]["virtual_hosts"]
    return vhost["routes"]  # type: ignore[no-any-return]


def _routes(boot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Routes by prefix (the ones matching on a path prefix only)."""
    return {
        r["match"]["prefix"]: r
        for r in _route_list(boot)
        if "prefix" in r["match"] and "headers" not in r["match"]
    }


def _clusters(boot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in boot["static_resources"]["clusters"]}


def _hosts(cluster: dict[str, Any]) -> list[str]:
    return [
        e["endpoint"]["address"]["socket_address"]["address"]
        for group in cluster["load_assignment"]["endpoints"]
        for e in group["lb_endpoints"]
    ]


def _filters(boot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f["typed_config"] for f in _hcm(boot)["http_filters"]}


def _compose(name: str, region: str) -> dict[str, Any]:
    topo = load(name)
    return edge.render_envoy(topo, edge.compose_plan(topo, region))


def _yaml_boot(topology: Topology, region: str) -> dict[str, Any]:
    """The production bootstrap as written to disk, read back (what Envoy reads)."""
    data = yaml.safe_load(edge.render_envoy_yaml(topology, edge.compose_plan(topology, region)))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real files for the container paths a production bootstrap names."""
    root = tmp_path_factory.mktemp("secrets")
    keys = KeyDirectory(root / "keys")
    keys.ensure()
    tls = DevTls(root / "tls")
    tls.ensure()
    identity = ServicePki(root / "pki").issue("edge", "eu")
    return {
        edge.DEFAULT_JWKS_PATH: keys.jwks_path,
        f"{edge.DEFAULT_TLS_DIR}/edge.pem": tls.cert_path,
        f"{edge.DEFAULT_TLS_DIR}/edge-key.pem": tls.key_path,
        f"{edge.DEFAULT_PKI_DIR}/identity.pem": identity.cert,
        f"{edge.DEFAULT_PKI_DIR}/identity-key.pem": identity.key,
        f"{edge.DEFAULT_PKI_DIR}/ca.pem": identity.ca,
    }


def _local_plan(
    region: str, secrets: dict[str, Path], *, tls: bool, dev_tokens: bool = True
) -> edge.EdgePlan:
    u = edge.Upstream
    return edge.EdgePlan(
        region=region,
        listen=u("127.0.0.1", 40001),
        admin=u("127.0.0.1", 40002),
        command=u("127.0.0.1", 40003),
        query=(u("127.0.0.1", 40004),),
        notification=(u("127.0.0.1", 40005), u("127.0.0.1", 40006)),
        web_http=u("127.0.0.1", 40007),
        web_grpc=u("127.0.0.1", 40008),
        jwks_path=str(secrets[edge.DEFAULT_JWKS_PATH]),
        cors_origins=("http://127.0.0.1:*", "https://localhost:*"),
        tls=edge.EdgeTls(
            str(secrets[f"{edge.DEFAULT_TLS_DIR}/edge.pem"]),
            str(secrets[f"{edge.DEFAULT_TLS_DIR}/edge-key.pem"]),
        )
        if tls
        else None,
        dev_tokens=dev_tokens,
    )


# --- the real envoy says yes ----------------------------------------------------------


def _no_deprecation(output: str) -> None:
    assert "Deprecated field" not in output, output
    assert "OK" in output


@pytest.mark.parametrize(("name", "region"), CASES)
def test_production_bootstraps_pass_envoy_validate(
    name: str, region: str, secrets: dict[str, Path], tmp_path: Path
) -> None:
    path = tmp_path / f"envoy-{region}.yaml"
    path.write_text(edge.render_envoy_yaml(load(name), edge.compose_plan(load(name), region)))
    _no_deprecation(validate_config(path, mounts=secrets))
    validate_envoy(yaml.safe_load(path.read_text()))


def test_the_production_bootstrap_needs_its_mounted_files(tmp_path: Path) -> None:
    """Without the files at their container paths the same bootstrap is refused: validation is real."""
    path = tmp_path / "envoy-eu.yaml"
    path.write_text(edge.render_envoy_yaml(load("dev"), edge.compose_plan(load("dev"), "eu")))
    with pytest.raises(ValueError, match="/etc/chatmesh/"):
        validate_config(path)


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_local_bootstraps_pass_envoy_validate(
    tls: bool, secrets: dict[str, Path], tmp_path: Path
) -> None:
    for region in load("three-regions").region_names:
        path = tmp_path / f"envoy-{region}.json"
        path.write_text(
            edge.render_envoy_json(load("three-regions"), _local_plan(region, secrets, tls=tls))
        )
        _no_deprecation(validate_config(path))


def test_committed_envoy_files_are_the_generators_and_valid(secrets: dict[str, Path]) -> None:
    files = sorted((repo_root() / "deploy" / "dev" / "envoy").glob("envoy-*.yaml"))
    assert [f.stem for f in files] == sorted(f"envoy-{r}" for r in load("dev").region_names)
    for path in files:
        region = path.stem.removeprefix("envoy-")
        assert path.read_text() == edge.render_envoy_yaml(
            load("dev"), edge.compose_plan(load("dev"), region)
        )
        _no_deprecation(validate_config(path, mounts=secrets))


@pytest.mark.parametrize(("name", "region"), CASES)
def test_every_bootstrap_is_a_valid_envoy_api_object(name: str, region: str) -> None:
    validate_envoy(_yaml_boot(load(name), region))


# --- routes -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "region"), CASES)
def test_commands_go_to_the_primary_from_every_region(name: str, region: str) -> None:
    topo = load(name)
    boot = _compose(name, region)
    route = _routes(boot)["/chatmesh.v1.CommandService/"]
    cluster = _clusters(boot)[route["route"]["cluster"]]
    assert _hosts(cluster) == [f"command-{topo.primary}"]
    assert cluster["name"] == (
        f"command-{topo.primary}" if region == topo.primary else "command-primary"
    )
    [header] = route["request_headers_to_add"]
    assert header["header"] == {"key": ORIGIN_REGION, "value": region}
    assert header["append_action"] == "OVERWRITE_IF_EXISTS_OR_ADD"


@pytest.mark.parametrize(("name", "region"), CASES)
def test_queries_and_subscriptions_stay_in_the_region(name: str, region: str) -> None:
    topo = load(name)
    boot = _compose(name, region)
    routes, clusters = _routes(boot), _clusters(boot)
    query = clusters[routes["/chatmesh.v1.QueryService/"]["route"]["cluster"]]
    notification = clusters[routes["/chatmesh.v1.NotificationService/"]["route"]["cluster"]]
    assert _hosts(query) == [f"query-{region}"]
    instances = topo.region(region).notification_instances
    assert _hosts(notification) == [f"notification-{region}-{i}" for i in range(1, instances + 1)]
    # Reflection and health are the edge's own, answered by its web service.
    assert routes["/grpc.reflection."]["route"]["cluster"] == f"web-{region}-grpc"
    assert routes["/grpc.health.v1.Health/"]["route"]["cluster"] == f"web-{region}-grpc"
    # The Fan-Out Service is internal: no route or cluster reaches it, and any
    # other gRPC path gets a direct 404 (UNIMPLEMENTED).
    assert not [c for c in clusters if "fanout" in c]
    assert not [p for p in routes if "Fanout" in p]
    grpc_catch_all = [r for r in _route_list(boot) if r["match"].get("headers")]
    assert grpc_catch_all and all(r["direct_response"]["status"] == 404 for r in grpc_catch_all)
    assert routes["/"]["route"]["cluster"] == f"web-{region}-http"


def test_dev_tokens_only_in_a_local_plan_on_loopback(secrets: dict[str, Path]) -> None:
    prod = _route_list(_compose("dev", "eu"))
    [dev] = [r for r in prod if r["match"].get("path") == "/dev/token"]
    assert dev["direct_response"]["status"] == 404
    local = edge.render_envoy(load("dev"), _local_plan("eu", secrets, tls=False))
    [dev] = [r for r in _route_list(local) if r["match"].get("path") == "/dev/token"]
    assert dev["route"]["cluster"] == "web-eu-http"
    # The web service learns the listener the connection really arrived on.
    [listener] = dev["request_headers_to_add"]
    assert listener["header"] == {
        "key": "x-chatmesh-edge-listener",
        "value": "%DOWNSTREAM_LOCAL_ADDRESS%",
    }
    with pytest.raises(ValueError, match="loopback listener"):
        dataclasses.replace(
            _local_plan("eu", secrets, tls=False), listen=edge.Upstream("0.0.0.0", 8080)
        )


def test_several_notification_instances_are_balanced_by_open_streams() -> None:
    data = {
        "name": "x",
        "primary": "us-east",
        "region": [{"name": "us-east", "notification_instances": 3}],
    }
    from mesh.topology import parse

    topo = parse(data)
    clusters = _clusters(edge.render_envoy(topo, edge.compose_plan(topo, "us-east")))
    assert _hosts(clusters["notification-us-east"]) == [
        f"notification-us-east-{i}" for i in (1, 2, 3)
    ]
    assert clusters["notification-us-east"]["lb_policy"] == "LEAST_REQUEST"


@pytest.mark.parametrize(("name", "region"), CASES)
def test_only_idempotent_queries_are_retried(name: str, region: str) -> None:
    routes = _routes(_compose(name, region))
    retried = {p for p, r in routes.items() if "retry_policy" in r.get("route", {})}
    assert retried == {"/chatmesh.v1.QueryService/"}
    policy = routes["/chatmesh.v1.QueryService/"]["route"]["retry_policy"]
    conditions = set(policy["retry_on"].split(","))
    assert "unavailable" in conditions
    # A spent deadline is not retried, and overload is not amplified.
    assert not conditions & {"deadline-exceeded", "resource-exhausted", "internal", "5xx"}
    assert policy["num_retries"] >= 1


# --- filters ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "region"), CASES)
def test_jwt_is_required_exactly_on_the_public_services(name: str, region: str) -> None:
    jwt = _filters(_compose(name, region))["envoy.filters.http.jwt_authn"]
    provider = jwt["providers"][edge.JWT_PROVIDER]
    assert provider["issuer"] == DEFAULT_ISSUER
    assert provider["audiences"] == [DEFAULT_AUDIENCE]
    assert provider["forward"] is True
    assert provider["local_jwks"] == {"filename": edge.DEFAULT_JWKS_PATH}
    required = {
        r["match"]["prefix"]
        for r in jwt["rules"]
        if r["requires"] == {"provider_name": edge.JWT_PROVIDER}
    }
    assert required == set(edge.PUBLIC_PREFIXES.values())
    assert len(jwt["rules"]) == 3
    for free in (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.health.v1.Health/Check",
    ):
        assert not [p for p in required if free.startswith(p)]
    assert jwt["bypass_cors_preflight"] is True


def _jwt_provider(boot: dict[str, Any]) -> Any:
    """The edge's jwt_authn provider, parsed as Envoy parses it (typed, unknown fields refused)."""
    [listener] = parse_bootstrap(boot).static_resources.listeners
    hcm: Any = _unpack(listener.filter_chains[0].filters[0].typed_config)
    [jwt] = [f for f in hcm.http_filters if f.name == "envoy.filters.http.jwt_authn"]
    config: Any = _unpack(jwt.typed_config)
    return config.providers[edge.JWT_PROVIDER]


@pytest.mark.parametrize(("name", "region"), CASES)
def test_the_edge_bounds_token_lifetime_by_the_services_maximum(
    name: str, region: str, secrets: dict[str, Path]
) -> None:
    """Issue 13, finding 6: tokens had no maximum lifetime. The services refuse
    ``exp - iat`` beyond MAX_TOKEN_LIFETIME (tests/rpc/interceptors/test_auth.py); the
    edge must hold the same bound, in the production bootstrap and in the harness's."""
    topo = load(name)
    for boot in (
        _yaml_boot(topo, region),
        json.loads(edge.render_envoy_json(topo, _local_plan(region, secrets, tls=False))),
    ):
        provider = _jwt_provider(boot)
        assert provider.HasField("max_lifetime")  # absent means no bound at all
        assert _seconds(provider.max_lifetime) == MAX_TOKEN_LIFETIME
        # A token without exp would have no lifetime to bound.
        assert provider.require_expiration is True


@pytest.mark.parametrize(("name", "region"), CASES)
def test_filter_order(name: str, region: str) -> None:
    assert list(_filters(_compose(name, region))) == [
        # Notes the client's protocol, so refusals are written in it.
        "envoy.filters.http.set_filter_state",
        # Refusals next: nothing a foreign origin sends reaches anything else.
        "envoy.filters.http.rbac",
        "envoy.filters.http.cors",
        # Internal headers go before anything could read them.
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.jwt_authn",
        # After jwt_authn: the bucket is keyed by the verified token's subject.
        "envoy.filters.http.local_ratelimit",
        # gRPC-Web framing, checked before grpc_web turns it into gRPC.
        "envoy.filters.http.lua",
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.connect_grpc_bridge",
        "envoy.filters.http.router",
    ]


@pytest.mark.parametrize(("name", "region"), CASES)
def test_local_ratelimit_is_keyed_by_the_verified_subject(name: str, region: str) -> None:
    limits = load(name).limits
    rl = _filters(_compose(name, region))["envoy.filters.http.local_ratelimit"]
    (action,) = rl["rate_limits"][0]["actions"]
    assert action["metadata"]["source"] == "DYNAMIC"
    assert action["metadata"]["metadata_key"] == {
        "key": "envoy.filters.http.jwt_authn",
        "path": [{"key": edge.JWT_PAYLOAD_KEY}, {"key": "sub"}],
    }
    per_user = rl["descriptors"][0]
    # No value: a wildcard, one bucket per subject.
    assert per_user["entries"] == [{"key": action["metadata"]["descriptor_key"]}]
    assert per_user["token_bucket"]["max_tokens"] == limits.edge_burst
    assert rl["max_dynamic_descriptors"] == edge.MAX_EDGE_USERS
    assert rl["rate_limited_as_resource_exhausted"] is True
    # Every command bucket is keyed by the same verified subject.
    for entry in rl["rate_limits"][1:]:
        assert entry["actions"][1] == action


def _path_regex(entry: dict[str, Any]) -> re.Pattern[str]:
    (header,) = entry["actions"][0]["header_value_match"]["headers"]
    assert header["name"] == ":path"
    return re.compile(header["string_match"]["safe_regex"]["regex"])


@pytest.mark.parametrize(("name", "region"), CASES)
def test_the_edge_holds_the_command_buckets_per_user(name: str, region: str) -> None:
    """A flood of sends is refused in Envoy, with the Command Service's bucket shapes."""
    limits = load(name).limits
    rl = _filters(_compose(name, region))["envoy.filters.http.local_ratelimit"]
    by_action = {
        e["actions"][0]["header_value_match"]["descriptor_value"]: e for e in rl["rate_limits"][1:]
    }
    assert set(by_action) == set(edge.COMMAND_LIMITS)
    buckets = {d["entries"][0]["value"]: d for d in rl["descriptors"][1:]}
    every_rpc = {m for methods in edge.COMMAND_LIMITS.values() for m in methods} | {
        "LeaveChannel",
        "MarkRead",
    }
    for action, methods in edge.COMMAND_LIMITS.items():
        regex = _path_regex(by_action[action])
        for method in every_rpc:
            matched = bool(regex.match(f"/chatmesh.v1.CommandService/{method}"))
            assert matched == (method in methods), (action, method)
        assert not regex.match(f"/chatmesh.v1.CommandService/{methods[0]}x")
        assert not regex.match(f"/chatmesh.v1.QueryService/{methods[0]}")
        bucket = buckets[action]
        assert bucket["entries"] == [{"key": "command", "value": action}, {"key": "user"}]
        tb = bucket["token_bucket"]
        assert tb["max_tokens"] == getattr(limits, f"{action}_burst")
        interval = float(tb["fill_interval"].rstrip("s"))
        rate = tb["tokens_per_fill"] / interval
        assert rate == pytest.approx(getattr(limits, f"{action}_per_s"), rel=0.05)


def test_limits_off_removes_the_filter() -> None:
    topo = load("dev")
    zero = {f"{a}_{k}": 0 for a in ("send", "typing", "create_channel", "join", "edge")
            for k in ("per_s", "burst")}  # fmt: skip
    off = dataclasses.replace(topo, limits=dataclasses.replace(topo.limits, **zero))
    rendered = edge.render_envoy(off, edge.compose_plan(off, "eu"))
    assert "envoy.filters.http.local_ratelimit" not in _filters(rendered)


def test_edge_limit_off_keeps_the_command_buckets() -> None:
    topo = load("dev")
    off = dataclasses.replace(
        topo, limits=dataclasses.replace(topo.limits, edge_per_s=0.0, edge_burst=0)
    )
    rl = _filters(edge.render_envoy(off, edge.compose_plan(off, "eu")))[
        "envoy.filters.http.local_ratelimit"
    ]
    assert all(len(d["entries"]) == 2 for d in rl["descriptors"])


def test_every_internal_header_is_removed_from_client_requests() -> None:
    mutation = _filters(_compose("dev", "eu"))["envoy.filters.http.header_mutation"]
    assert mutation["mutations"]["request_mutations"] == [
        {"remove_on_match": {"key_matcher": {"prefix": INTERNAL_PREFIX}}}
    ]
    assert ORIGIN_REGION.startswith(INTERNAL_PREFIX)


def test_rbac_refuses_foreign_origins_duplicate_tokens_and_connect_json() -> None:
    rbac = _filters(_compose("dev", "eu"))["envoy.filters.http.rbac"]["rules"]
    assert rbac["action"] == "DENY"
    assert set(rbac["policies"]) == {"foreign-origin", "duplicate-authorization", "connect-json"}
    [dup] = rbac["policies"]["duplicate-authorization"]["principals"]
    assert dup == {"header": {"name": "authorization", "string_match": {"contains": ","}}}


@pytest.mark.parametrize(("name", "region"), CASES)
def test_cors(name: str, region: str) -> None:
    boot = edge.render_envoy(
        load(name), edge.compose_plan(load(name), region, cors_origins=("https://chat.example",))
    )
    [vhost] = _hcm(boot)["route_config"]["virtual_hosts"]
    cors = vhost["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert cors["allow_origin_string_match"] == [{"exact": "https://chat.example"}]
    exposed = {h.strip() for h in cors["expose_headers"].split(",")}
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= exposed
    allowed = {h.strip() for h in cors["allow_headers"].split(",")}
    assert {"authorization", "content-type", "x-grpc-web", "x-user-agent", "grpc-timeout",
            "connect-protocol-version"} <= allowed  # fmt: skip
    assert not [h for h in allowed if h.startswith(INTERNAL_PREFIX)]
    assert int(cors["max_age"]) > 0
    assert _hcm(boot)["codec_type"] == "AUTO"


def test_origin_patterns() -> None:
    assert edge.origin_matchers(["http://localhost:*", "https://a.example:8443"]) == [
        {"safe_regex": {"regex": r"http://localhost:[0-9]{1,5}"}},
        {"exact": "https://a.example:8443"},
    ]
    with pytest.raises(ValueError, match="not an origin"):
        edge.origin_matchers(["localhost:5173"])


def test_production_terminates_tls_with_mounted_certificates() -> None:
    [listener] = _compose("dev", "eu")["static_resources"]["listeners"]
    [chain] = listener["filter_chains"]
    tls = chain["transport_socket"]["typed_config"]["common_tls_context"]
    assert tls["alpn_protocols"] == ["h2", "http/1.1"]
    [cert] = tls["tls_certificates"]
    assert cert["certificate_chain"]["filename"].startswith(edge.DEFAULT_TLS_DIR)


# --- timeouts, clusters ---------------------------------------------------------------


@pytest.mark.parametrize(("name", "region"), CASES)
def test_timeouts_keep_subscribe_streams_alive_and_propagate_deadlines(
    name: str, region: str
) -> None:
    boot = _compose(name, region)
    heartbeat = NotificationConfig().stream_heartbeat
    hcm = _hcm(boot)
    assert float(hcm["stream_idle_timeout"].rstrip("s")) >= 3 * heartbeat
    routes = _routes(boot)
    subscribe = routes["/chatmesh.v1.NotificationService/"]["route"]
    # No overall deadline on the stream; the idle timeout (fed by heartbeats) bounds it.
    assert subscribe["timeout"] == "0s"
    assert float(subscribe["idle_timeout"].rstrip("s")) >= 3 * heartbeat
    for prefix in ("/chatmesh.v1.CommandService/", "/chatmesh.v1.QueryService/"):
        action = routes[prefix]["route"]
        assert float(action["timeout"].rstrip("s")) > 0
        # The client's grpc-timeout becomes the route deadline (capped).
        assert float(action["max_stream_duration"]["grpc_timeout_header_max"].rstrip("s")) > 0
        assert "max_grpc_timeout" not in action  # deprecated


@pytest.mark.parametrize(("name", "region"), CASES)
def test_clusters_are_health_checked_and_ejected(name: str, region: str) -> None:
    boot = _compose(name, region)
    assert boot["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    services = {"command": "chatmesh.v1.CommandService", "query": "chatmesh.v1.QueryService",
                "notification": "chatmesh.v1.NotificationService"}  # fmt: skip
    for cluster in _clusters(boot).values():
        [check] = cluster["health_checks"]
        assert "outlier_detection" in cluster
        options = cluster["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ]
        kind = cluster["name"].split("-", 1)[0]
        if kind == "web":
            continue
        assert cluster["type"] == "STRICT_DNS"
        assert "connection_keepalive" in options["explicit_http_config"]["http2_protocol_options"]
        assert check["grpc_health_check"]["service_name"] == services[kind]
        [thresholds] = cluster["circuit_breakers"]["thresholds"]
        assert thresholds["max_requests"] >= 10_000


@pytest.mark.parametrize(("name", "region"), CASES)
def test_a_stalled_stream_can_hold_only_a_small_window_in_the_edge(name: str, region: str) -> None:
    """Issue 13, finding 8: with Envoy's default upstream stream window (256 MiB) a client
    that stopped reading had 10.7 MB buffered in the edge and the service never saw it fall
    behind. The stream window is small; the connection window is left at its default so
    stalled streams cannot block the others on the upstream connection."""
    for cluster in _clusters(_compose(name, region)).values():
        if cluster["name"].startswith("web"):
            continue
        options = cluster["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ]["explicit_http_config"]["http2_protocol_options"]
        assert options["initial_stream_window_size"] <= 65536, cluster["name"]
        assert "initial_connection_window_size" not in options


# --- a typo must fail -----------------------------------------------------------------


def _mutations() -> Iterator[tuple[str, Any]]:
    """(description, function mutating a bootstrap dict in place)."""

    def rename(container: dict[str, Any], old: str, new: str) -> None:
        container[new] = container.pop(old)

    yield "top-level key typo", lambda b: rename(b, "static_resources", "static_resource")
    yield (
        "typo inside the HCM Any",
        lambda b: rename(_hcm(b), "stream_idle_timeout", "stream_idle_timout"),
    )
    yield (
        "typo inside the jwt provider",
        lambda b: rename(
            _filters(b)["envoy.filters.http.jwt_authn"]["providers"][edge.JWT_PROVIDER],
            "issuer",
            "isuer",
        ),
    )
    yield (
        "typo in a cluster",
        lambda b: rename(b["static_resources"]["clusters"][0], "connect_timeout", "conect_timeout"),
    )
    yield (
        "unknown typed_config type",
        lambda b: _filters(b)["envoy.filters.http.grpc_web"].update(
            {"@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWebb"}
        ),
    )


def _wrong_types() -> Iterator[tuple[str, Any]]:
    yield (
        "string for an integer",
        lambda b: _routes(b)["/chatmesh.v1.QueryService/"]["route"]["retry_policy"].update(
            {"num_retries": "two"}
        ),
    )
    yield "bad duration", lambda b: _hcm(b).update({"stream_idle_timeout": "60 seconds"})
    yield "unknown enum", lambda b: _hcm(b).update({"codec_type": "HTTP2_PLEASE"})
    yield "list for a string", lambda b: _hcm(b).update({"stat_prefix": ["edge"]})


@pytest.mark.parametrize(
    ("what", "mutate"),
    [*_mutations(), *_wrong_types()],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_typo_or_wrong_type_fails_validation(
    what: str, mutate: Any, secrets: dict[str, Path], tmp_path: Path
) -> None:
    boot = _compose("dev", "eu")
    broken = copy.deepcopy(boot)
    mutate(broken)
    with pytest.raises(json_format.ParseError):
        parse_bootstrap(broken)
    parse_bootstrap(boot)  # the untouched original still parses
    # ... and the real Envoy refuses it too.
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="envoy rejected"):
        validate_config(path, mounts=secrets)


def _semantic_breakage() -> Iterator[tuple[str, Any]]:
    yield (
        "port out of range",
        lambda b: b["static_resources"]["listeners"][0]["address"]["socket_address"].update(
            {"port_value": 70000}
        ),
    )
    yield "route without an action", lambda b: _routes(b)["/chatmesh.v1.QueryService/"].pop("route")
    yield "empty cluster name", lambda b: b["static_resources"]["clusters"][0].update({"name": ""})
    yield (
        "deprecated max_grpc_timeout",
        lambda b: _routes(b)["/chatmesh.v1.QueryService/"]["route"].update(
            {"max_grpc_timeout": "5s"}
        ),
    )
    yield (
        "zero connect timeout",
        lambda b: b["static_resources"]["clusters"][0].update({"connect_timeout": "0s"}),
    )


@pytest.mark.parametrize(
    ("what", "mutate"), list(_semantic_breakage()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_values_envoy_rejects_at_load_fail_validation(what: str, mutate: Any) -> None:
    broken = copy.deepcopy(_compose("dev", "us-east"))
    mutate(broken)
    parse_bootstrap(broken)  # well-typed ...
    with pytest.raises(ValueError, match="invalid Envoy config"):
        validate_envoy(broken)  # ... but Envoy's validation rules reject it


def test_write_envoy_configs_writes_one_file_per_region(tmp_path: Path) -> None:
    topo = load("three-regions")
    paths = edge.write_envoy_configs(topo, tmp_path)
    assert [p.name for p in paths] == [f"envoy-{r}.yaml" for r in topo.region_names]
    for path in paths:
        assert path.read_text().startswith("# Envoy 1.39.3 bootstrap")
        validate_envoy(yaml.safe_load(path.read_text()))
