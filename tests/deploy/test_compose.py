"""The generated docker-compose deployment is valid, complete, pinned and fresh.

Docker cannot run here, so the compose file is validated against the official
Compose Specification JSON schema (vendored, see ``schema/README.md``), every
file it mounts is checked to exist, the dependency graph is checked the way
``docker compose`` resolves it, the NATS configs are checked by nats-server
itself, and each service's environment is loaded through the services' own
config loader.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import jwt
import pytest
import yaml
from cryptography import x509

from mesh.core.auth import KeyDirectory, mint
from mesh.core.config import CommonConfig, ConfigError, load as load_config
from mesh.deploy import compose
from mesh.deploy.nats import service_permissions
from mesh.harness.nats import nats_server_binary
from mesh.harness.paths import repo_root
from mesh.topology import Topology, load
from services.command.config import CommandConfig
from services.fanout.config import FanoutConfig
from services.notification.config import NotificationConfig
from services.query.config import QueryConfig
from services.web.config import WebConfig
from services.worker.config import WorkerConfig

TOPOLOGIES = ["dev", "three-regions", "ha"]
SCHEMA = json.loads((Path(__file__).parent / "schema" / "compose-spec.json").read_text())
CONFIG_CLASSES: dict[str, type[CommonConfig]] = {
    "command": CommandConfig,
    "fanout": FanoutConfig,
    "worker": WorkerConfig,
    "query": QueryConfig,
    "notification": NotificationConfig,
    "web": WebConfig,
}


# --- helpers --------------------------------------------------------------------


def schema_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def structure_problems(doc: dict[str, Any]) -> list[str]:
    """What ``docker compose up`` would refuse or hang on, beyond the schema."""
    problems: list[str] = []
    services: dict[str, Any] = doc["services"]
    declared_volumes = set(doc.get("volumes", {}))
    for name, spec in services.items():
        deps = spec.get("depends_on", {})
        for target, dep in deps.items():
            if target not in services:
                problems.append(f"{name}: depends_on unknown service {target!r}")
                continue
            condition = dep["condition"]
            if condition == "service_healthy" and "healthcheck" not in services[target]:
                problems.append(
                    f"{name}: waits for {target} to be healthy, but it has no healthcheck"
                )
            if (
                condition == "service_completed_successfully"
                and services[target].get("restart") != "no"
            ):
                problems.append(f"{name}: waits for {target} to complete, but it restarts")
        if spec.get("restart") == "unless-stopped" and "healthcheck" not in spec:
            problems.append(f"{name}: long-running without a healthcheck")
        for volume in spec.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")) and source not in declared_volumes:
                problems.append(f"{name}: named volume {source!r} is not declared")
        image = spec.get("image", "")
        repo, _, tag = image.rpartition(":")
        if not repo or "/" in tag or not re.search(r"\d", tag) or tag in ("latest", "stable"):
            problems.append(f"{name}: image {image!r} is not pinned to a version")
    # A cycle would make `docker compose up` refuse to start.
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == 1:
            problems.append("dependency cycle: " + " -> ".join([*trail, node]))
            return
        if state.get(node) == 2 or node not in services:
            return
        state[node] = 1
        for target in services[node].get("depends_on", {}):
            visit(target, [*trail, node])
        state[node] = 2

    for node in services:
        visit(node, [])
    return problems


_MOUNTED_DIRS = {"web"}
"""Folders of the checkout the compose file mounts (everything else mounted is a file)."""


def referenced_files(doc: dict[str, Any]) -> set[str]:
    """Every host file the compose file mounts, reads as env or builds from."""
    refs: set[str] = set()
    for spec in doc["services"].values():
        for volume in spec.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                refs.add(os.path.normpath(source))
        for env_file in spec.get("env_file", []):
            refs.add(os.path.normpath(env_file))
        build = spec.get("build")
        if build:
            refs.add(os.path.normpath(os.path.join(build["context"], build["dockerfile"])))
    return refs


def expected_services(topo: Topology) -> set[str]:
    names = {"nats-init", "cassandra-init", "mongo-init"}
    names |= {f"{k}-{topo.primary}" for k in ("command", "fanout", "worker")}
    for region in topo.regions:
        r = region.name
        names |= {f"nats-{r}-{i}" for i in range(1, region.nats_nodes + 1)}
        names |= {f"notification-{r}-{i}" for i in range(1, region.notification_instances + 1)}
        names |= {f"{k}-{r}" for k in ("cassandra", "mongo", "valkey", "query", "envoy", "web")}
    return names


def read_nats_conf(text: str) -> dict[str, Any]:
    """Parses a generated NATS config (JSON plus $VAR references) for inspection."""
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    return json.loads(re.sub(r"\$(NATS_PW_[A-Z0-9_]+)", r'"<\1>"', body))  # type: ignore[no-any-return]


def env_file(path: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line and not line.startswith("#")
    )


@pytest.fixture(scope="module", params=TOPOLOGIES)
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Topology, Path]:
    """A topology's full deployment written to a folder, secrets included."""
    topo = load(request.param)
    out = tmp_path_factory.mktemp(request.param)
    compose.write_compose(topo, out)
    compose.write_secrets(topo, out)
    return topo, out


