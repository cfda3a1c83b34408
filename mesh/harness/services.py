"""Starting chatmesh's own services on top of the infrastructure.

:func:`services_hook` returns a :data:`~mesh.harness.supervisor.ServiceHook` that writes
one JSON config per process (under ``conf/``), starts the processes, and waits
for each to be really ready: its ready file names its bound gRPC port and the
gRPC health check answers SERVING. Per region:

* primary: Command, Fan-Out, Worker (EVENTS), Query, Notification x N
* others: Worker (the region's mirror), Query, Notification x N

Clients in a secondary region reach the primary's Command Service through a
WAN link proxy, so commands pay the real cross-region latency.

In the every-region write mode (ADR-026) every region runs Command, Fan-Out,
Worker, Query and Notification x N; the Command Service writes the region's
``EVENTS_<REGION>``, the others read its ``ALL_<REGION>``, each with its
region's own NATS user, and a region's clients reach their own region's
Command Service (no WAN hop).

Example:
    >>> async def demo(topology, run_dir) -> None:  # doctest: +SKIP
    ...     async with Mesh(topology, run_dir, hooks=[services_hook()]) as mesh:
    ...         print(mesh.state()["regions"]["eu"]["grpc"])
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.bus.subjects import (
    EVENTS_STREAM,
    WRITES_EVERY_REGION,
    all_stream_name,
    mirror_stream_name,
    origin_stream_name,
)
from mesh.core.auth import KeyDirectory
from mesh.core.identity import SERVICE
from mesh.deploy.nats import command_user, fanout_user, query_user, worker_consumer
from mesh.harness.identity import identity_state, internal_channel, mesh_pki, operator_files
from mesh.harness.paths import repo_root
from mesh.harness.process import ManagedProcess, Supervised, wait_until
from mesh.harness.supervisor import Mesh, ServiceHook
from mesh.topology import Limits

__all__ = ["ServiceProcess", "ServiceSettings", "command_limits", "process_name", "services_hook"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceSettings:
    """Knobs the harness passes to every service (tests shorten the timers)."""

    stream_heartbeat: float = 15.0
    route_heartbeat: float = 1.0
    instance_timeout: float = 5.0
    resync_grace: float = 1.0
    lease_ttl: float = 2.0
    """Seconds of the Command and Fan-Out leases when the primary runs two of each (ADR-019)."""
    log_level: str = "INFO"
    access_log: bool = True
    service_tls: bool = True
    """Mutual TLS with service identities on every service's gRPC port (internal CA
    under ``<run_dir>/pki``); False: plaintext ports that believe no internal header."""
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per service kind (``notification`` ...): extra config keys."""


def process_name(kind: str, region: str, index: int = 1) -> str:
    """``<kind>-<region>``, numbered where there are several.

    Notification instances are numbered from 1 (``-<index>``); a second Command or
    Fan-Out instance (ADR-019) is ``-2`` beside the unnumbered first.
    """
    return f"{kind}-{region}" + (f"-{index}" if kind == "notification" or index > 1 else "")


class ServiceProcess(Supervised):
    """A chatmesh service process with its config file and readiness check (supervised)."""

    def __init__(
        self, mesh: Mesh, kind: str, region: str, index: int, config: dict[str, Any]
    ) -> None:
        super().__init__()
        self.kind = kind
        self.region = region
        self.name = process_name(kind, region, index)
        self._mesh = mesh
        self.conf_path = mesh.run_dir / "conf" / f"{self.name}.json"
        self.ready_path = mesh.run_dir / "data" / f"{self.name}.ready.json"
        config = {**config, "ready_file": str(self.ready_path), "region": region,
                  "primary_region": mesh.topology.primary}  # fmt: skip
        self.config = config
        self.conf_path.write_text(json.dumps(config, indent=2))
        os.chmod(self.conf_path, 0o600)
        root = repo_root()
        env = {
            "PYTHONPATH": os.pathsep.join([str(root), str(root / "gen" / "python")]),
            "PYTHONUNBUFFERED": "1",
            # A crash in a C extension prints every thread's Python stack to the log.
            "PYTHONFAULTHANDLER": "1",
        }
        self.process = ManagedProcess(
            self.name,
            [sys.executable, "-m", f"services.{kind}", str(self.conf_path)],
            mesh.run_dir / "logs" / f"{self.name}.log",
            env=env,
            cwd=root,
        )
        self.address: str | None = None
        self.metrics: str | None = None
        self.info: dict[str, Any] = {}
        """The process's ready file (its bound addresses)."""

    async def start(self, timeout: float = 60.0) -> None:
        """Starts the process and waits until it serves (health SERVING)."""
        self._expected_exit = False
        self.ready_path.unlink(missing_ok=True)
        await self.process.start()

        async def ready() -> bool:
            if not self.ready_path.exists():
                return False
            info = json.loads(self.ready_path.read_text())
            identity = self._mesh.extra_state.get("service_tls") if info.get("tls") else None
            async with internal_channel(identity, info["grpc"]) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if resp.status != health_pb2.HealthCheckResponse.SERVING:
                    return False
            self.address = info["grpc"]
            self.metrics = info.get("metrics")
            self.info = info
            return True

        await wait_until(ready, timeout=timeout, what=self.name, alive=self.process.check_alive)
        # Pin the ports it got, so a restart comes back where clients look for it.
        if self.address and self.config.get("grpc_listen", "127.0.0.1:0").endswith(":0"):
            self.config["grpc_listen"] = self.address
            if self.metrics:
                self.config["metrics_listen"] = self.metrics.split("//", 1)[1].split("/", 1)[0]
            if self.info.get("http") and self.config.get("http_listen", "127.0.0.1:0").endswith(
                ":0"
            ):
                self.config["http_listen"] = self.info["http"].split("//", 1)[1]
            self.conf_path.write_text(json.dumps(self.config, indent=2))


