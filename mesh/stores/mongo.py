"""The MongoDB-wire backend of the metadata and command stores (PyMongo async API).

Production runs a MongoDB replica set: the primary in the primary region, secondaries
in the others (ADR-010). Tests and the local "production stores" mode run FerretDB
v1.24.2 on SQLite (:mod:`mesh.harness.servers.ferretdb`). The code here is written for MongoDB and
restricted to what FerretDB also does correctly.

Documents (a string ``_id`` everywhere: on MongoDB the cheapest lookup, and
``{_id: <string>}`` is the only filter FerretDB hands to SQL; MongoDB uses the
secondary indexes created at open for the rest):

=================  ==========================================  =============================
collection         ``_id`` (one document per ...)              secondary indexes
=================  ==========================================  =============================
``channels``       ``<channel_id>`` (channel): name, creator,   none (``_id`` lookups only)
                   visibility, ``last_seq``,
                   ``membership_seq``, ``last_activity_ms``
``memberships``    ``<channel>:<user>`` (membership):           ``(channel_id, member,
                   ``member`` (bool), ``seq`` of the change     user_id)``, ``(user_id,
                   that set it                                  member, channel_id)``
``read_markers``   ``<user>:<channel>``: ``seq``                ``(user_id, channel_id)``
``command_log``    ``<channel>:<seq, 20 digits>`` (entry):      ``(channel_id, seq)`` unique,
                   ``event``, ``idempotency_key`` (absent if    ``idempotency_key`` unique
                   none), ``published``                         sparse, ``(published,
                                                                channel_id, seq)``
``message_index``  ``<message_id>``                             none
``schema``         ``metadata`` / ``command``: ``version``      none
=================  ==========================================  =============================

``:`` and ``%`` inside id parts are percent-escaped, so two different pairs never
share an ``_id``. A log entry's ``_id`` *is* its ``(channel_id, seq)``: a second
writer of the same seq fails on the primary key itself.

Choices, and why:

* **No multi-document transactions** (FerretDB has none). Every write is one
  single-document operation, ordered so that a crash between two of them is repaired
  by applying the same event again (events are delivered at least once):

  - a membership change writes the member document first and raises the channel's
    ``membership_seq`` last, so a redelivery still passes the channel's guard and
    completes the change;
  - each member document carries the seq of the change that set it and is only
    overwritten by a newer one (``{_id, seq: {$lt: n}}`` upsert). A stale or
    redelivered event therefore never undoes a newer change, even when two appliers
    race on MongoDB; a leave keeps the document as a tombstone (``member: false``)
    for the same reason.

* **Guards are evaluated per document**: membership changes follow the SQLite
  semantics (applied only when ``event.seq`` > the channel's ``membership_seq``); read
  markers and ``last_seq``/``last_activity_ms`` only move forward (``$max``).
* **Consistent multi-document reads.** ``members()``, ``channel()`` and
  ``all_memberships()`` read the channel documents first and the member documents
  second, in one causally consistent session: under ``readPreference=nearest`` the
  two reads may hit different secondaries, and causal consistency makes the second
  one at least as new as the first, so the member list is never older than the
  ``membership_seq`` returned with it (it may be newer, which re-applying the next
  change tolerates).
* **Read preference.** The command store always reads the primary: ``last_seq``,
  ``by_idempotency_key`` and ``unpublished`` decide what gets written next. The
  metadata store reads with the read preference it is given (``read_preference=``,
  else the DSN's ``readPreference``, else primary); the reads inside ``apply()``
  always go to the primary. So: the **Command Service** must open the metadata store
  with primary reads (the default): it authorizes with ``is_member``/``channel`` right
  after its own writes (join then send, ``join_channel`` returning the channel,
  ``mark_read``). **Query, Notification and Fan-Out** in secondary regions use
  ``readPreference=nearest``: they see the primary's writes after replication lag,
  exactly as a region's SQLite replica lags behind the event stream.
* **Write concern** is ``majority`` for both stores, whatever the DSN says: an
  acknowledged command-log entry must survive a fail-over, or its seq would be handed
  out twice.
* **Bounded time**: unless the DSN sets them, ``serverSelectionTimeoutMS`` is 10 s,
  ``connectTimeoutMS`` 5 s and ``socketTimeoutMS`` 15 s (a DSN may set ``timeoutMS``
  instead, for one deadline per operation, retries included). Losing the server (no
  primary, network errors, timeouts) raises
  :class:`mesh.core.errors.Unavailable` ``BACKEND_UNAVAILABLE``; other server errors
  propagate unchanged.
* **Schema step at open**: a versioned list of migrations (index creation, which is
  idempotent) recorded in ``schema``. A store whose schema is current opens without
  writing, so a reader in a secondary region starts during a WAN partition; a
  database migrated by newer code is refused.

Known differences between MongoDB and FerretDB v1.24.2 (SQLite) that matter here:

* FerretDB runs read-modify-write updates (``$max``, conditional updates) as read,
  compute, write back, without a lock: two *concurrent* writers of one document can
  lose an update there. The product has one writer per channel (the Command Service,
  under its per-channel lock), so keep it that way: do not let a worker project into
  a MongoDB-wire metadata store the Command Service also writes. Unique indexes and
  ``_id`` (``LogConflict``) are enforced atomically on both.
* FerretDB ignores ``sparse`` but, like SQLite, treats a missing field as distinct in
  a unique index; MongoDB needs ``sparse`` so log entries without an idempotency key
  do not collide. The key is therefore omitted, never stored as null.
* FerretDB has no retryable-write deduplication (its handlers ignore ``lsid`` and
  ``txnNumber``): if an acknowledgement is lost and the driver retries an ``append``,
  FerretDB reports ``LogConflict`` for the entry that was in fact written (the Command
  Service then finds it by its idempotency key, or re-reads ``last_seq``). MongoDB
  returns the first result.
* FerretDB sends no ``operationTime``, so causal sessions add nothing there (one node).
* Nothing is indexed for queries on FerretDB: every filter other than ``{_id}`` is a
  scan in Go, and even ``{_id}`` is a scan in SQLite (v1.24.2 queries
  ``_ferretdb_sjson->'$._id'`` but indexes ``_ferretdb_sjson->"_id"``; ``EXPLAIN
  QUERY PLAN`` says ``SCAN``), merely a fast one. Modifying updates and deletes cost
  about 15-25 ms at 5,000-6,000 documents there, growing with the collection
  (``mark_published`` on a long log). Do not judge performance on FerretDB.

Example:
    >>> import asyncio
    >>> async def demo(uri: str) -> int:
    ...     store = await open_mongo_command(f"{uri}chatmesh?replicaSet=rs0")
    ...     try:
    ...         return await store.last_seq("ch_x")
    ...     finally:
    ...         await store.close()
    >>> asyncio.run(demo("mongodb://127.0.0.1:27017/"))  # doctest: +SKIP
    0
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlsplit

from pymongo import AsyncMongoClient, WriteConcern
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, PyMongoError
from pymongo.read_preferences import (
    Primary,
    _ServerMode,
    make_read_preference,
    read_pref_mode_from_name,
)

from chatmesh.v1 import channel_pb2, events_pb2
from mesh.core.errors import Unavailable
from mesh.stores.base import ChannelClock, LogConflict, LogEntry, MessageRecord

__all__ = [
    "DEFAULT_DATABASE",
    "MongoCommandStore",
    "MongoMetadataStore",
    "open_mongo_command",
    "open_mongo_metadata",
]

logger = logging.getLogger(__name__)

_EVERY_REGION = (
    "the MongoDB metadata store does not implement the every-region write mode (ADR-026)"
)

DEFAULT_DATABASE: Final = "chatmesh"
"""Database used when the DSN names none (``mongodb://host/`` or ``mongodb://host``)."""

Doc = dict[str, Any]
Collection = AsyncCollection[Doc]

_DEFAULT_TIMEOUTS: Final = {
    "serverSelectionTimeoutMS": 10_000,
    "connectTimeoutMS": 5_000,
    "socketTimeoutMS": 15_000,
}
_DUPLICATE_KEY: Final = 11000
_UPSERT_ATTEMPTS: Final = 3
"""Concurrent upserts of a new ``_id`` can fail with a duplicate key (MongoDB retries
some of these races on the server, FerretDB never); the next attempt is an update."""

_MAJORITY: Final = WriteConcern(w="majority")

P = ParamSpec("P")
R = TypeVar("R")


# ---------------------------------------------------------------------------- helpers


def _part(value: str) -> str:
    """One component of a compound ``_id``, with the separator escaped."""
    return value.replace("%", "%25").replace(":", "%3A")


def _member_id(channel_id: str, user_id: str) -> str:
    return f"{_part(channel_id)}:{_part(user_id)}"


def _marker_id(user_id: str, channel_id: str) -> str:
    return f"{_part(user_id)}:{_part(channel_id)}"


def _log_id(channel_id: str, seq: int) -> str:
    # Fixed width so a channel's ids sort by seq (handy when reading the raw data).
    return f"{_part(channel_id)}:{seq:020d}"


def _backend_errors(
    what: str,
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Maps "the database is unreachable or too slow" to :class:`Unavailable`.

    This is the one place where driver errors become domain errors; anything else
    (a server-side bug, a bad query) propagates and is reported as internal.
    """

    def decorate(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await fn(*args, **kwargs)
            except PyMongoError as exc:
                if isinstance(exc, ConnectionFailure) or exc.timeout:
                    logger.warning("%s store: %s failed: %r", what, fn.__name__, exc)
                    raise Unavailable(
                        "BACKEND_UNAVAILABLE", f"the {what} store is unavailable; retry"
                    ) from exc
                raise

        return wrapper

    return decorate


_metadata_errors = _backend_errors("metadata")
_command_errors = _backend_errors("command")


async def _upsert(coll: Collection, query: Mapping[str, Any], update: Mapping[str, Any]) -> None:
    """``update_one(..., upsert=True)``, retried when a concurrent upsert inserted first."""
    for attempt in range(_UPSERT_ATTEMPTS):
        try:
            await coll.update_one(query, update, upsert=True)
            return
        except DuplicateKeyError:
            if attempt == _UPSERT_ATTEMPTS - 1:
                raise


def _client(dsn: str) -> AsyncMongoClient[Doc]:
    """A client for ``dsn``, with bounded waits for whatever the DSN leaves unset."""
    given = {key.lower() for key, _ in parse_qsl(urlsplit(dsn).query)}
    options: dict[str, Any] = {"appname": "chatmesh"}
    # Not timeoutMS: once set, it replaces serverSelectionTimeoutMS, so a DSN asking
    # for a short selection timeout would silently get ours. Each wait is bounded
    # on its own instead (socketTimeoutMS defaults to "forever").
    for option, default in _DEFAULT_TIMEOUTS.items():
        if option.lower() not in given:
            options[option] = default
    return AsyncMongoClient(dsn, **options)


def _read_preference(name: str | None, client: AsyncMongoClient[Doc]) -> _ServerMode:
    """``name`` (``primary``, ``nearest``, ...) as a read preference; the DSN's if None."""
    if name is None:
        return client.read_preference
    return make_read_preference(read_pref_mode_from_name(name), None)


# A migration must be idempotent: two processes may run it at once, and a crash may
# interrupt it before the new version is recorded.
Migration = Callable[[AsyncDatabase[Doc]], Awaitable[None]]


async def _migrate(
    db: AsyncDatabase[Doc], component: str, migrations: list[Migration], read_pref: _ServerMode
) -> None:
    """Brings ``component``'s schema to ``len(migrations)``; no write if already there.

    Raises:
        RuntimeError: The database was migrated by newer code.
    """
    schema = db.get_collection("schema", read_preference=read_pref)
    doc = await schema.find_one({"_id": component})
    current = int(doc["version"]) if doc else 0
    target = len(migrations)
    if current > target:
        raise RuntimeError(
            f"{component} schema in database {db.name!r} is version {current}; this code knows up to {target}"
        )
    if current == target:
        return
    for version in range(current, target):
        logger.info("migrating %s schema of %s to version %d", component, db.name, version + 1)
        await migrations[version](db)
    await _upsert(
        db.get_collection("schema", write_concern=_MAJORITY),
        {"_id": component},
        {"$max": {"version": target}},
    )


async def _metadata_v1(db: AsyncDatabase[Doc]) -> None:
    members = db.get_collection("memberships")
    # members(), channel(), all_memberships(): equality on member, range/sort by channel then user.
    await members.create_index(
        [("channel_id", 1), ("member", 1), ("user_id", 1)], name="by_channel"
    )
    # channels_of(): the same relation from the user's side.
    await members.create_index([("user_id", 1), ("member", 1), ("channel_id", 1)], name="by_user")
    await db.get_collection("read_markers").create_index(
        [("user_id", 1), ("channel_id", 1)], name="by_user"
    )


async def _command_v1(db: AsyncDatabase[Doc]) -> None:
    log = db.get_collection("command_log")
    # _id already makes (channel_id, seq) unique; this index serves last_seq and keeps
    # the constraint even if the _id scheme ever changes.
    await log.create_index([("channel_id", 1), ("seq", 1)], name="channel_seq", unique=True)
    # sparse: entries without a key (the field is absent) must not collide on MongoDB.
    await log.create_index(
        [("idempotency_key", 1)], name="idempotency_key", unique=True, sparse=True
    )
    # unpublished(): equality on published=false, then in (channel_id, seq) order.
    # (A partial index on {published: false} would be smaller on MongoDB, but FerretDB
    # rejects partialFilterExpression, and one schema for both is worth more here.)
    await log.create_index([("published", 1), ("channel_id", 1), ("seq", 1)], name="unpublished")


_METADATA_MIGRATIONS: Final[list[Migration]] = [_metadata_v1]
_COMMAND_MIGRATIONS: Final[list[Migration]] = [_command_v1]


# ---------------------------------------------------------------------------- metadata


def _channel_from_doc(doc: Mapping[str, Any], members: list[str]) -> channel_pb2.Channel:
    ch = channel_pb2.Channel(
        channel_id=str(doc["_id"]),
        name=str(doc.get("name", "")),
        created_by_user_id=str(doc.get("created_by", "")),
        visibility=int(doc.get("visibility", 0)),  # type: ignore[arg-type]
        last_seq=int(doc.get("last_seq", 0)),
        member_user_ids=members,
    )
    ch.created_at.FromMilliseconds(int(doc.get("created_at_ms", 0)))
    return ch


class MongoMetadataStore:
    """Channels, memberships and read markers in MongoDB (or FerretDB).

    Use :func:`open_mongo_metadata`; the store owns ``client`` and closes it.
    """

    def __init__(
        self,
        client: AsyncMongoClient[Doc],
        database: str,
        *,
        read_preference: _ServerMode | None = None,
    ) -> None:
        """Wraps a database; no I/O (the schema step is :meth:`migrate`).

        Args:
            client: The connection pool; closed by :meth:`close`.
            database: Database name.
            read_preference: Where the public read methods read; defaults to the
                client's (the DSN's ``readPreference``, primary if unset).
        """
        self._client = client
        self.read_preference = (
            read_preference if read_preference is not None else client.read_preference
        )
        db = client.get_database(database, write_concern=_MAJORITY)
        self._db = db
        # Public reads: the configured preference (nearest in secondary regions).
        self._channels: Collection = db.get_collection(
            "channels", read_preference=self.read_preference
        )
        self._members: Collection = db.get_collection(
            "memberships", read_preference=self.read_preference
        )
        self._markers: Collection = db.get_collection(
            "read_markers", read_preference=self.read_preference
        )
        # apply(): read-modify-write decisions must see the latest state, i.e. the primary.
        self._w_channels: Collection = db.get_collection("channels", read_preference=Primary())
        self._w_members: Collection = db.get_collection("memberships", read_preference=Primary())
        self._w_markers: Collection = db.get_collection("read_markers", read_preference=Primary())

    @_metadata_errors
    async def migrate(self) -> None:
        """Creates the collections' indexes if this database's schema is behind."""
        await _migrate(self._db, "metadata", _METADATA_MIGRATIONS, self.read_preference)

    @asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[AsyncClientSession]:
        """A causally consistent session: later reads are at least as new as earlier ones."""
        async with self._client.start_session(causal_consistency=True) as session:
            yield session

    # -- writes -------------------------------------------------------------------

    @_metadata_errors
    async def apply(self, event: events_pb2.Event) -> None:
        """Applies a channel or user event (idempotent; older membership changes are ignored)."""
        kind = event.WhichOneof("payload")
        if kind == "read_marker_updated":
            rm = event.read_marker_updated
            await _upsert(
                self._w_markers,
                {"_id": _marker_id(rm.user_id, event.channel_id)},
                {
                    "$max": {"seq": rm.last_read_seq},
                    "$setOnInsert": {"user_id": rm.user_id, "channel_id": event.channel_id},
                },
            )
            return
        if event.seq <= 0 or not event.channel_id:
            return  # ephemeral events carry no state
        seq = event.seq
        forward: dict[str, int] = {
            "last_seq": seq,
            "last_activity_ms": event.occurred_at.ToMilliseconds(),
        }
        if kind == "channel_created":
            ch = event.channel_created.channel
            # Members first: once the channel document exists, readers find its members.
            await self._set_members(ch.channel_id, list(ch.member_user_ids), seq, member=True)
            await _upsert(
                self._w_channels,
                {"_id": ch.channel_id},
                {
                    "$setOnInsert": {
                        "name": ch.name,
                        "created_by": ch.created_by_user_id,
                        "created_at_ms": ch.created_at.ToMilliseconds(),
                        "visibility": int(ch.visibility),
                        "membership_seq": seq,
                    },
                    "$max": forward,
                },
            )
            return
        if kind in ("member_joined", "member_left"):
            doc = await self._w_channels.find_one({"_id": event.channel_id}, {"membership_seq": 1})
            if doc is not None and seq > int(doc.get("membership_seq", 0)):
                joined = kind == "member_joined"
                user = event.member_joined.user_id if joined else event.member_left.user_id
                await self._set_members(event.channel_id, [user], seq, member=joined)
                # Raised last, so a crash before this line leaves the guard open for the redelivery.
                forward["membership_seq"] = seq
        await self._w_channels.update_one({"_id": event.channel_id}, {"$max": forward})

    async def _set_members(
        self, channel_id: str, users: Iterable[str], seq: int, *, member: bool
    ) -> None:
        """Records ``member`` for each user, unless a change newer than ``seq`` already did."""
        docs = [
            {
                "_id": _member_id(channel_id, u),
                "channel_id": channel_id,
                "user_id": u,
                "member": member,
                "seq": seq,
            }
            for u in dict.fromkeys(users)
        ]
        if not docs:
            return
        # Inserting is the common case (a new channel, a first join) and one round trip;
        # an existing document takes the guarded update below instead.
        existing: list[Doc] = []
        try:
            await self._w_members.insert_many(docs, ordered=False)
        except DuplicateKeyError:
            existing = docs
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(err.get("code") != _DUPLICATE_KEY for err in errors):
                raise
            existing = [docs[int(err["index"])] for err in errors]
        for doc in existing:
            # Only a newer change may overwrite (a redelivered join must not undo a later leave).
            await self._w_members.update_one(
                {"_id": doc["_id"], "seq": {"$lt": seq}}, {"$set": {"member": member, "seq": seq}}
            )

    # -- reads --------------------------------------------------------------------

    async def _member_ids(self, channel_id: str, session: AsyncClientSession | None) -> list[str]:
        cursor = self._members.find(
            {"channel_id": channel_id, "member": True}, {"_id": 0, "user_id": 1}, session=session
        ).sort("user_id", 1)
        return [str(d["user_id"]) async for d in cursor]

    @_metadata_errors
    async def channel(self, channel_id: str) -> channel_pb2.Channel | None:
        """A channel with its members (sorted), or None."""
        async with self._snapshot() as session:
            doc = await self._channels.find_one({"_id": channel_id}, session=session)
            if doc is None:
                return None
            return _channel_from_doc(doc, await self._member_ids(channel_id, session))

    @_metadata_errors
    async def is_member(self, channel_id: str, user_id: str) -> bool:
        """Whether ``user_id`` is a member of the channel."""
        doc = await self._members.find_one({"_id": _member_id(channel_id, user_id)}, {"member": 1})
        return bool(doc and doc.get("member"))

    @_metadata_errors
    async def members(self, channel_id: str) -> tuple[list[str], int]:
        """``(sorted member ids, seq of the last membership change)``; ``([], 0)`` if unknown."""
        async with self._snapshot() as session:
            # Channel first: the members read after it are at least as new as this seq.
            doc = await self._channels.find_one(
                {"_id": channel_id}, {"membership_seq": 1}, session=session
            )
            if doc is None:
                return [], 0
            return await self._member_ids(channel_id, session), int(doc.get("membership_seq", 0))

    @_metadata_errors
    async def channels_of(self, user_id: str) -> list[channel_pb2.Channel]:
        """The user's channels (with members), most recently active first."""
        async with self._snapshot() as session:
            ids = [
                str(d["channel_id"])
                async for d in self._members.find(
                    {"user_id": user_id, "member": True},
                    {"_id": 0, "channel_id": 1},
                    session=session,
                )
            ]
            if not ids:
                return []
            docs = (
                await self._channels.find({"_id": {"$in": ids}}, session=session)
                .sort([("last_activity_ms", -1), ("_id", 1)])
                .to_list()
            )
            members: dict[str, list[str]] = {str(d["_id"]): [] for d in docs}
            async for d in self._members.find(
                {"channel_id": {"$in": ids}, "member": True},
                {"_id": 0, "channel_id": 1, "user_id": 1},
                session=session,
            ).sort([("channel_id", 1), ("user_id", 1)]):
                members.setdefault(str(d["channel_id"]), []).append(str(d["user_id"]))
            return [_channel_from_doc(d, members[str(d["_id"])]) for d in docs]

    @_metadata_errors
    async def read_marker(self, user_id: str, channel_id: str) -> int:
        """The user's highest read seq in the channel (0 if never)."""
        doc = await self._markers.find_one({"_id": _marker_id(user_id, channel_id)}, {"seq": 1})
        return int(doc["seq"]) if doc else 0

    @_metadata_errors
    async def read_markers(self, user_id: str) -> dict[str, int]:
        """channel_id -> the user's read marker, for every channel with one."""
        cursor = self._markers.find({"user_id": user_id}, {"_id": 0, "channel_id": 1, "seq": 1})
        return {str(d["channel_id"]): int(d["seq"]) async for d in cursor}

    @_metadata_errors
    async def all_memberships(
        self, after_channel_id: str = "", limit: int = 10_000
    ) -> list[tuple[str, int, list[str]]]:
        """A page of ``(channel_id, membership_seq, members)`` ordered by channel id (for loading caches)."""
        if limit <= 0:
            return []  # MongoDB reads limit(0) as "no limit"
        async with self._snapshot() as session:
            chans = (
                await self._channels.find(
                    {"_id": {"$gt": after_channel_id}}, {"membership_seq": 1}, session=session
                )
                .sort("_id", 1)
                .limit(limit)
                .to_list()
            )
            if not chans:
                return []
            members: dict[str, list[str]] = {str(c["_id"]): [] for c in chans}
            # The page is a contiguous run of channel ids, so one range read covers it.
            async for d in self._members.find(
                {"channel_id": {"$gte": chans[0]["_id"], "$lte": chans[-1]["_id"]}, "member": True},
                {"_id": 0, "channel_id": 1, "user_id": 1},
                session=session,
            ).sort([("channel_id", 1), ("user_id", 1)]):
                page = members.get(str(d["channel_id"]))
                if page is not None:  # member documents written just before their channel's
                    page.append(str(d["user_id"]))
            return [
                (str(c["_id"]), int(c.get("membership_seq", 0)), members[str(c["_id"])])
                for c in chans
            ]

    async def channel_clock(self, channel_id: str) -> ChannelClock:
        """Not built: the services refuse the every-region mode with MongoDB (ADR-026)."""
        raise NotImplementedError(_EVERY_REGION)

    async def origin_read_marker(self, user_id: str, channel_id: str) -> dict[str, int]:
        """Not built (ADR-026)."""
        raise NotImplementedError(_EVERY_REGION)

    async def origin_read_markers(self, user_id: str) -> dict[str, dict[str, int]]:
        """Not built (ADR-026)."""
        raise NotImplementedError(_EVERY_REGION)

    async def known_message(self, message_id: str) -> MessageRecord | None:
        """Not built (ADR-026)."""
        raise NotImplementedError(_EVERY_REGION)

    async def close(self) -> None:
        """Releases connections."""
        await self._client.close()


# ---------------------------------------------------------------------------- command


def _entry_from_doc(doc: Mapping[str, Any]) -> LogEntry:
    return LogEntry(
        channel_id=str(doc["channel_id"]),
        seq=int(doc["seq"]),
        event=bytes(doc["event"]),
        idempotency_key=doc.get("idempotency_key"),
        published=bool(doc.get("published", False)),
    )


class MongoCommandStore:
    """The command log and message index in MongoDB (primary region; primary reads only).

    Use :func:`open_mongo_command`; the store owns ``client`` and closes it.
    """

    def __init__(self, client: AsyncMongoClient[Doc], database: str) -> None:
        """Wraps a database; no I/O (the schema step is :meth:`migrate`)."""
        self._client = client
        # Whatever the DSN says: the log decides the next seq, so it reads the primary.
        self.read_preference: _ServerMode = Primary()
        db = client.get_database(
            database, write_concern=_MAJORITY, read_preference=self.read_preference
        )
        self._db = db
        self._log: Collection = db.get_collection("command_log")
        self._messages: Collection = db.get_collection("message_index")

    @_command_errors
    async def migrate(self) -> None:
        """Creates the collections' indexes if this database's schema is behind."""
        await _migrate(self._db, "command", _COMMAND_MIGRATIONS, Primary())

    @_command_errors
    async def last_seq(self, channel_id: str) -> int:
        """Highest seq in the channel's log (0 if none)."""
        doc = await self._log.find_one({"channel_id": channel_id}, {"seq": 1}, sort=[("seq", -1)])
        return int(doc["seq"]) if doc else 0

    @_command_errors
    async def append(self, entry: LogEntry, message: MessageRecord | None = None) -> None:
        """Appends an entry, then writes the message record it creates or changes.

        Without transactions the two are separate writes, in this order: a crash
        between them leaves a log entry whose record is missing, which the
        Command Service's repair pass (re-projecting unpublished entries) writes.

        Raises:
            LogConflict: ``(channel_id, seq)`` or ``idempotency_key`` exists already.
        """
        doc: Doc = {
            "_id": _log_id(entry.channel_id, entry.seq),
            "channel_id": entry.channel_id,
            "seq": entry.seq,
            "event": entry.event,
            "published": entry.published,
        }
        if entry.idempotency_key is not None:
            doc["idempotency_key"] = (
                entry.idempotency_key
            )  # absent, never null: see the sparse index
        try:
            await self._log.insert_one(doc)
        except DuplicateKeyError as exc:
            # Which index fired does not matter to the caller (and FerretDB does not say).
            raise LogConflict(
                f"{entry.channel_id}:{entry.seq} or its idempotency key is taken: {exc}"
            ) from None
        if message is not None:
            await self.put_message(message)

    @_command_errors
    async def by_idempotency_key(self, key: str) -> LogEntry | None:
        """The entry recorded under an idempotency key, if any."""
        doc = await self._log.find_one({"idempotency_key": key})
        return _entry_from_doc(doc) if doc else None

    @_command_errors
    async def mark_published(self, channel_id: str, seq: int) -> None:
        """Records that JetStream acknowledged the entry (no-op for an unknown entry)."""
        await self._log.update_one({"_id": _log_id(channel_id, seq)}, {"$set": {"published": True}})

    @_command_errors
    async def unpublished(self, limit: int = 1000, channel_id: str | None = None) -> list[LogEntry]:
        """Entries not yet acknowledged by JetStream, in ``(channel_id, seq)`` order."""
        if limit <= 0:
            return []  # MongoDB reads limit(0) as "no limit"
        query: Doc = {"published": False}
        if channel_id is not None:
            query["channel_id"] = channel_id
        cursor = self._log.find(query).sort([("channel_id", 1), ("seq", 1)]).limit(limit)
        return [_entry_from_doc(d) async for d in cursor]

    @_command_errors
    async def put_message(self, record: MessageRecord) -> None:
        """Inserts or replaces a message record."""
        doc = {
            "channel_id": record.channel_id,
            "seq": record.seq,
            "sender_user_id": record.sender_user_id,
            "deleted": record.deleted,
            "body": record.body,
        }
        for attempt in range(_UPSERT_ATTEMPTS):
            try:
                await self._messages.replace_one({"_id": record.message_id}, doc, upsert=True)
                return
            except DuplicateKeyError:
                if attempt == _UPSERT_ATTEMPTS - 1:
                    raise

    @_command_errors
    async def message(self, message_id: str) -> MessageRecord | None:
        """A message record by id."""
        doc = await self._messages.find_one({"_id": message_id})
        if doc is None:
            return None
        return MessageRecord(
            message_id=str(doc["_id"]),
            channel_id=str(doc["channel_id"]),
            seq=int(doc["seq"]),
            sender_user_id=str(doc["sender_user_id"]),
            deleted=bool(doc["deleted"]),
            body=bytes(doc.get("body", b"")),
        )

    async def close(self) -> None:
        """Releases connections."""
        await self._client.close()


# ---------------------------------------------------------------------------- opening


def _database_name(client: AsyncMongoClient[Doc]) -> str:
    return client.get_default_database(DEFAULT_DATABASE).name


async def open_mongo_metadata(
    dsn: str, *, read_preference: str | None = None
) -> MongoMetadataStore:
    """Opens (and migrates if needed) the metadata store a ``mongodb://`` DSN names.

    Args:
        dsn: ``mongodb://host:port[,host...]/<database>?replicaSet=...&readPreference=...``;
            the database defaults to ``chatmesh``.
        read_preference: ``primary`` (what the Command Service needs: it reads its own
            writes), ``nearest`` (Query/Notification/Fan-Out in other regions), or any
            other mode name; None takes the DSN's ``readPreference`` (primary if unset).

    Raises:
        Unavailable: No server answered within the server-selection timeout.
        RuntimeError: The database's schema is newer than this code.
    """
    client = _client(dsn)
    try:
        store = MongoMetadataStore(
            client,
            _database_name(client),
            read_preference=_read_preference(read_preference, client),
        )
        await store.migrate()
    except BaseException:
        await client.close()
        raise
    return store


async def open_mongo_command(dsn: str) -> MongoCommandStore:
    """Opens (and migrates if needed) the command store a ``mongodb://`` DSN names.

    It reads the primary whatever the DSN's ``readPreference``.

    Raises:
        Unavailable: No primary answered within the server-selection timeout.
        RuntimeError: The database's schema is newer than this code.
    """
    client = _client(dsn)
    try:
        store = MongoCommandStore(client, _database_name(client))
        await store.migrate()
    except BaseException:
        await client.close()
        raise
    return store
