"""The harness: starts, health-checks and stops a whole mesh from a topology.

:class:`Mesh` is what ``chatmesh up`` runs and what the pytest fixtures use, so
tests exercise exactly what users run. Start order: Toxiproxy (the WAN), the
NATS super-cluster (gateways dial each other through the link proxies), the
JetStream streams, Valkey (replicas replicate through the links; one primary
per region in the every-region write mode), then the data
stores and the chatmesh services (see :mod:`mesh.harness.services`). Every port is
allocated; every file goes under the run directory; :meth:`Mesh.stop` leaves no
process behind.

Example:
    >>> async def demo() -> None:  # doctest: +SKIP
    ...     from mesh.topology import load
    ...     async with Mesh(load("dev"), run_dir=Path("/tmp/mesh")) as mesh:
    ...         nc = await mesh.nats_client("eu", user="admin")
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from mesh.bus.connection import connect
from mesh.bus.lease import lease_stream_config
from mesh.bus.streams import (
    aggregate_stream_config,
    ensure_stream,
    events_stream_config,
    mirror_stream_config,
    origin_stream_config,
)
from mesh.deploy.nats import (
    GATEWAY_ADVERTISE_SENTINEL,
    Credentials,
    NatsNodePlan,
    make_credentials,
    render_server_conf,
)
from mesh.harness.nats import NatsNode, resolve_gateways_by_name
from mesh.harness.ports import allocate
from mesh.harness.process import ManagedProcess, Supervised
from mesh.harness.valkey import ValkeyServer
from mesh.harness.wan import Toxiproxy, Wan
from mesh.topology import Topology

__all__ = ["STATE_FILE", "Mesh", "ServiceHook"]

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
"""Name of the file under the run directory that ``chatmesh status`` reads."""

ServiceHook = Callable[["Mesh"], Awaitable[None]]
"""Something started after the infrastructure (stores, services, edges)."""


class Mesh:
    """A running (or runnable) mesh: infrastructure plus whatever hooks add."""

    def __init__(
        self,
        topology: Topology,
        run_dir: Path,
        *,
        hooks: list[ServiceHook] | None = None,
        fresh: bool = True,
    ) -> None:
        """Plans a mesh; nothing starts until :meth:`start`.

        Args:
            topology: What to run.
            run_dir: Where data, logs, configs and the state file go.
            hooks: Started in order after the infrastructure is ready.
            fresh: Delete data from an earlier run in ``run_dir`` first.
        """
        self.topology = topology
        self.run_dir = run_dir
        self.hooks = list(hooks or [])
        self.fresh = fresh
        self.credentials: dict[str, Credentials] = make_credentials(topology)
        self.valkey_password = secrets.token_urlsafe(18)
        """Valkey's ``requirepass`` (primary and replicas share it)."""
        self.toxiproxy = Toxiproxy(run_dir)
        self.wan = Wan(topology, self.toxiproxy)
        self.nats_nodes: dict[str, list[NatsNode]] = {}
        self.valkey: dict[str, ValkeyServer] = {}
        self._gateway_hosts: dict[str, list[str]] = {}
        self.valkey_primary_via: dict[str, tuple[str, int]] = {}
        """Per region: address of the Valkey primary as reached from that region."""
        self.processes: dict[str, ManagedProcess] = {}
        """Every service process started by hooks, by name."""
        self.services: dict[str, Any] = {}
        """Service handles (:class:`mesh.harness.services.ServiceProcess`) by name, for restarts."""
        self.endpoints: dict[str, dict[str, Any]] = {r: {} for r in topology.region_names}
        """Per region: endpoints hooks publish for clients (``chatmesh status``)."""
        self.extra_state: dict[str, Any] = {}
        self._stoppers: list[Callable[[], Awaitable[None]]] = []
        self._clients: list[NATS] = []
        self.started_at: float | None = None
        self.ready_seconds: float | None = None

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> Mesh:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Starts everything and returns when all of it is ready."""
        t0 = time.monotonic()
        self.started_at = time.time()
        if self.fresh and self.run_dir.exists():
            for sub in ("data", "logs", "conf"):
                shutil.rmtree(self.run_dir / sub, ignore_errors=True)
        for sub in ("data", "logs", "conf"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        await self.toxiproxy.start()
        self._stoppers.append(self.toxiproxy.stop)
        self.toxiproxy.watch()
        await self._launch_nats()
        await self._launch_valkey()
        # Servers are launched (their ports are known); while NATS elects its
        # JetStream leaders and the replicas sync, the hooks start what runs on
        # top — the services connect and wait for the streams themselves.
        infra = asyncio.gather(self._await_nats(), self._await_valkey())
        try:
            for hook in self.hooks:
                await hook(self)
        finally:
            await infra
        self.ready_seconds = time.monotonic() - t0
        self.write_state()
        logger.info("mesh %s ready in %.1fs", self.topology.name, self.ready_seconds)

    async def stop(self) -> None:
        """Stops everything started, newest first. Safe to call more than once."""
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.close()
        self._clients.clear()
        while self._stoppers:
            stopper = self._stoppers.pop()
            try:
                await stopper()
            except Exception:
                logger.exception("error while stopping")
        state = self.run_dir / STATE_FILE
        with contextlib.suppress(FileNotFoundError):
            state.unlink()

    def on_stop(self, stopper: Callable[[], Awaitable[None]]) -> None:
        """Registers a coroutine function that :meth:`stop` awaits (newest first)."""
        self._stoppers.append(stopper)

    # -- NATS ----------------------------------------------------------------

    async def _launch_nats(self) -> None:
        topo = self.topology
        plans: dict[str, list[NatsNodePlan]] = {}
        ports: dict[str, list[tuple[int, int, int, int]]] = {
            r.name: [(allocate(), allocate(), allocate(), allocate()) for _ in range(r.nats_nodes)]
            for r in topo.regions
        }
        # Gateway proxies: one per (dialling region, remote node). NATS gossips
        # every gateway URL it knows to the other gateways (implicit discovery),
        # so with three or more regions a server would learn another region's
        # proxy URL and dial through it. Where the machine allows it, each region's
        # servers therefore see the *same* URL, a name (gw-<region>-<n>.chatmesh),
        # that resolves to their own proxy in their own mount namespace's
        # /etc/hosts; gossip then carries nothing a server could misuse.
        by_name = resolve_gateways_by_name()
        names = topo.region_names
        gateway_urls: dict[str, dict[str, list[str]]] = {r: {} for r in names}
        advertise: dict[str, list[str]] = {r: [] for r in names}
        self._gateway_hosts = {r: [] for r in names}
        for dst in names:
            for j, (_, _, _, gw_port) in enumerate(ports[dst], start=1):
                shared_port = allocate() if by_name else 0
                name = f"gw-{dst}-{j}.chatmesh"
                advertise[dst].append(
                    f"{name}:{shared_port}" if by_name else GATEWAY_ADVERTISE_SENTINEL
                )
                for src in names:
                    if src == dst:
                        continue
                    if by_name:
                        ip = f"127.{60 + names.index(src)}.{names.index(dst) + 1}.{j}"
                        proxy = await self.wan.proxy(
                            src,
                            dst,
                            f"nats-gw-{j}",
                            ("127.0.0.1", gw_port),
                            listen=(ip, shared_port),
                        )
                        self._gateway_hosts[src].append(f"{ip} {name}")
                        url = f"nats://{name}:{shared_port}"
                    else:
                        proxy = await self.wan.proxy(
                            src, dst, f"nats-gw-{j}", ("127.0.0.1", gw_port)
                        )
                        url = f"nats://{proxy.address}"
                    gateway_urls[src].setdefault(dst, []).append(url)
        for reg in topo.regions:
            region_plans = []
            for i, (client, http, cluster, gateway) in enumerate(ports[reg.name], start=1):
                # A one-node region routes to itself: JetStream in a super-cluster
                # refuses to start without configured routes, and nats-server
                # detects and ignores the route to self.
                routes = tuple(
                    f"nats-route://127.0.0.1:{p[2]}"
                    for j, p in enumerate(ports[reg.name], start=1)
                    if j != i or reg.nats_nodes == 1
                )
                region_plans.append(
                    NatsNodePlan(
                        region=reg.name,
                        index=i,
                        client_port=client,
                        http_port=http,
                        cluster_port=cluster,
                        gateway_port=gateway,
                        store_dir=str(self.run_dir / "data" / f"nats-{reg.name}-{i}"),
                        routes=routes,
                        gateways=gateway_urls[reg.name],
                        gateway_advertise=advertise[reg.name][i - 1],
                    )
                )
            plans[reg.name] = region_plans
        for region, region_plans in plans.items():
            hosts_file: Path | None = None
            if by_name:
                hosts_file = self.run_dir / "conf" / f"hosts-{region}"
                etc_hosts = Path("/etc/hosts")
                base = etc_hosts.read_text() if etc_hosts.exists() else ""  # noqa: ASYNC240 - tiny, once
                hosts_file.write_text(
                    base.rstrip("\n")
                    + f"\n# chatmesh gateway names as region {region} sees them\n"
                    + "\n".join(self._gateway_hosts[region])
                    + "\n"
                )
            nodes = []
            for plan in region_plans:
                conf = self.run_dir / "conf" / f"nats-{plan.server_name}.conf"
                conf.write_text(render_server_conf(topo, plan, self.credentials))
                os.chmod(conf, 0o600)
                nodes.append(
                    NatsNode(
                        plan,
                        conf,
                        self.run_dir / "logs" / f"nats-{plan.server_name}.log",
                        hosts_file=hosts_file,
                    )
                )
            self.nats_nodes[region] = nodes
        all_nodes = [n for nodes in self.nats_nodes.values() for n in nodes]

        async def stop_nats() -> None:
            await asyncio.gather(*(n.stop() for n in all_nodes), return_exceptions=True)
            for n in all_nodes:
                await n.aclose()

        self._stoppers.append(stop_nats)
        await asyncio.gather(*(n.start() for n in all_nodes))

    async def _await_nats(self) -> None:
        topo = self.topology
        all_nodes = [n for nodes in self.nats_nodes.values() for n in nodes]
        await asyncio.gather(
            *(
                n.wait_ready(
                    expected_routes=topo.region(n.plan.region).nats_nodes - 1,
                    expected_gateways=set(topo.region_names) - {n.plan.region},
                    timeout=30,
                )
                for n in all_nodes
            )
        )
        # From here on a node that dies is a crash: the watchdog restarts it.
        for n in all_nodes:
            n.watch()
        admin = await self.nats_client(topo.primary, user="admin")
        if topo.every_region:
            # ADR-026: each region's own stream, then each region's ALL_ sourcing them all.
            names = topo.region_names
            await asyncio.gather(*(ensure_stream(admin, origin_stream_config(topo, r))
                                   for r in names))  # fmt: skip
            await ensure_stream(admin, lease_stream_config(topo))
            await asyncio.gather(*(ensure_stream(admin, aggregate_stream_config(topo, r))
                                   for r in names))  # fmt: skip
            return
        await ensure_stream(admin, events_stream_config(topo))
        # The write leases (ADR-019), used when the primary runs two Command/Fan-Out services.
        await ensure_stream(admin, lease_stream_config(topo))
        await asyncio.gather(
            *(ensure_stream(admin, mirror_stream_config(topo, r)) for r in topo.secondaries)
        )

    def nats_urls(self, region: str) -> list[str]:
        """Client URLs (without credentials) of a region's NATS nodes."""
        return [n.plan.client_url for n in self.nats_nodes[region]]

    async def nats_client(
        self, region: str, *, user: str = "admin", name: str | None = None
    ) -> NATS:
        """Connects a client to a region's cluster as ``user``; closed by :meth:`stop`."""
        creds = self.credentials[user]
        client = await connect(
            self.nats_urls(region),
            name=name or f"harness-{user}-{region}",
            user=creds.user,
            password=creds.password,
        )
        self._clients.append(client)
        return client

    # -- Valkey --------------------------------------------------------------

    async def _launch_valkey(self) -> None:
        topo = self.topology
        if topo.every_region:
            # ADR-026: each region's presence is its own (writes stay in the region, a
            # cut region keeps them); no replication, the regions exchange snapshots.
            for region in topo.region_names:
                own = ValkeyServer(region, self.run_dir, password=self.valkey_password)
                self.valkey[region] = own
                self._stoppers.append(own.stop)
                await own.start()
                self.valkey_primary_via[region] = (own.host, own.port)
            return
        primary = ValkeyServer(topo.primary, self.run_dir, password=self.valkey_password)
        self.valkey[topo.primary] = primary
        self._stoppers.append(primary.stop)
        await primary.start()
        self.valkey_primary_via[topo.primary] = (primary.host, primary.port)
        for region in topo.secondaries:
            proxy = await self.wan.proxy(
                region, topo.primary, "valkey", (primary.host, primary.port)
            )
            self.valkey_primary_via[region] = proxy.listen
            replica = ValkeyServer(
                region, self.run_dir, replica_of=proxy.listen, password=self.valkey_password
            )
            self.valkey[region] = replica
            self._stoppers.append(replica.stop)
            await replica.start()

    async def _await_valkey(self) -> None:
        await self.valkey[self.topology.primary].wait_ready(timeout=15)
        await asyncio.gather(
            *(self.valkey[r].wait_ready(timeout=30) for r in self.topology.region_names)
        )
        for server in self.valkey.values():
            server.watch()

    def infrastructure(self) -> list[Supervised]:
        """Every supervised server the mesh itself runs: Toxiproxy, NATS nodes, Valkey.

        Their :attr:`~mesh.harness.process.Supervised.crashes` count like the services'
        (``tests/conftest.py`` fails a run on crashes nobody intended).
        """
        found: list[Supervised] = [self.toxiproxy]
        found += [n for nodes in self.nats_nodes.values() for n in nodes]
        found += list(self.valkey.values())
        return found

    # -- state ---------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What ``chatmesh status --json`` shows: every region's endpoints and every process."""
        topo = self.topology
        regions: dict[str, Any] = {}
        for region in topo.region_names:
            valkey = self.valkey.get(region)
            via = self.valkey_primary_via.get(region)
            regions[region] = {
                "primary": region == topo.primary,
                "nats": self.nats_urls(region) if region in self.nats_nodes else [],
                "nats_monitor": [n.plan.monitor_url for n in self.nats_nodes.get(region, [])],
                "valkey": valkey.address_url if valkey else None,
                "valkey_role": (
                    "primary" if region == topo.primary or topo.every_region else "replica"
                )
                if valkey
                else None,
                "valkey_primary": f"redis://{via[0]}:{via[1]}/0" if via else None,
                **self.endpoints.get(region, {}),
            }
        processes = []
        for nodes in self.nats_nodes.values():
            for n in nodes:
                processes.append(_proc_info(n.process))
        for v in self.valkey.values():
            processes.append(_proc_info(v.process))
        if self.toxiproxy.process:
            processes.append(_proc_info(self.toxiproxy.process))
        processes += [_proc_info(p) for p in self.processes.values()]
        return {
            "topology": topo.name,
            "primary": topo.primary,
            **({"writes": topo.writes} if topo.every_region else {}),
            "stores": topo.stores.backend,
            "run_dir": str(self.run_dir),
            "supervisor_pid": os.getpid(),
            "ready_seconds": round(self.ready_seconds, 2)
            if self.ready_seconds is not None
            else None,
            "toxiproxy": self.toxiproxy.api_url,
            "links": [
                {
                    "name": p.name,
                    "src": p.src,
                    "dst": p.dst,
                    "listen": p.address,
                    "upstream": f"{p.upstream[0]}:{p.upstream[1]}",
                }
                for p in self.wan.proxies
            ],
            "regions": regions,
            "processes": processes,
            **self.extra_state,
        }

    def write_state(self) -> Path:
        """Writes the state file (and the NATS credentials, mode 0600) atomically."""
        path = self.run_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2))
        os.replace(tmp, path)
        creds = self.run_dir / "nats-credentials.json"
        creds.write_text(json.dumps({u: c.password for u, c in self.credentials.items()}, indent=2))
        os.chmod(creds, 0o600)
        return path


def _proc_info(proc: ManagedProcess) -> dict[str, Any]:
    return {"name": proc.name, "pid": proc.pid, "log": str(proc.log_path)}