def _doc(out: Path, topo: Topology | None = None) -> dict[str, Any]:
    name = compose.default_compose_name(topo) if topo else "docker-compose.yml"
    data = yaml.safe_load((out / name).read_text())
    assert isinstance(data, dict)
    return data


# --- the generated deployment ---------------------------------------------------------


def test_compose_file_matches_the_compose_spec(deployment: tuple[Topology, Path]) -> None:
    topo, out = deployment
    assert schema_errors(_doc(out, topo)) == []


def test_dependencies_healthchecks_volumes_and_images(deployment: tuple[Topology, Path]) -> None:
    topo, out = deployment
    assert structure_problems(_doc(out, topo)) == []


def test_every_referenced_file_exists(deployment: tuple[Topology, Path]) -> None:
    topo, out = deployment
    refs = referenced_files(_doc(out, topo))
    assert refs, "the compose file references no files"
    # web/ is a directory of the checkout (the page; `make web` builds its bundle).
    missing = sorted(
        ref
        for ref in refs
        if not (out / ref).is_file()
        and not (repo_root() / ref).is_file()
        and ref not in _MOUNTED_DIRS
    )
    assert missing == []
    assert all((repo_root() / d).is_dir() for d in _MOUNTED_DIRS & refs)
    # Secrets are referenced only from the git-ignored folder and are exactly
    # what `mesh.deploy.compose secrets` creates.
    secret_refs = {r for r in refs if r.startswith(f"deploy/{topo.name}/secrets/")}
    assert secret_refs == set(compose.secret_files(topo))


def test_services_match_the_topology(deployment: tuple[Topology, Path]) -> None:
    topo, out = deployment
    doc = _doc(out, topo)
    assert set(doc["services"]) == expected_services(topo)
    assert doc["x-chatmesh"]["regions"] == topo.region_names
    published = {name: spec["ports"] for name, spec in doc["services"].items() if "ports" in spec}
    # Only the edges are reachable from the host, and only on its loopback.
    assert set(published) == {f"envoy-{r}" for r in topo.region_names}
    for ports in published.values():
        assert all(p.startswith("127.0.0.1:") for p in ports)


def test_nats_clusters_and_gateways_match_the_topology(deployment: tuple[Topology, Path]) -> None:
    topo, out = deployment
    for region in topo.regions:
        for i in range(1, region.nats_nodes + 1):
            conf = read_nats_conf(
                (out / f"deploy/{topo.name}/nats/nats-{region.name}-{i}.conf").read_text()
            )
            assert conf["cluster"]["name"] == region.name
            assert conf["server_tags"] == [f"region:{region.name}"]
            peers = {
                f"nats-route://nats-{region.name}-{j}:6222" for j in range(1, region.nats_nodes + 1)
            }
            assert set(conf["cluster"]["routes"]) == (
                peers - {f"nats-route://nats-{region.name}-{i}:6222"} or peers
            )
            gateways = {g["name"]: g["urls"] for g in conf["gateway"]["gateways"]}
            assert set(gateways) == set(topo.region_names) - {region.name}
            for other, urls in gateways.items():
                assert urls == [
                    f"nats://nats-{other}-{j}:7222"
                    for j in range(1, topo.region(other).nats_nodes + 1)
                ]
            assert conf["gateway"]["advertise"] == f"nats-{region.name}-{i}:7222"
            users = {u["user"]: u for u in conf["accounts"]["CHATMESH"]["users"]}
            assert set(users) == set(compose.nats_users(topo)) - {"sys"}  # sys: the SYS account
            # Every password is an environment reference, never a literal.
            assert all(u["password"].startswith("<NATS_PW_") for u in users.values())
            assert users["command"]["permissions"] == service_permissions(topo)["command"]


