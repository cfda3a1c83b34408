"""The Cassandra history backend of the store contract suite.

One single-node Cassandra 5.0 (DC ``dc1``) per test session, started through the same
harness as the mesh (:mod:`mesh.harness.servers.cassandra`). The keyspace is created once with the
store's own migrations; each test gets it empty again (``TRUNCATE`` of the store's
tables, ~0.3 s, against ~2 s for a keyspace per test).

Registering it in ``conftest.py`` makes ``test_contract.py`` run it (this module does
not import ``conftest.py``, so ``conftest.py`` can import it)::

    from tests.stores.cassandra_backend import cassandra_cluster, cassandra_dsn  # noqa: F401

    HISTORY_BACKENDS["cassandra"] = Backend(
        "cassandra", cassandra_dsn, requires=("cassandra_cluster",), marks=(pytest.mark.cassandra,)
    )

``test_history_cassandra.py`` adds what only this backend has (seq-range buckets,
migrations, DSN parsing) on the same session node.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from cassandra.cluster import Cluster, Session
from cassandra.io.libevreactor import LibevConnection

from mesh.harness.servers.cassandra import CassandraNode, ensure_jars, plan_cluster
from mesh.stores.cassandra import open_cassandra_history

KEYSPACE = "contract"
DC = "dc1"
SUBNET = 90
"""Loopback addresses 127.90.0.x (other suites use other subnets; ports are allocated)."""

STORE_TABLES = ("events", "messages", "buckets", "channels", "meta")


@dataclass
class CassandraTestCluster:
    """A running single-node cluster and a driver session for test housekeeping."""

    node: CassandraNode
    cluster: Cluster
    session: Session

    @property
    def host(self) -> str:
        return self.node.spec.listen_address

    @property
    def port(self) -> int:
        return self.node.spec.native_port

    def dsn(self, keyspace: str = KEYSPACE, **params: str) -> str:
        """A history DSN for ``keyspace`` (extra query parameters appended)."""
        query = "&".join(f"{k}={v}" for k, v in {"dc": DC, **params}.items())
        return f"cassandra://{self.host}:{self.port}/{keyspace}?{query}"

    async def truncate(self, keyspace: str = KEYSPACE) -> None:
        """Empties the store's tables (the schema and its version stay)."""

        def run() -> None:
            futures = [
                self.session.execute_async(f"TRUNCATE {keyspace}.{t}", timeout=30)
                for t in STORE_TABLES
            ]
            for future in futures:
                future.result()

        await asyncio.to_thread(run)


@pytest.fixture(scope="session")
async def cassandra_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[CassandraTestCluster]:
    """One Cassandra node for the session, with the contract keyspace migrated."""
    lib = await asyncio.to_thread(ensure_jars)
    spec = plan_cluster([DC], tmp_path_factory.mktemp("cassandra"), subnet=SUBNET)[0]
    # A single node gossips with itself: no link proxy, so it broadcasts its real address.
    spec = dataclasses.replace(
        spec,
        broadcast_address=spec.listen_address,
        seeds=(f"{spec.listen_address}:{spec.storage_port}",),
    )
    node = CassandraNode(spec, lib=lib)
    started = time.monotonic()
    async with node:
        store = await open_cassandra_history(
            f"cassandra://{spec.listen_address}:{spec.native_port}/{KEYSPACE}?dc={DC}&migrate=true"
        )
        await store.close()
        print(
            f"\ncassandra node ready and migrated in {time.monotonic() - started:.1f}s, rss {node.rss_kib()} KiB"
        )

        def connect() -> tuple[Cluster, Session]:
            cluster = Cluster(
                [spec.listen_address],
                port=spec.native_port,
                protocol_version=5,
                connection_class=LibevConnection,
                schema_metadata_enabled=False,
            )
            return cluster, cluster.connect()

        cluster, session = await asyncio.to_thread(connect)
        try:
            yield CassandraTestCluster(node, cluster, session)
        finally:
            await asyncio.to_thread(cluster.shutdown)


@asynccontextmanager
async def cassandra_dsn(fixtures: Mapping[str, Any]) -> AsyncIterator[str]:
    """Yields the DSN of the (emptied) contract keyspace."""
    cluster: CassandraTestCluster = fixtures["cassandra_cluster"]
    await cluster.truncate()
    yield cluster.dsn()
