"""Backends for the store contract suite (``test_contract.py``).

Each store interface has a registry of backends; a test that takes ``command_store``,
``metadata_store`` or ``history_store`` (or the ``*_dsn`` behind it) runs once per
registered backend. Every test gets a fresh, empty store, opened through the same
DSN factory the services use (:func:`mesh.stores.open_command` and friends).

A backend is a :class:`Backend`: a name, the fixtures it ``requires`` (resolved only
when that backend is selected, so ``-m "not mongo"`` starts no FerretDB), a
``fresh_dsn(fixtures)`` async context manager that yields the DSN of a new empty
store and cleans up after the test, pytest marks, and the tests it is known to fail
(applied as strict xfail, so a fix is noticed).

Adding the Cassandra history backend: a session fixture ``cassandra_cluster``, then::

    @asynccontextmanager
    async def _cassandra_dsn(fixtures: Mapping[str, Any]) -> AsyncIterator[str]:
        cluster = fixtures["cassandra_cluster"]
        keyspace = ...  # a fresh keyspace (or truncate the tables) per test
        yield f"cassandra://{cluster.host}:{cluster.port}/{keyspace}?dc=..."

    HISTORY_BACKENDS["cassandra"] = Backend(
        "cassandra", _cassandra_dsn, requires=("cassandra_cluster",),
        marks=(pytest.mark.cassandra, pytest.mark.slow),
    )

Select backends with marks: ``-m "not mongo"`` runs SQLite only.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from mesh.harness.servers.ferretdb import FerretDB, ensure_ferretdb
from mesh.stores import (
    CommandStore,
    HistoryStore,
    MetadataStore,
    open_command,
    open_history,
    open_metadata,
)
from tests.stores.cassandra_backend import cassandra_cluster, cassandra_dsn  # noqa: F401 - fixtures

DsnFactory = Callable[[Mapping[str, Any]], AbstractAsyncContextManager[str]]
"""Takes the resolved fixtures a backend ``requires``; yields a fresh store's DSN."""


@dataclass(frozen=True)
class Backend:
    """One implementation of a store interface, as the contract suite sees it."""

    name: str
    fresh_dsn: DsnFactory
    """Yields the DSN of a new, empty store; cleans up after the test."""
    requires: tuple[str, ...] = ()
    """Fixtures ``fresh_dsn`` needs (e.g. a session-scoped server), resolved only when
    this backend is selected."""
    marks: tuple[pytest.MarkDecorator, ...] = ()
    known_failures: Mapping[str, str] = field(default_factory=dict)
    """Test function name -> reason: expected to fail on this backend (strict xfail)."""


# --------------------------------------------------------------------------- SQLite


def _sqlite(filename: str) -> DsnFactory:
    @asynccontextmanager
    async def fresh(fixtures: Mapping[str, Any]) -> AsyncIterator[str]:
        tmp: Path = fixtures["tmp_path"]
        yield f"sqlite:///{tmp / filename}"

    return fresh


# ------------------------------------------------------------ MongoDB wire (FerretDB)

# What production uses (replica-set discovery, nearest reads), minus the hosts.
MONGO_OPTIONS = "replicaSet=rs0&readPreference=nearest&serverSelectionTimeoutMS=5000"
_databases = itertools.count(1)


@pytest.fixture(scope="session")
async def ferretdb_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FerretDB]:
    """One FerretDB for the whole session; each test uses its own database in it."""
    binary = await asyncio.to_thread(ensure_ferretdb)  # builds once per machine (~1 min)
    async with FerretDB(tmp_path_factory.mktemp("ferretdb"), binary=binary) as server:
        yield server


@asynccontextmanager
async def _mongo_dsn(fixtures: Mapping[str, Any]) -> AsyncIterator[str]:
    server: FerretDB = fixtures["ferretdb_server"]
    name = f"contract_{next(_databases)}"
    yield f"{server.uri}{name}?{MONGO_OPTIONS}"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(f"{server.uri}?{MONGO_OPTIONS}")
    try:
        await client.drop_database(name)
    finally:
        await client.close()