def test_nats_monitoring_is_loopback_only_and_the_system_user_has_its_own_secret(
    deployment: tuple[Topology, Path],
) -> None:
    topo, out = deployment
    doc = _doc(out, topo)
    nats_env = env_file(out / f"deploy/{topo.name}/secrets/nats.env")
    for path in sorted((out / f"deploy/{topo.name}/nats").glob("*.conf")):
        conf = read_nats_conf(path.read_text())
        # /connz and /accountz list every connection and user: not on the network.
        assert conf["http"] == "127.0.0.1:8222", path.name
        assert conf["host"] == "0.0.0.0"  # clients, routes and gateways still are
        [sys_user] = conf["accounts"]["SYS"]["users"]
        assert sys_user == {"user": "sys", "password": "<NATS_PW_SYS>"}
        service = doc["services"][path.stem]
        assert "ports" not in service and "expose" not in service
        # Its health check runs inside the container, on that loopback address.
        assert "http://127.0.0.1:8222/healthz" in service["healthcheck"]["test"]
    assert nats_env["NATS_PW_SYS"] != nats_env["NATS_PW_ADMIN"]


def test_internal_ports_use_mutual_tls_with_one_identity_per_container(
    deployment: tuple[Topology, Path],
) -> None:
    topo, out = deployment
    doc = _doc(out, topo)
    pki_dir = "/etc/chatmesh/pki"
    internal = [n for n in doc["services"] if n.split("-", 1)[0] in compose.INTERNAL_KINDS]
    assert {n.split("-", 1)[0] for n in internal} == set(compose.INTERNAL_KINDS)
    for name in internal:
        spec = doc["services"][name]
        env = spec["environment"]
        assert (env["CHATMESH_TLS_CERT"], env["CHATMESH_TLS_KEY"], env["CHATMESH_TLS_CLIENT_CA"]) == (
            f"{pki_dir}/identity.pem", f"{pki_dir}/identity-key.pem", f"{pki_dir}/ca.pem"
        )  # fmt: skip
        mounts = {v.split(":")[1]: v.split(":")[0] for v in spec["volumes"]}
        cert_file = out / mounts[f"{pki_dir}/identity.pem"]
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        # The container's own identity, for its own DNS name, signed by the internal CA.
        assert cert.subject.rfc4514_string() == f"CN=service/{name}"
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert name in sans.get_values_for_type(x509.DNSName)
        ca = x509.load_pem_x509_certificate((out / mounts[f"{pki_dir}/ca.pem"]).read_bytes())
        cert.verify_directly_issued_by(ca)
        # Its health check presents that identity (a plaintext probe would be refused).
        assert "secure_channel" in spec["healthcheck"]["test"][-1]
    for region in topo.region_names:
        spec = doc["services"][f"envoy-{region}"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in spec["volumes"]}
        cert = x509.load_pem_x509_certificate(
            (out / mounts[f"{pki_dir}/identity.pem"]).read_bytes()
        )
        assert cert.subject.rfc4514_string() == f"CN=edge/{region}"
        boot = yaml.safe_load((out / f"deploy/{topo.name}/envoy/envoy-{region}.yaml").read_text())
        clusters = {c["name"]: c for c in boot["static_resources"]["clusters"]}
        for name, cluster in clusters.items():
            if name.startswith("web-"):
                assert "transport_socket" not in cluster  # the sidecar, on the loopback
                continue
            ctx = cluster["transport_socket"]["typed_config"]["common_tls_context"]
            assert (
                ctx["tls_certificates"][0]["certificate_chain"]["filename"]
                == f"{pki_dir}/identity.pem"
            )
            assert ctx["validation_context"]["trusted_ca"]["filename"] == f"{pki_dir}/ca.pem"


