"""Data stores behind one set of interfaces, opened from a DSN.

=============  ==========================================================  =====================
store          DSN examples                                                backends
=============  ==========================================================  =====================
history        ``sqlite:///run/data/eu/history.db``,                       SQLite, Cassandra
               ``cassandra://127.0.0.2:9042/chatmesh?dc=eu``
metadata       ``sqlite:///run/data/eu/metadata.db``,                      SQLite, MongoDB-wire
               ``mongodb://127.0.0.1:27017/chatmesh?readPreference=nearest``
command        ``sqlite:///run/data/us-east/command.db``, ``mongodb://…``  SQLite, MongoDB-wire
=============  ==========================================================  =====================

Example:
    >>> import asyncio, tempfile
    >>> async def demo() -> int:
    ...     store = await open_history(f"sqlite:///{tempfile.mkdtemp()}/h.db")
    ...     try:
    ...         return await store.last_seq("ch_x")
    ...     finally:
    ...         await store.close()
    >>> asyncio.run(demo())
    0
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from mesh.stores.base import (
    UNREAD_CAP,
    ChannelClock,
    CommandStore,
    HistoryPage,
    HistoryStore,
    LogConflict,
    LogEntry,
    MessageRecord,
    MetadataStore,
    OrderedPage,
    OrderKey,
)

__all__ = [
    "UNREAD_CAP",
    "ChannelClock",
    "CommandStore",
    "HistoryPage",
    "HistoryStore",
    "LogConflict",
    "LogEntry",
    "MessageRecord",
    "MetadataStore",
    "OrderKey",
    "OrderedPage",
    "check_write_mode",
    "open_command",
    "open_history",
    "open_metadata",
]


def _scheme(dsn: str) -> str:
    scheme = urlsplit(dsn).scheme
    if not scheme:
        raise ValueError(f"store DSN {dsn!r} has no scheme (sqlite://, cassandra://, mongodb://)")
    return scheme


EVERY_REGION_SCHEMES = frozenset({"sqlite"})
"""Backends that implement the every-region write mode (ADR-026)."""


def check_write_mode(writes: str, **dsns: str) -> None:
    """Refuses a write mode the named stores cannot serve (call at start-up).

    Args:
        writes: ``"primary"`` or ``"every-region"`` (the services' ``writes`` setting).
        dsns: Setting name -> DSN of each store the service opens (empty: none).

    Raises:
        ValueError: An unknown mode, or the every-region mode with a store whose backend
            does not implement it yet (Cassandra, MongoDB: ADR-026).
    """
    if writes not in ("primary", "every-region"):
        raise ValueError(f"writes = {writes!r}: expected 'primary' or 'every-region'")
    if writes == "primary":
        return
    for name, dsn in dsns.items():
        if dsn and _scheme(dsn) not in EVERY_REGION_SCHEMES:
            raise ValueError(
                f"{name} = {dsn!r}: the every-region write mode (ADR-026) is built for the "
                f"embedded SQLite stores only; {_scheme(dsn)}:// does not apply events by "
                "origin and order key yet. Use sqlite:// stores or writes = 'primary'."
            )


def _sqlite_path(dsn: str) -> Path:
    return Path(urlsplit(dsn).path)


async def open_history(dsn: str) -> HistoryStore:
    """Opens the history store a DSN names (schema created if missing)."""
    scheme = _scheme(dsn)
    if scheme == "sqlite":
        from mesh.stores.sqlite import SqliteHistoryStore

        return SqliteHistoryStore(_sqlite_path(dsn))
    if scheme == "cassandra":
        from mesh.stores.cassandra import open_cassandra_history

        return await open_cassandra_history(dsn)
    raise ValueError(f"no history store for scheme {scheme!r} (sqlite, cassandra)")


async def open_metadata(dsn: str, *, primary_reads: bool = False) -> MetadataStore:
    """Opens the metadata store a DSN names.

    Args:
        dsn: The store's DSN.
        primary_reads: Read from the primary whatever the DSN's read preference
            (for the Command Service, which authorizes right after its own writes).
    """
    scheme = _scheme(dsn)
    if scheme == "sqlite":
        from mesh.stores.sqlite import SqliteMetadataStore

        return SqliteMetadataStore(_sqlite_path(dsn))
    if scheme in ("mongodb", "mongodb+srv"):
        from mesh.stores.mongo import open_mongo_metadata

        return await open_mongo_metadata(dsn, read_preference="primary" if primary_reads else None)
    raise ValueError(f"no metadata store for scheme {scheme!r} (sqlite, mongodb)")


async def open_command(dsn: str) -> CommandStore:
    """Opens the command store a DSN names."""
    scheme = _scheme(dsn)
    if scheme == "sqlite":
        from mesh.stores.sqlite import SqliteCommandStore

        return SqliteCommandStore(_sqlite_path(dsn))
    if scheme in ("mongodb", "mongodb+srv"):
        from mesh.stores.mongo import open_mongo_command

        return await open_mongo_command(dsn)
    raise ValueError(f"no command store for scheme {scheme!r} (sqlite, mongodb)")