def _dsns(mesh: Mesh, region: str) -> dict[str, str]:
    data = mesh.run_dir / "data" / region
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    stores = mesh.extra_state.get("stores_dsn", {}).get(region)
    if stores:
        return dict(stores)
    return {
        "history": f"sqlite://{data / 'history.db'}",
        "metadata": f"sqlite://{data / 'metadata.db'}",
        "command": f"sqlite://{data / 'command.db'}",
    }


def command_limits(limits: Limits) -> dict[str, Any]:
    """The Command Service's config keys for the topology's ``[limits]`` (same names)."""
    return {
        f"{action}_{kind}": getattr(limits, f"{action}_{kind}")
        for action in ("send", "typing", "create_channel", "join")
        for kind in ("per_s", "burst")
    }


def services_hook(settings: ServiceSettings | None = None) -> ServiceHook:
    """The hook that starts every service of the topology and records their endpoints."""
    cfg = settings or ServiceSettings()

    async def start(mesh: Mesh) -> None:
        topo = mesh.topology
        keys = KeyDirectory(mesh.run_dir / "keys")
        keys.ensure()
        mesh.extra_state["jwt_public_key"] = str(keys.public_key_path)
        mesh.extra_state["jwt_private_key"] = str(keys.private_key_path)
        embedded = topo.stores.backend == "embedded"
        pki = mesh_pki(mesh) if cfg.service_tls else None
        if cfg.service_tls:
            mesh.extra_state["service_tls"] = identity_state(operator_files(mesh))
        common = {
            "jwt_public_key": str(keys.public_key_path),
            "log_level": cfg.log_level,
            "access_log": cfg.access_log,
        }

        def nats(region: str, user: str) -> dict[str, Any]:
            creds = mesh.credentials[user]
            return {
                "nats_servers": mesh.nats_urls(region),
                "nats_user": creds.user,
                "nats_password": creds.password,
            }

        procs: list[ServiceProcess] = []

        def add(kind: str, region: str, config: dict[str, Any], index: int = 1) -> ServiceProcess:
            tls: dict[str, str] = {}
            if pki is not None:
                files = pki.issue(SERVICE, process_name(kind, region, index))
                tls = {"tls_cert": str(files.cert), "tls_key": str(files.key),
                       "tls_client_ca": str(files.ca)}  # fmt: skip
            proc = ServiceProcess(
                mesh, kind, region, index, {**common, **tls, **config, **cfg.extra.get(kind, {})}
            )
            procs.append(proc)
            mesh.processes[proc.name] = proc.process
            mesh.services[proc.name] = proc
            return proc

        primary = topo.primary
        every = topo.every_region
        if every and not embedded:
            raise RuntimeError(
                "the every-region write mode (ADR-026) runs with the embedded stores only "
                "for now: its history and metadata stores are not built for production "
                "backends yet (owner: data)"
            )
        # Every-region mode: the settings every service gets, and the stream each reads.
        mode: dict[str, Any] = {"writes": WRITES_EVERY_REGION} if every else {}

        def read_stream(region: str) -> str:
            if every:
                return all_stream_name(region)
            return EVENTS_STREAM if region == primary else mirror_stream_name(region)

        writers = topo.region(primary).write_instances
        lease = {"lease_ttl": cfg.lease_ttl} if writers > 1 else {}
        for region in topo.region_names if every else [primary]:
            p = _dsns(mesh, region)
            streams_of = (
                ({"events_stream": origin_stream_name(region)}, {"stream": read_stream(region)})
                if every
                else ({}, {})
            )
            for i in range(1, writers + 1):
                instance = {"instance_id": f"{region}-{i}", **lease}
                add("command", region, {**nats(region, command_user(topo, region)),
                                        "command_store": p["command"], "metadata_store": p["metadata"],
                                        **command_limits(topo.limits), **instance, **mode,
                                        **streams_of[0]}, index=i)  # fmt: skip
                add("fanout", region, {**nats(region, fanout_user(topo, region)),
                                       "metadata_store": p["metadata"],
                                       "instance_timeout": cfg.instance_timeout,
                                       "resync_grace": cfg.resync_grace, **instance, **mode,
                                       **streams_of[1]}, index=i)  # fmt: skip
        for region in topo.region_names:
            d = _dsns(mesh, region)
            is_primary = region == primary
            worker: dict[str, Any] = {
                **nats(region, f"worker-{region}"),
                "history_store": d["history"],
                "stream": read_stream(region),
                "consumer_name": worker_consumer(region),
                **mode,
            }
            # Every-region workers project every region's events into the region's
            # metadata, as embedded secondaries do (the Command Service checks against it).
            if embedded and (every or not is_primary):
                worker["metadata_store"] = d["metadata"]
            if embedded or is_primary:
                add("worker", region, worker)
            valkey_local = mesh.valkey[region].url
            via = mesh.valkey_primary_via[region]
            # Every-region mode: the query hears the other regions' presence snapshots.
            query_nats = nats(region, query_user(topo, region)) if every else {}
            add("query", region, {"history_store": d["history"], "metadata_store": d["metadata"],
                                  "valkey_replica": valkey_local, **mode, **query_nats})  # fmt: skip
            for i in range(1, topo.region(region).notification_instances + 1):
                add(
                    "notification",
                    region,
                    {
                        **nats(region, f"notification-{region}"),
                        "instance_id": f"n-{region}-{i}",
                        "history_store": d["history"],
                        "metadata_store": d["metadata"],
                        "valkey_primary": f"redis://:{mesh.valkey_password}@{via[0]}:{via[1]}/0",
                        "valkey_replica": valkey_local,
                        "stream_heartbeat": cfg.stream_heartbeat,
                        "route_heartbeat": cfg.route_heartbeat,
                        "streams_per_user": topo.limits.streams_per_user,
                        **({"stream": read_stream(region), **mode} if every else {}),
                    },
                    index=i,
                )

        async def stop_all() -> None:
            await asyncio.gather(*(proc.stop() for proc in procs), return_exceptions=True)

        mesh.on_stop(stop_all)
        await asyncio.gather(*(proc.start() for proc in procs))
        for proc in procs:
            proc.watch()

        # Endpoints per region; secondaries reach the Command Service across the WAN
        # (one link proxy per instance); in the every-region mode each region its own.
        def commands_of(writer: str) -> list[ServiceProcess]:
            return [mesh.services[f"command-{writer}"]] + [
                mesh.services[f"command-{writer}-{i}"] for i in range(2, writers + 1)
            ]

        for region in topo.region_names:
            command_addrs: list[str] = []
            for i, command in enumerate(commands_of(region if every else primary), start=1):
                assert command.address is not None
                if topo.writes_in(region):
                    command_addrs.append(command.address)
                    continue
                host, port = command.address.rsplit(":", 1)
                service = "command-grpc" + (f"-{i}" if i > 1 else "")
                proxy = await mesh.wan.proxy(region, primary, service, (host, int(port)))
                command_addrs.append(proxy.address)
            command_addr = command_addrs[0]
            grpc_endpoints: dict[str, Any] = {
                "command": command_addr,
                # Every Command Service instance (ADR-019: the edge sends to all, the
                # lease holder serves).
                "commands": command_addrs,
                "query": mesh.services[f"query-{region}"].address,
                "notification": [
                    mesh.services[f"notification-{region}-{i}"].address
                    for i in range(1, topo.region(region).notification_instances + 1)
                ],
            }
            if topo.writes_in(region):
                grpc_endpoints["fanout"] = mesh.services[f"fanout-{region}"].address
            mesh.endpoints[region]["grpc"] = grpc_endpoints
            mesh.endpoints[region]["metrics"] = {
                name: proc.metrics for name, proc in mesh.services.items() if proc.region == region
            }

    return start