def test_nats_configs_pass_nats_server_check_with_the_secrets(
    deployment: tuple[Topology, Path],
) -> None:
    topo, out = deployment
    env = {**os.environ, **env_file(out / f"deploy/{topo.name}/secrets/nats.env")}
    confs = sorted((out / f"deploy/{topo.name}/nats").glob("*.conf"))
    assert len(confs) == sum(r.nats_nodes for r in topo.regions)
    # nats-server lexes the variables' values: passwords must read as strings.
    assert all(
        re.fullmatch(r"p[0-9a-f]{48}", v) for k, v in env.items() if k.startswith("NATS_PW_")
    )
    for conf in confs:
        result = subprocess.run([nats_server_binary(), "-t", "-c", str(conf)], env=env, capture_output=True,
                                text=True, timeout=30)  # fmt: skip
        assert result.returncode == 0, f"{conf.name}: {result.stdout}{result.stderr}"
    # Without the secrets the server refuses to start rather than run with empty passwords.
    bare = {k: v for k, v in os.environ.items() if not k.startswith("NATS_PW_")}
    result = subprocess.run([nats_server_binary(), "-t", "-c", str(confs[0])], env=bare, capture_output=True,
                            text=True, timeout=30)  # fmt: skip
    assert result.returncode != 0
    assert "NATS_PW_" in result.stdout + result.stderr
    # ... and a password that does not lex as a string is refused too (why _password has its shape).
    digits = {**env, "NATS_PW_ADMIN": "2026-11-27"}
    result = subprocess.run([nats_server_binary(), "-t", "-c", str(confs[0])], env=digits, capture_output=True,
                            text=True, timeout=30)  # fmt: skip
    assert result.returncode != 0


def test_service_environments_load_as_service_configs(deployment: tuple[Topology, Path]) -> None:
    topo, out = deployment
    doc = _doc(out, topo)
    perms = service_permissions(topo)
    for name, spec in doc["services"].items():
        command = spec.get("command", [])
        kind = command[-1].removeprefix("services.") if command[:2] == ["python", "-m"] else None
        if kind not in CONFIG_CLASSES:
            continue
        cls = CONFIG_CLASSES[kind]
        env = dict(spec["environment"])
        for path in spec["env_file"]:
            env.update(env_file(out / path))
        fields = {f"CHATMESH_{f.upper()}" for f in cls.__dataclass_fields__}
        # mesh.core.config ignores unknown variables, so a misspelt one would be silently dropped.
        assert {k for k in env if k.startswith("CHATMESH_")} <= fields, name
        try:
            cfg = load_config(cls, env=env)
        except ConfigError as exc:  # pragma: no cover - reported with the service name
            pytest.fail(f"{name}: {exc}")
        region = cfg.region
        assert name.split("-", 1)[1].startswith(region)
        assert cfg.primary_region == topo.primary
        assert cfg.grpc_listen.endswith(":50051")
        if "CHATMESH_NATS_USER" in env:
            assert cfg.nats_user in perms
            assert cfg.nats_password
            assert all(url.startswith(f"nats://nats-{region}-") for url in cfg.nats_servers)
        history = getattr(cfg, "history_store", "")
        if history:
            assert history == f"cassandra://cassandra-{region}:9042/chatmesh?dc={region}"
        metadata = getattr(cfg, "metadata_store", "")
        if metadata and kind in ("query", "notification"):
            assert "replicaSet=rs0" in metadata and "readPreference=nearest" in metadata
        if kind == "notification":
            assert isinstance(cfg, NotificationConfig)
            assert cfg.valkey_primary.endswith(f"@valkey-{topo.primary}:6379/0")
            assert cfg.valkey_replica.endswith(f"@valkey-{region}:6379/0")
        if kind in ("command", "query", "notification"):
            assert cfg.jwt_public_key == "/etc/chatmesh/jwt-public.pem"


def test_data_stores_follow_the_regions(deployment: tuple[Topology, Path]) -> None:
    topo, out = deployment
    doc = _doc(out, topo)
    for region in topo.region_names:
        env = doc["services"][f"cassandra-{region}"]["environment"]
        assert env["CASSANDRA_DC"] == region
        assert env["CASSANDRA_ENDPOINT_SNITCH"] == "GossipingPropertyFileSnitch"
        command = doc["services"][f"valkey-{region}"]["command"]
        if region == topo.primary:
            assert "--replicaof" not in command
        else:
            assert command[command.index("--replicaof") + 1 :] == [f"valkey-{topo.primary}", "6379"]
    cql = (out / f"deploy/{topo.name}/cassandra/keyspace.cql").read_text()
    assert all(f"'{r}': 1" in cql for r in topo.region_names)
    script = (out / f"deploy/{topo.name}/mongo/init-replica-set.js").read_text()
    config = json.loads(script.split("const config = ", 1)[1].split(";\n", 1)[0])
    members = config["members"]
    assert [m["host"] for m in members] == [f"mongo-{r}:27017" for r in topo.region_names]
    priorities = {m["host"]: m.get("priority", 1) for m in members}
    assert max(priorities, key=lambda h: priorities[h]) == f"mongo-{topo.primary}:27017"
    voters = sum(m.get("votes", 1) for m in members)
    assert voters % 2 == 1
    assert "NotYetInitialized" in script  # idempotent: a second run only checks


