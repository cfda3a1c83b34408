"""The "production stores" mode of the harness: Cassandra per region, MongoDB wire.

``stores.backend = "production"`` (``chatmesh up --stores production``) replaces the
embedded SQLite files with the databases ADR-010 names, run locally from real
binaries:

* **History: one Cassandra cluster, one DC per region, one node per DC.** Every
  region's Query and Notification services read their own DC at ``LOCAL_ONE``; the
  primary's worker (the only worker in this mode, see :mod:`mesh.harness.services`)
  writes at ``LOCAL_QUORUM`` and Cassandra replicates to the other DCs.
  Inter-DC traffic crosses the emulated WAN: each node gossips a broadcast address
  on which a Toxiproxy link proxy listens (same storage port) and forwards to the
  node, so every message *towards* a node pays that proxy's latency and
  :meth:`mesh.harness.wan.Wan.cut` partitions the DCs.
* **Metadata and command: one FerretDB (MongoDB wire protocol) in the primary.**
  FerretDB has no replication, so there are no regional secondaries here. Services
  in other regions connect to it directly, not through a link proxy: it stands in
  for a *local* MongoDB secondary read with ``readPreference=nearest`` - local
  latency, and still answering during a WAN partition. What the dev shape does not
  show is a secondary's replication lag (reads see the primary's writes at once)
  and read-only behaviour during a partition. On a real replica set the same DSNs
  work unchanged: the secondaries' DSN carries ``readPreference=nearest``; the
  primary's carries none (primary reads), because the Command Service authorizes
  with reads right after its own writes.

Cassandra latency with one proxy per node: a peer's message to node ``b`` pays
``b``'s proxy latency ``l_b`` whoever sent it, so latency is per destination, not per
region pair. Two regions are exact (``l = link latency``). For three regions the
round trips are exact with ``l_a = (RTT_ab + RTT_ac - RTT_bc) / 2`` (clamped at 0 when
the triangle inequality fails); for more, ``l_b`` is the mean one-way latency of
``b``'s links. A proxy belongs to one region pair in :class:`mesh.harness.wan.Wan`: node
``b``'s proxy is registered as ``(primary -> b)``, the primary's node's as ``(first
secondary -> primary)``. So with two regions ``Wan.cut(a, b)`` partitions the DCs
exactly; with three, ``Wan.cut(primary, b)`` cuts ``b`` off from *every* DC (and
``Wan.cut(primary, first secondary)`` also isolates the primary) - a cut between two
regions only cannot be expressed with one proxy per node.

Schema: the hook applies the history keyspace's migrations once (``migrate=true``,
replication one replica per DC) before any service starts, like a deploy job; the
services' DSNs then only check the version. See :mod:`mesh.stores.cassandra`.

Example:
    >>> async def demo(topology, run_dir) -> None:  # doctest: +SKIP
    ...     stores = production_stores_hook()
    ...     async with Mesh(topology, run_dir, hooks=[stores, services_hook()]) as mesh:
    ...         print(mesh.extra_state["stores_dsn"]["eu"]["history"])
    ...         print(stores.nodes["eu"].rss_kib())
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Coroutine
from typing import Any
from urllib.parse import quote

from mesh.harness.servers.cassandra import (
    CassandraNode,
    CassandraNodeSpec,
    ensure_jars,
    plan_cluster,
)
from mesh.harness.servers.ferretdb import FerretDB, ensure_ferretdb
from mesh.harness.supervisor import Mesh
from mesh.stores.cassandra import open_cassandra_history
from mesh.topology import Topology

__all__ = ["HISTORY_KEYSPACE", "METADATA_DATABASE", "ProductionStores", "production_stores_hook"]

logger = logging.getLogger(__name__)

HISTORY_KEYSPACE = "chatmesh"
"""Cassandra keyspace of the history store."""

METADATA_DATABASE = "chatmesh"
"""MongoDB database of the metadata and command stores."""

CASSANDRA_SUBNET = 64
"""Node ``i`` listens on ``127.<64+i>.0.1``; its link proxy on ``127.<64+i>.0.2``."""

_REPLICA_SET = "rs0"


def proxy_latencies(topology: Topology) -> dict[str, int]:
    """One-way latency of the proxy in front of each region's node (module docstring).

    Args:
        topology: Regions and links.

    Returns:
        Region -> milliseconds.
    """
    regions = topology.region_names
    if len(regions) == 1:
        return {regions[0]: 0}
    if len(regions) == 2:
        return dict.fromkeys(regions, topology.latency_ms(regions[0], regions[1]))
    if len(regions) == 3:
        result = {}
        for a in regions:
            b, c = (r for r in regions if r != a)
            rtt = {pair: 2 * topology.latency_ms(*pair) for pair in ((a, b), (a, c), (b, c))}
            result[a] = max(0, (rtt[(a, b)] + rtt[(a, c)] - rtt[(b, c)]) // 2)
        return result
    return {
        b: round(sum(topology.latency_ms(a, b) for a in regions if a != b) / (len(regions) - 1))
        for b in regions
    }


class ProductionStores:
    """The hook object: starts the stores on a mesh and keeps handles for tests.

    Attributes:
        nodes: Region -> its Cassandra node (after the hook ran).
        ferretdb: The FerretDB server (after the hook ran).
        timings: Seconds each start-up phase took (``cassandra``, ``ring``,
            ``schema``, ``ferretdb``, ``total``).
    """

    def __init__(
        self, *, heap_mb: int = 512, stop_timeout: float = 30.0, ready_timeout: float = 180.0
    ) -> None:
        """Configures the hook.

        Args:
            heap_mb: Heap per Cassandra node (RSS is roughly heap + 450 MiB).
            stop_timeout: Seconds a node may take to drain after SIGTERM before SIGKILL.
            ready_timeout: Bound for the nodes to start and see every DC in the ring.
        """
        self.heap_mb = heap_mb
        self.stop_timeout = stop_timeout
        self.ready_timeout = ready_timeout
        self.nodes: dict[str, CassandraNode] = {}
        self.ferretdb: FerretDB | None = None
        self.timings: dict[str, float] = {}

    def history_dsn(self, region: str, *, migrate: bool = False) -> str:
        """The history DSN of ``region``: its own DC, LOCAL_ONE reads, LOCAL_QUORUM writes.

        Args:
            region: The region (= Cassandra DC).
            migrate: For the one opener that creates the keyspace and applies migrations.
        """
        spec = self.nodes[region].spec
        dsn = (
            f"cassandra://{spec.listen_address}:{spec.native_port}/{HISTORY_KEYSPACE}"
            f"?dc={quote(region)}&read=LOCAL_ONE&write=LOCAL_QUORUM"
        )
        if not migrate:
            return dsn
        # One replica per DC: each region keeps a full copy of the history.
        return dsn + "&migrate=true&replication=" + ",".join(f"{r}:1" for r in self.nodes)

    def mongo_dsn(self, *, nearest: bool) -> str:
        """The MongoDB-wire DSN of the metadata and command stores.

        Args:
            nearest: ``readPreference=nearest`` (a region's own secondary on MongoDB);
                False reads the primary.
        """
        assert self.ferretdb is not None
        options = f"replicaSet={_REPLICA_SET}" + ("&readPreference=nearest" if nearest else "")
        return f"{self.ferretdb.uri}{METADATA_DATABASE}?{options}"

    async def __call__(self, mesh: Mesh) -> None:
        """Starts Cassandra and FerretDB, applies the schema, publishes the DSNs."""
        started = time.monotonic()
        topo = mesh.topology
        regions = topo.region_names
        root = mesh.run_dir / "data" / "stores"
        # Jars and binary first (cached after the first run), so start-up times measure
        # the servers rather than Maven or the Go build.
        lib, ferret_binary = await asyncio.gather(
            asyncio.to_thread(ensure_jars), asyncio.to_thread(ensure_ferretdb)
        )
        specs = plan_cluster(regions, root, subnet=CASSANDRA_SUBNET, heap_mb=self.heap_mb)
        if len(specs) == 1:
            # One DC: no inter-DC traffic, so no proxy; the node broadcasts its own address.
            only = specs[0]
            specs = [dataclasses.replace(only, broadcast_address=only.listen_address,
                                         seeds=(f"{only.listen_address}:{only.storage_port}",))]  # fmt: skip
        await self._proxies(mesh, specs)
        self.nodes = {spec.dc: CassandraNode(spec, lib=lib) for spec in specs}
        self.ferretdb = FerretDB(
            root / "ferretdb", binary=ferret_binary, repl_set_name=_REPLICA_SET
        )
        mesh.on_stop(self._stop)

        async def cassandra() -> None:
            t0 = time.monotonic()
            # All nodes are seeds of an empty cluster: they must start together.
            await asyncio.gather(*(node.start() for node in self.nodes.values()))
            await asyncio.gather(
                *(node.wait_ready(self.ready_timeout) for node in self.nodes.values())
            )
            self.timings["cassandra"] = time.monotonic() - t0
            t1 = time.monotonic()
            # A keyspace naming a DC the coordinator has no tokens for is rejected.
            await asyncio.gather(
                *(node.wait_ring(regions, self.ready_timeout) for node in self.nodes.values())
            )
            self.timings["ring"] = time.monotonic() - t1
            t2 = time.monotonic()
            store = await open_cassandra_history(self.history_dsn(topo.primary, migrate=True))
            await store.close()
            self.timings["schema"] = time.monotonic() - t2

        async def ferretdb() -> None:
            t0 = time.monotonic()
            assert self.ferretdb is not None
            # The context-manager entry is the start that retries on a port taken
            # between allocation and bind; _stop() is the matching exit.
            await self.ferretdb.__aenter__()
            self.timings["ferretdb"] = time.monotonic() - t0

        await asyncio.gather(cassandra(), ferretdb())
        stores: dict[str, dict[str, str]] = {}
        for region in regions:
            is_primary = region == topo.primary
            stores[region] = {
                "history": self.history_dsn(region),
                # The primary's services write and then read (the Command Service
                # authorizes right after its writes): primary reads there.
                "metadata": self.mongo_dsn(nearest=not is_primary),
                "command": self.mongo_dsn(nearest=False),
            }
        mesh.extra_state["stores_dsn"] = stores
        mesh.extra_state["production_stores"] = self.describe()
        self.timings["total"] = time.monotonic() - started
        logger.info(
            "production stores ready in %.1fs (cassandra %.1fs, ring %.1fs, schema %.1fs, ferretdb %.2fs)",
            self.timings["total"],
            self.timings["cassandra"],
            self.timings["ring"],
            self.timings["schema"],
            self.timings["ferretdb"],
        )

    async def _proxies(self, mesh: Mesh, specs: list[CassandraNodeSpec]) -> None:
        """One link proxy in front of each node, on its broadcast address and storage port."""
        topo = mesh.topology
        if len(specs) < 2:
            return
        latencies = proxy_latencies(topo)
        secondaries = topo.secondaries
        for spec in specs:
            src = topo.primary if spec.dc != topo.primary else secondaries[0]
            listen_host, listen_port = spec.proxy_listen.rsplit(":", 1)
            up_host, up_port = spec.proxy_upstream.rsplit(":", 1)
            proxy = await mesh.wan.proxy(
                src,
                spec.dc,
                "cassandra",
                (up_host, int(up_port)),
                listen=(listen_host, int(listen_port)),
            )
            link = topo.link(src, spec.dc)
            if latencies[spec.dc] != link.latency_ms:
                await mesh.wan.toxiproxy.set_latency(proxy.name, latencies[spec.dc], link.jitter_ms)

    def describe(self) -> dict[str, Any]:
        """JSON for ``state.json``: where each store runs."""
        cassandra = {
            region: {
                "cql": f"{node.spec.listen_address}:{node.spec.native_port}",
                "endpoint": node.spec.endpoint,
                "pid": node.pid,
                "log": str(node.log_path),
                "ready_seconds": round(node.ready_after, 2) if node.ready_after else None,
            }
            for region, node in self.nodes.items()
        }
        ferret = self.ferretdb
        return {
            "cassandra": cassandra,
            "ferretdb": {"uri": ferret.uri, "pid": ferret.pid, "log": str(ferret.log_file)}
            if ferret
            else None,
        }

    async def _stop(self) -> None:
        tasks: list[Coroutine[Any, Any, object]] = [
            node.stop(self.stop_timeout) for node in self.nodes.values()
        ]
        if self.ferretdb is not None:
            tasks.append(self.ferretdb.stop())
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                logger.error("stopping a store failed: %r", result)


def production_stores_hook(
    *, heap_mb: int = 512, stop_timeout: float = 30.0, ready_timeout: float = 180.0
) -> ProductionStores:
    """The :data:`~mesh.harness.supervisor.ServiceHook` of ``stores.backend = "production"``.

    Run it before :func:`mesh.harness.services.services_hook`: it sets
    ``mesh.extra_state["stores_dsn"]``, which the services hook reads.

    Args:
        heap_mb: Heap per Cassandra node.
        stop_timeout: Seconds a node may drain after SIGTERM before it is killed.
        ready_timeout: Bound in seconds for the cluster to come up.

    Returns:
        The hook (a callable object that keeps the node handles).
    """
    return ProductionStores(heap_mb=heap_mb, stop_timeout=stop_timeout, ready_timeout=ready_timeout)