# ------------------------------------------------------------------------ registries

COMMAND_BACKENDS: dict[str, Backend] = {
    "sqlite": Backend("sqlite", _sqlite("command.db"), requires=("tmp_path",)),
    "mongo": Backend(
        "mongo", _mongo_dsn, requires=("ferretdb_server",), marks=(pytest.mark.mongo,)
    ),
}
METADATA_BACKENDS: dict[str, Backend] = {
    "sqlite": Backend("sqlite", _sqlite("metadata.db"), requires=("tmp_path",)),
    "mongo": Backend(
        "mongo", _mongo_dsn, requires=("ferretdb_server",), marks=(pytest.mark.mongo,)
    ),
}
HISTORY_BACKENDS: dict[str, Backend] = {
    "sqlite": Backend("sqlite", _sqlite("history.db"), requires=("tmp_path",)),
    "cassandra": Backend(
        "cassandra", cassandra_dsn, requires=("cassandra_cluster",), marks=(pytest.mark.cassandra,)
    ),
}


def _params(registry: Mapping[str, Backend]) -> list[Any]:
    return [pytest.param(name, marks=backend.marks, id=name) for name, backend in registry.items()]


@dataclass(frozen=True)
class Selected:
    """A backend chosen for one test, with the fixtures it requires already resolved."""

    backend: Backend
    fixtures: Mapping[str, Any]

    def fresh_dsn(self) -> AbstractAsyncContextManager[str]:
        """Yields the DSN of a new, empty store of this backend."""
        return self.backend.fresh_dsn(self.fixtures)


def _select(registry: Mapping[str, Backend], request: pytest.FixtureRequest) -> Selected:
    # Synchronous on purpose: resolving an async (session) fixture from inside another
    # async fixture would need a nested event loop.
    backend = registry[request.param]
    reason = backend.known_failures.get(request.function.__name__)
    if reason is not None:
        request.applymarker(pytest.mark.xfail(reason=f"{backend.name}: {reason}", strict=True))
    return Selected(backend, {name: request.getfixturevalue(name) for name in backend.requires})


# -------------------------------------------------------------------------- fixtures


@pytest.fixture(params=_params(COMMAND_BACKENDS))
def command_backend(request: pytest.FixtureRequest) -> Selected:
    """The command backend of this test run (one run per registered backend)."""
    return _select(COMMAND_BACKENDS, request)


@pytest.fixture(params=_params(METADATA_BACKENDS))
def metadata_backend(request: pytest.FixtureRequest) -> Selected:
    """The metadata backend of this test run (one run per registered backend)."""
    return _select(METADATA_BACKENDS, request)


@pytest.fixture(params=_params(HISTORY_BACKENDS))
def history_backend(request: pytest.FixtureRequest) -> Selected:
    """The history backend of this test run (one run per registered backend)."""
    return _select(HISTORY_BACKENDS, request)


@pytest.fixture
async def command_dsn(command_backend: Selected) -> AsyncIterator[str]:
    """DSN of a fresh, empty command store."""
    async with command_backend.fresh_dsn() as dsn:
        yield dsn


@pytest.fixture
async def metadata_dsn(metadata_backend: Selected) -> AsyncIterator[str]:
    """DSN of a fresh, empty metadata store."""
    async with metadata_backend.fresh_dsn() as dsn:
        yield dsn


@pytest.fixture
async def history_dsn(history_backend: Selected) -> AsyncIterator[str]:
    """DSN of a fresh, empty history store."""
    async with history_backend.fresh_dsn() as dsn:
        yield dsn


@pytest.fixture
async def command_store(command_dsn: str) -> AsyncIterator[CommandStore]:
    store = await open_command(command_dsn)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def metadata_store(metadata_dsn: str) -> AsyncIterator[MetadataStore]:
    store = await open_metadata(metadata_dsn)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def history_store(history_dsn: str) -> AsyncIterator[HistoryStore]:
    store = await open_history(history_dsn)
    try:
        yield store
    finally:
        await store.close()