def test_secrets_are_kept_private_and_stable(deployment: tuple[Topology, Path]) -> None:
    topo, out = deployment
    secrets = out / f"deploy/{topo.name}/secrets"
    before = {p.name: p.read_text() for p in secrets.glob("*.env")}
    compose.write_secrets(topo, out)
    assert {p.name: p.read_text() for p in secrets.glob("*.env")} == before
    assert (secrets / ".gitignore").read_text().splitlines()[-1] == "*"
    for path in [*secrets.glob("*.env"), secrets / "keys" / "jwt-private.pem"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # A token minted with the deployment's key (`chatmesh token --run-dir
    # deploy/<topology>/secrets alice`) verifies against the JWKS Envoy mounts.
    keys = KeyDirectory(secrets / "keys")
    token = mint(keys, "alice")
    jwks = jwt.PyJWKSet.from_dict(json.loads(keys.jwks_path.read_text()))
    [key] = jwks.keys
    claims = jwt.decode(
        token, key.key, algorithms=["ES256"], audience="chatmesh", issuer="chatmesh-dev"
    )
    assert claims["sub"] == "alice"


# --- a typo must fail ------------------------------------------------------------------


def test_schema_rejects_typos_and_wrong_types() -> None:
    doc = compose.render_compose(load("dev"))
    doc = json.loads(json.dumps(doc))
    assert schema_errors(doc) == []

    broken = copy.deepcopy(doc)
    broken["service"] = broken.pop("services")
    assert schema_errors(broken), "unknown top-level key accepted"

    broken = copy.deepcopy(doc)
    broken["services"]["query-eu"]["healtcheck"] = broken["services"]["query-eu"].pop("healthcheck")
    assert schema_errors(broken), "misspelt service key accepted"

    broken = copy.deepcopy(doc)
    broken["services"]["query-eu"]["depends_on"]["mongo-init"]["condition"] = "service_finished"
    assert schema_errors(broken), "unknown depends_on condition accepted"

    broken = copy.deepcopy(doc)
    broken["services"]["envoy-eu"]["ports"] = {"8080": 8080}
    assert schema_errors(broken), "ports as a mapping accepted"

    broken = copy.deepcopy(doc)
    broken["services"]["envoy-eu"]["healthcheck"]["retries"] = ["3"]
    assert schema_errors(broken), "a list for retries accepted"


def test_structure_check_rejects_what_compose_would_refuse() -> None:
    doc = json.loads(json.dumps(compose.render_compose(load("dev"))))
    assert structure_problems(doc) == []

    broken = copy.deepcopy(doc)
    broken["services"]["query-eu"]["depends_on"]["mongo-inits"] = {
        "condition": "service_completed_successfully"
    }
    assert any("unknown service 'mongo-inits'" in p for p in structure_problems(broken))
    assert schema_errors(broken) == []  # the schema alone cannot see this

    broken = copy.deepcopy(doc)
    del broken["services"]["valkey-eu"]["healthcheck"]
    assert any("valkey-eu" in p and "no healthcheck" in p for p in structure_problems(broken))

    broken = copy.deepcopy(doc)
    broken["services"]["mongo-eu"]["image"] = "mongo:latest"
    assert any("not pinned" in p for p in structure_problems(broken))
    broken["services"]["mongo-eu"]["image"] = "mongo"
    assert any("not pinned" in p for p in structure_problems(broken))

    broken = copy.deepcopy(doc)
    broken["services"]["cassandra-us-east"]["depends_on"] = {
        "cassandra-eu": {"condition": "service_healthy"}
    }
    assert any("cycle" in p for p in structure_problems(broken))


# --- the committed artifacts ----------------------------------------------------------------


def test_committed_files_are_what_the_generator_produces() -> None:
    assert compose.check_files(load("dev"), repo_root()) == []


def test_committed_compose_file_is_valid() -> None:
    doc = _doc(repo_root())
    assert schema_errors(doc) == []
    assert structure_problems(doc) == []
    root = repo_root()
    missing = [
        r
        for r in referenced_files(doc) - _MOUNTED_DIRS
        if "/secrets/" not in r and not (root / r).is_file()
    ]
    assert missing == []


def test_check_mode_fails_on_drift(tmp_path: Path) -> None:
    topo = load("dev")
    compose.write_compose(topo, tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "mesh.deploy.compose",
        "generate",
        "--check",
        "--out",
        str(tmp_path),
    ]
    fresh = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=repo_root())
    assert fresh.returncode == 0, fresh.stderr
    conf = tmp_path / "deploy/dev/envoy/envoy-eu.yaml"
    conf.write_text(conf.read_text().replace("60s", "600s"))
    (tmp_path / "deploy/dev/nats/nats-asia-1.conf").write_text("{}\n")
    (tmp_path / "deploy/dev/mongo/init-replica-set.js").unlink()
    stale = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=repo_root())
    assert stale.returncode == 1
    assert "stale: deploy/dev/envoy/envoy-eu.yaml" in stale.stderr
    assert "extra: deploy/dev/nats/nats-asia-1.conf" in stale.stderr
    assert "missing: deploy/dev/mongo/init-replica-set.js" in stale.stderr
    # Regenerating repairs all three (and removes the file no region needs).
    compose.write_compose(topo, tmp_path)
    assert compose.check_files(topo, tmp_path) == []
    assert not (tmp_path / "deploy/dev/nats/nats-asia-1.conf").exists()


@pytest.mark.mesh
async def test_nats_init_job_creates_the_streams_on_a_real_super_cluster(tmp_path: Path) -> None:
    """The init job's code path (`python -m mesh.bus.streams`) against real NATS."""
    from mesh.bus.connection import connect
    from mesh.harness.supervisor import Mesh

    topo = load("dev")
    streams = tmp_path / "streams.json"
    streams.write_text(compose.render_files(topo)["deploy/dev/nats/streams.json"])
    async with Mesh(topo, tmp_path / "run") as mesh:
        admin = mesh.credentials["admin"]
        env = {
            **os.environ,
            "CHATMESH_NATS_SERVERS": ",".join(mesh.nats_urls(topo.primary)),
            "CHATMESH_NATS_USER": admin.user,
            "CHATMESH_NATS_PASSWORD": admin.password,
        }
        cmd = [sys.executable, "-m", "mesh.bus.streams", str(streams)]
        # Twice: the job must be idempotent (compose re-runs it on every `up`).
        for _ in range(2):
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                env=env,
                cwd=repo_root(),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _, stderr = await asyncio.wait_for(proc.communicate(), timeout=120)
            assert proc.returncode == 0, stderr.decode()
        nc = await connect(
            mesh.nats_urls("eu"), name="check", user=admin.user, password=admin.password
        )
        try:
            for config in json.loads(streams.read_text()):
                info = await nc.jsm().stream_info(config["name"])
                assert info.config.num_replicas == config["num_replicas"]
                assert info.cluster is not None
                assert info.cluster.name == config["placement"]["tags"][0].removeprefix("region:")
        finally:
            await nc.drain()


# --- the transport-TLS option ----------------------------------------------------------


@pytest.fixture(scope="module")
def tls_deployment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Topology, Path]:
    """``dev`` generated with ``--transport-tls`` (NATS and Valkey links under TLS), secrets included."""
    topo = load("dev")
    out = tmp_path_factory.mktemp("dev-transport-tls")
    compose.write_compose(topo, out, transport_tls=True)
    compose.write_secrets(topo, out, transport_tls=True)
    return topo, out


def test_transport_tls_compose_is_valid_and_complete(tls_deployment: tuple[Topology, Path]) -> None:
    topo, out = tls_deployment
    doc = _doc(out, topo)
    assert doc["x-chatmesh"]["transport-tls"] is True
    assert schema_errors(doc) == []
    assert structure_problems(doc) == []
    refs = referenced_files(doc)
    secret_refs = {r for r in refs if r.startswith(f"deploy/{topo.name}/secrets/")}
    assert secret_refs == set(compose.secret_files(topo, transport_tls=True))
    assert all((out / r).is_file() for r in secret_refs)
    # Without the option nothing of it is there (the committed default).
    plain = compose.render_compose(topo)
    assert all(
        "--tls-port" not in plain["services"][f"valkey-{r}"]["command"] for r in topo.region_names
    )


def test_transport_tls_nats_configs_pass_nats_server_check(
    tls_deployment: tuple[Topology, Path], tmp_path: Path
) -> None:
    topo, out = tls_deployment
    doc = _doc(out, topo)
    env = {**os.environ, **env_file(out / f"deploy/{topo.name}/secrets/nats.env")}
    for path in sorted((out / f"deploy/{topo.name}/nats").glob("*.conf")):
        text = path.read_text()
        conf = read_nats_conf(text)
        for block in (conf["tls"], conf["cluster"]["tls"], conf["gateway"]["tls"]):
            assert block["ca_file"] == "/etc/chatmesh/pki/ca.pem"
            assert block["cert_file"] == "/etc/chatmesh/pki/identity.pem"
        assert conf["tls"]["verify"] is False  # clients: passwords, over TLS
        assert conf["cluster"]["tls"]["verify"] and conf["gateway"]["tls"]["verify"]
        # The real server loads the certificates the container mounts.
        mounts = {
            v.split(":")[1]: str(out / v.split(":")[0])
            for v in doc["services"][path.stem]["volumes"]
            if v.startswith("./")
        }
        for container_path in ("/etc/chatmesh/pki/identity.pem", "/etc/chatmesh/pki/identity-key.pem",
                               "/etc/chatmesh/pki/ca.pem"):  # fmt: skip
            text = text.replace(container_path, mounts[container_path])
        local = tmp_path / path.name
        local.write_text(text)
        result = subprocess.run([nats_server_binary(), "-t", "-c", str(local)], env=env, capture_output=True,
                                text=True, timeout=30)  # fmt: skip
        assert result.returncode == 0, f"{path.name}: {result.stdout}{result.stderr}"


def test_transport_tls_services_connect_over_tls(tls_deployment: tuple[Topology, Path]) -> None:
    topo, out = tls_deployment
    doc = _doc(out, topo)
    checked = set()
    for name, spec in doc["services"].items():
        command = spec.get("command", [])
        kind = command[-1].removeprefix("services.") if command[:2] == ["python", "-m"] else None
        if kind not in CONFIG_CLASSES:
            continue
        env = dict(spec["environment"])
        for path in spec["env_file"]:
            env.update(env_file(out / path))
        cfg = load_config(CONFIG_CLASSES[kind], env=env)
        if "CHATMESH_NATS_USER" in env:
            assert all(url.startswith("tls://") for url in cfg.nats_servers), name
            assert cfg.nats_tls_ca == "/etc/chatmesh/pki/ca.pem"
            checked.add(kind)
        if isinstance(cfg, NotificationConfig):
            for url in (cfg.valkey_primary, cfg.valkey_replica):
                assert url.startswith("rediss://") and url.endswith(
                    "?ssl_ca_certs=/etc/chatmesh/pki/ca.pem"
                )
            checked.add("valkey")
    assert checked >= {"command", "fanout", "worker", "notification", "valkey"}
    for region in topo.region_names:
        valkey_spec = doc["services"][f"valkey-{region}"]
        cmd = valkey_spec["command"]
        assert cmd[cmd.index("--port") + 1] == "0"  # no plaintext port
        assert cmd[cmd.index("--tls-port") + 1] == "6379"
        assert "--tls" in valkey_spec["healthcheck"]["test"][-1]
    init = doc["services"]["nats-init"]["environment"]
    assert init["CHATMESH_NATS_TLS_CA"] == "/etc/chatmesh/pki/ca.pem"


def test_compose_refuses_the_every_region_mode_clearly(tmp_path: Path) -> None:
    topo = load("three-regions-autonomous")
    with pytest.raises(ValueError, match="not generated for the every-region write mode"):
        compose.render_compose(topo)
    rc = compose._main(["generate", "--topology", topo.name, "--out", str(tmp_path)])
    assert rc == 2 and not list(tmp_path.iterdir())
