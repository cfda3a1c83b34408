"""The embedded backend: SQLite files, one set per region, nothing to install.

Each region's worker applies the region's event stream (EVENTS in the primary,
its mirror elsewhere) to that region's ``history.db`` and, outside the primary,
``metadata.db``; so a region's SQLite files play the role of its Cassandra DC
and MongoDB secondary, with the JetStream mirror as the replication link.

Queries run synchronously on the event loop: they are index lookups that take
microseconds, and a thread hop per call would cost more than it saves. WAL
mode lets the other processes of the region read while one writes. The command
log's writes, which wait for fsync, go through a writer thread that commits
concurrent commands together (:class:`SqliteCommandStore`).

Example:
    >>> import asyncio, tempfile, pathlib
    >>> async def demo() -> int:
    ...     store = SqliteHistoryStore(pathlib.Path(tempfile.mkdtemp()) / "history.db")
    ...     return await store.last_seq("ch_x")
    >>> asyncio.run(demo())
    0
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from chatmesh.v1 import channel_pb2, events_pb2, message_pb2
from mesh.core.convergence import Stamp, is_member
from mesh.stores._origin import (
    HLC_LIMIT,
    current_message,
    is_origin_event,
    membership_change,
    message_id_of,
    order_key_of,
)
from mesh.stores.base import (
    UNREAD_CAP,
    ChannelClock,
    HistoryPage,
    LogConflict,
    LogEntry,
    MessageRecord,
    OrderedPage,
    OrderKey,
)

__all__ = ["SqliteCommandStore", "SqliteHistoryStore", "SqliteMetadataStore"]

logger = logging.getLogger(__name__)


_FILE_MODE = 0o600
_DIR_MODE = 0o700


def _private_file(path: Path) -> None:
    """Creates ``path`` readable by its owner only, or narrows an existing file to that.

    Messages and commands are users' data: no other local account may read them.
    SQLite gives the ``-wal`` and ``-shm`` files the main file's mode.
    """
    path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, _FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, _FILE_MODE)
    finally:
        os.close(fd)


def _connect(path: Path, *, durable: bool) -> sqlite3.Connection:
    _private_file(path)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=5000")
    # WAL is a property of the file: set once, every later open finds it. Several
    # processes open one region's metadata file at start-up (worker, query,
    # notification; in the every-region mode the Command Service too); switching the
    # mode needs the file to itself, so a process that meets another's transaction
    # waits and tries again instead of failing its start.
    deadline = time.monotonic() + 60.0
    while str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    # FULL: every commit is fsynced (the command log must survive power loss);
    # NORMAL: fsync at checkpoints only (projections can be rebuilt from the stream).
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys=OFF")
    return conn


class _Db:
    """A connection plus the schema it needs."""

    SCHEMA: str = ""
    DURABLE = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = _connect(path, durable=self.DURABLE)
        with self.conn:
            self.conn.executescript(self.SCHEMA)

    async def close(self) -> None:
        self.conn.close()


class SqliteCommandStore(_Db):
    """Command log and message index (primary region), with group commit.

    Writes (appends, message records, publish marks) go to one writer thread
    that owns the durable connection: it takes every write queued since its last
    commit and commits them in one transaction, so many concurrent commands
    share one fsync (``synchronous=FULL``) and the event loop never waits for
    the disk. Each :meth:`append` returns only after the transaction holding its
    entry committed; an entry that conflicts is rolled back alone (a savepoint
    per entry), a failed commit fails every entry of the batch.

    Reads run on the caller's thread over a second connection: they are index
    lookups of microseconds (a thread hop would cost more) and, in WAL mode,
    see only committed data, so a read never reports an entry that is not yet
    durable.

    :meth:`mark_published` does not wait: marks need not be durable (an entry
    left unpublished is published again, and JetStream de-duplicates it), so
    they ride along with the next append's commit (or commit alone within a
    quarter of a second when no append comes); until then this store's reads
    treat the entry as published already.
    """

    DURABLE = True
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS command_log (
        channel_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        event BLOB NOT NULL,
        idempotency_key TEXT UNIQUE,
        published INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (channel_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS command_log_pending ON command_log (channel_id, seq) WHERE published = 0;
    CREATE TABLE IF NOT EXISTS message_index (
        message_id TEXT PRIMARY KEY,
        channel_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        sender_user_id TEXT NOT NULL,
        deleted INTEGER NOT NULL,
        body BLOB NOT NULL
    ) WITHOUT ROWID;
    """

    MAX_BATCH = 512
    """Most writes in one transaction (bounds how long one commit holds the write lock)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        # self.conn belongs to the writer thread from here on; reads use their own.
        self._read = _connect(path, durable=False)
        self._writer = _GroupCommitter(
            self.conn, name=f"sqlite-writer:{path.name}", max_batch=self.MAX_BATCH
        )
        self._marks: set[tuple[str, int]] = set()
        """Publish marks handed to the writer and not yet committed."""

    @property
    def commits(self) -> int:
        """Write transactions committed so far (each one fsync)."""
        return self._writer.commits

    async def close(self) -> None:
        await self._writer.close()
        self._read.close()
        await super().close()

    async def last_seq(self, channel_id: str) -> int:
        row = self._read.execute(
            "SELECT MAX(seq) FROM command_log WHERE channel_id = ?", (channel_id,)
        ).fetchone()
        return int(row[0] or 0)

    async def append(self, entry: LogEntry, message: MessageRecord | None = None) -> None:
        await _settled(self._writer.submit(_Append(entry, message)))

    async def by_idempotency_key(self, key: str) -> LogEntry | None:
        row = self._read.execute(
            "SELECT channel_id, seq, event, idempotency_key, published FROM command_log WHERE idempotency_key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        published = bool(row[4]) or (row[0], row[1]) in self._marks
        return LogEntry(row[0], row[1], row[2], row[3], published)

    async def mark_published(self, channel_id: str, seq: int) -> None:
        position = (channel_id, seq)
        self._marks.add(position)
        done = self._writer.submit(_Mark(channel_id, seq))

        def settled(future: asyncio.Future[None]) -> None:
            self._marks.discard(position)
            if not future.cancelled():
                future.exception()  # a lost mark only means one more publish later

        done.add_done_callback(settled)

    async def unpublished(self, limit: int = 1000, channel_id: str | None = None) -> list[LogEntry]:
        # Ask for as many more rows as there are marks in flight, so that filtering
        # them out still fills ``limit``.
        want = limit + len(self._marks)
        if channel_id is None:
            rows = self._read.execute(
                "SELECT channel_id, seq, event, idempotency_key FROM command_log WHERE published = 0 "
                "ORDER BY channel_id, seq LIMIT ?",
                (want,),
            ).fetchall()
        else:
            rows = self._read.execute(
                # Without statistics the planner prefers the primary key, and would
                # scan every entry the channel ever had.
                "SELECT channel_id, seq, event, idempotency_key FROM command_log INDEXED BY command_log_pending "
                "WHERE published = 0 AND channel_id = ? ORDER BY seq LIMIT ?",
                (channel_id, want),
            ).fetchall()
        marks = self._marks
        return [LogEntry(r[0], r[1], r[2], r[3], False) for r in rows if (r[0], r[1]) not in marks][
            :limit
        ]

    async def put_message(self, record: MessageRecord) -> None:
        await _settled(self._writer.submit(_PutMessage(record)))

    async def message(self, message_id: str) -> MessageRecord | None:
        row = self._read.execute(
            "SELECT message_id, channel_id, seq, sender_user_id, deleted, body FROM message_index WHERE message_id = ?",
            (message_id,),
        ).fetchone()
        return MessageRecord(row[0], row[1], row[2], row[3], bool(row[4]), row[5]) if row else None


async def _settled(future: asyncio.Future[None]) -> None:
    """Waits for a queued write; a caller cancelled meanwhile still waits for it to settle.

    The write commits or fails whatever the caller does, so a cancelled command
    keeps its channel's lock until then: the next command on the channel sees the
    log as it is, as it did when appends were synchronous.
    """
    try:
        await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(future)
        if not future.cancelled():
            future.exception()  # retrieved: the caller was cancelled and hears only that
        raise


def _put_message(conn: sqlite3.Connection, record: MessageRecord) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO message_index (message_id, channel_id, seq, sender_user_id, deleted, body) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (
            record.message_id,
            record.channel_id,
            record.seq,
            record.sender_user_id,
            int(record.deleted),
            record.body,
        ),
    )


@dataclass(frozen=True, slots=True)
class _Append:
    entry: LogEntry
    message: MessageRecord | None

    durable = True

    def run(self, conn: sqlite3.Connection) -> None:
        e = self.entry
        try:
            conn.execute(
                "INSERT INTO command_log (channel_id, seq, event, idempotency_key, published) VALUES (?, ?, ?, ?, ?)",
                (e.channel_id, e.seq, e.event, e.idempotency_key, int(e.published)),
            )
        except sqlite3.IntegrityError as exc:
            # SQLite undid this statement alone (a statement journal), so the rest of
            # the batch stands and nothing of this entry was written.
            raise LogConflict(str(exc)) from None
        if self.message is not None:
            # Any error here fails the whole batch (see _GroupCommitter._commit), which
            # keeps the entry and its message record together.
            _put_message(conn, self.message)


@dataclass(frozen=True, slots=True)
class _PutMessage:
    record: MessageRecord

    durable = True

    def run(self, conn: sqlite3.Connection) -> None:
        _put_message(conn, self.record)


@dataclass(frozen=True, slots=True)
class _Mark:
    channel_id: str
    seq: int

    durable = False

    def run(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE command_log SET published = 1 WHERE channel_id = ? AND seq = ?",
            (self.channel_id, self.seq),
        )


class _Write(Protocol):
    durable: bool

    def run(self, conn: sqlite3.Connection) -> None: ...


class _GroupCommitter:
    """A thread that owns one connection and commits queued writes in batches.

    :meth:`submit` (event loop side) queues a write and returns a future that
    completes, on the submitter's loop, once the transaction holding the write
    committed (or with the write's own error, or the commit's error for every
    write of the batch). A batch holds whatever queued while the previous one
    committed, so batches grow with the load and a lone write waits for nobody.

    Writes that need not be durable (publish marks) do not wake the writer: they
    wait for the next durable write and share its transaction, or commit on their
    own (``synchronous=NORMAL``, no fsync) once the oldest of them has waited
    ``lazy_delay`` seconds. Each send used to cost two transactions, two
    wake-ups of this thread and two of the event loop (its append, then its
    mark); under a steady trickle of sends it now costs one of each (ADR-024).
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        name: str,
        max_batch: int = 512,
        lazy_delay: float = 0.25,
    ) -> None:
        self._conn = conn
        self._max_batch = max_batch
        self._lazy_delay = lazy_delay
        self._queue: deque[tuple[_Write, asyncio.Future[None]]] = deque()
        self._lazy: deque[tuple[_Write, asyncio.Future[None]]] = deque()
        self._lazy_since = 0.0
        """Monotonic time the oldest queued lazy write arrived."""
        self._wake = threading.Condition()
        self._closing = False
        self.commits = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, write: _Write) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._wake:
            if self._closing:
                raise RuntimeError("the store is closed")
            if write.durable:
                self._queue.append((write, future))
                self._wake.notify()
            else:
                if not self._lazy:
                    self._lazy_since = time.monotonic()
                # No notify: the writer finds it at its next durable batch or timed wake.
                self._lazy.append((write, future))
        return future

    async def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        await asyncio.to_thread(self._thread.join)

    def _take(self) -> list[tuple[_Write, asyncio.Future[None]]] | None:
        with self._wake:
            while not self._queue:
                if self._lazy and (
                    self._closing or time.monotonic() - self._lazy_since >= self._lazy_delay
                ):
                    break
                if self._closing:
                    return None
                # Timed: a lazy write queued without waking this thread must not wait
                # longer than lazy_delay (plus one period) for a durable one.
                self._wake.wait(self._lazy_delay)
            n = min(len(self._queue), self._max_batch)
            batch = [self._queue.popleft() for _ in range(n)]
            n = min(len(self._lazy), self._max_batch)
            batch += [self._lazy.popleft() for _ in range(n)]
            if self._lazy:
                self._lazy_since = time.monotonic()
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            results = self._commit(batch)
            loop = batch[0][1].get_loop()
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(_settle, batch, results)

    def _commit(
        self, batch: list[tuple[_Write, asyncio.Future[None]]]
    ) -> list[BaseException | None]:
        conn = self._conn
        durable = any(write.durable for write, _ in batch)
        results: list[BaseException | None] = []
        try:
            if not durable:
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for write, _ in batch:
                    try:
                        write.run(conn)
                    except LogConflict as exc:
                        results.append(exc)
                    else:
                        results.append(None)
                self._commit_transaction()
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            finally:
                if not durable:
                    conn.execute("PRAGMA synchronous=FULL")
        except Exception as exc:  # noqa: BLE001 - the batch failed: every write of it did
            # Any error other than a write's own conflict (I/O, disk full, locked ...)
            # may have undone the transaction, so none of the batch is reported written.
            return [exc] * len(batch)
        return results

    def _commit_transaction(self) -> None:
        self._conn.execute("COMMIT")
        self.commits += 1


def _settle(
    batch: list[tuple[_Write, asyncio.Future[None]]], results: list[BaseException | None]
) -> None:
    for (_, future), error in zip(batch, results, strict=True):
        if future.done():  # the waiter was cancelled; the write stands
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


_ORIGIN_POSITIONS = """
    CREATE TABLE IF NOT EXISTS origin_positions (
        channel_id TEXT NOT NULL,
        origin_region TEXT NOT NULL,
        applied_seq INTEGER NOT NULL DEFAULT 0,
        max_hlc INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (channel_id, origin_region)
    ) WITHOUT ROWID;
"""
"""Every-region mode: per channel and origin, the applied seq below the first hole and the
greatest hlc applied (both stores)."""


def _record_position(conn: sqlite3.Connection, applied_table: str, event: events_pb2.Event) -> None:
    """Counts a newly applied origin event into ``origin_positions``.

    ``applied_table`` holds ``(channel_id, origin_region, origin_seq)`` of every applied
    event; ``applied_seq`` moves past the event and every applied seq right after it,
    and stops below the first hole (the event that fills it moves it on).
    """
    channel_id, origin, origin_seq = event.channel_id, event.origin_region, event.origin_seq
    conn.execute(
        "INSERT INTO origin_positions (channel_id, origin_region, max_hlc) VALUES (?, ?, ?) "
        "ON CONFLICT (channel_id, origin_region) DO UPDATE SET max_hlc = MAX(max_hlc, excluded.max_hlc)",
        (channel_id, origin, event.hlc),
    )
    row = conn.execute(
        "SELECT applied_seq FROM origin_positions WHERE channel_id = ? AND origin_region = ?",
        (channel_id, origin),
    ).fetchone()
    if origin_seq != int(row[0]) + 1:
        return
    position = origin_seq
    while conn.execute(
        f"SELECT 1 FROM {applied_table} WHERE channel_id = ? AND origin_region = ? AND origin_seq = ?",
        (channel_id, origin, position + 1),
    ).fetchone():
        position += 1
    conn.execute(
        "UPDATE origin_positions SET applied_seq = ? WHERE channel_id = ? AND origin_region = ?",
        (position, channel_id, origin),
    )


def _fits(event: events_pb2.Event) -> bool:
    if event.hlc < HLC_LIMIT:
        return True
    logger.error(
        "skipping event %s of %s: hlc %d does not fit the store (a broken clock in %s)",
        event.event_id, event.channel_id, event.hlc, event.origin_region,
    )  # fmt: skip
    return False


class SqliteMetadataStore(_Db):
    """Channels, memberships and read markers of one region."""

    SCHEMA = (
        """
    CREATE TABLE IF NOT EXISTS channels (
        channel_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        visibility INTEGER NOT NULL,
        last_seq INTEGER NOT NULL DEFAULT 0,
        membership_seq INTEGER NOT NULL DEFAULT 0,
        last_activity_ms INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS members (
        channel_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        PRIMARY KEY (channel_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS members_by_user ON members (user_id, channel_id);
    CREATE TABLE IF NOT EXISTS read_markers (
        user_id TEXT NOT NULL,
        channel_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (user_id, channel_id)
    ) WITHOUT ROWID;
    -- Every-region mode (ADR-026): which origin events are applied, and what they decide.
    CREATE TABLE IF NOT EXISTS origin_applied (
        channel_id TEXT NOT NULL,
        origin_region TEXT NOT NULL,
        origin_seq INTEGER NOT NULL,
        PRIMARY KEY (channel_id, origin_region, origin_seq)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS origin_channels (
        channel_id TEXT PRIMARY KEY,
        hlc INTEGER NOT NULL,
        origin_region TEXT NOT NULL,
        event_id TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS membership_changes (
        channel_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        origin_region TEXT NOT NULL,
        origin_seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        hlc INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        seen TEXT NOT NULL,
        PRIMARY KEY (channel_id, user_id, origin_region, origin_seq)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS origin_read_markers (
        user_id TEXT NOT NULL,
        channel_id TEXT NOT NULL,
        origin_region TEXT NOT NULL,
        origin_seq INTEGER NOT NULL,
        PRIMARY KEY (user_id, channel_id, origin_region)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS known_messages (
        message_id TEXT PRIMARY KEY,
        channel_id TEXT NOT NULL,
        sender_user_id TEXT NOT NULL,
        deleted INTEGER NOT NULL,
        body BLOB NOT NULL,
        hlc INTEGER,
        origin_region TEXT NOT NULL,
        event_id TEXT NOT NULL
    ) WITHOUT ROWID;
    """
        + _ORIGIN_POSITIONS
    )

    _BUMP = (
        "UPDATE channels SET last_seq = MAX(last_seq, ?), last_activity_ms = MAX(last_activity_ms, ?) "
        "WHERE channel_id = ?"
    )

    async def apply(self, event: events_pb2.Event) -> None:
        kind = event.WhichOneof("payload")
        occurred_ms = event.occurred_at.ToMilliseconds()
        conn = self.conn
        if kind == "read_marker_updated":
            rm = event.read_marker_updated
            conn.execute(
                "INSERT INTO read_markers (user_id, channel_id, seq) VALUES (?, ?, ?) "
                "ON CONFLICT (user_id, channel_id) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                (rm.user_id, event.channel_id, rm.last_read_seq),
            )
            if rm.last_read_origins:
                # Per origin the maximum: a CRDT, so updates written in any region, applied in
                # any order and any number of times, leave every region with the same marker
                # (each row's upsert is atomic on its own; a partial apply is finished by the
                # redelivery).
                conn.executemany(
                    "INSERT INTO origin_read_markers (user_id, channel_id, origin_region, origin_seq) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (user_id, channel_id, origin_region) "
                    "DO UPDATE SET origin_seq = MAX(origin_seq, excluded.origin_seq)",
                    [(rm.user_id, event.channel_id, origin, seq)
                     for origin, seq in sorted(rm.last_read_origins.items()) if seq > 0],
                )  # fmt: skip
            return
        if is_origin_event(event):
            if _fits(event):
                self._apply_origin(event)
            return
        if event.seq <= 0 or not event.channel_id:
            return  # ephemeral events carry no state
        if kind not in ("channel_created", "member_joined", "member_left"):
            # Messages only move the channel's position: one statement, atomic on its
            # own (no transaction to open and commit around it on every send).
            conn.execute(self._BUMP, (event.seq, occurred_ms, event.channel_id))
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            if kind == "channel_created":
                ch = event.channel_created.channel
                created = conn.execute(
                    "INSERT INTO channels (channel_id, name, created_by, created_at_ms, visibility, last_seq, "
                    "membership_seq, last_activity_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (ch.channel_id, ch.name, ch.created_by_user_id, ch.created_at.ToMilliseconds(),
                     int(ch.visibility), event.seq, event.seq, occurred_ms),
                )  # fmt: skip
                if created.rowcount:
                    # Only on first application: a redelivered creation must not
                    # bring back members who have left since.
                    conn.executemany(
                        "INSERT OR IGNORE INTO members (channel_id, user_id) VALUES (?, ?)",
                        [(ch.channel_id, u) for u in ch.member_user_ids],
                    )
            elif kind in ("member_joined", "member_left"):
                row = conn.execute(
                    "SELECT membership_seq FROM channels WHERE channel_id = ?", (event.channel_id,)
                ).fetchone()
                if row is not None and event.seq > row[0]:
                    user = (
                        event.member_joined.user_id
                        if kind == "member_joined"
                        else event.member_left.user_id
                    )
                    if kind == "member_joined":
                        conn.execute(
                            "INSERT OR IGNORE INTO members (channel_id, user_id) VALUES (?, ?)",
                            (event.channel_id, user),
                        )
                    else:
                        conn.execute(
                            "DELETE FROM members WHERE channel_id = ? AND user_id = ?",
                            (event.channel_id, user),
                        )
                    conn.execute(
                        "UPDATE channels SET membership_seq = ? WHERE channel_id = ?",
                        (event.seq, event.channel_id),
                    )
            conn.execute(self._BUMP, (event.seq, occurred_ms, event.channel_id))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _channel_from_row(self, row: Sequence[Any], members: list[str]) -> channel_pb2.Channel:
        ch = channel_pb2.Channel(
            channel_id=str(row[0]),
            name=str(row[1]),
            created_by_user_id=str(row[2]),
            visibility=channel_pb2.ChannelVisibility.Name(int(row[4])),
            last_seq=int(row[5]),
            member_user_ids=members,
        )
        ch.created_at.FromMilliseconds(int(row[3]))
        return ch

    _COLUMNS = "channel_id, name, created_by, created_at_ms, visibility, last_seq"

    async def channel(self, channel_id: str) -> channel_pb2.Channel | None:
        row = self.conn.execute(
            f"SELECT {self._COLUMNS} FROM channels WHERE channel_id = ?", (channel_id,)
        ).fetchone()
        if row is None:
            return None
        members = [r[0] for r in self.conn.execute(
            "SELECT user_id FROM members WHERE channel_id = ? ORDER BY user_id", (channel_id,))]  # fmt: skip
        return self._channel_from_row(row, members)

    async def is_member(self, channel_id: str, user_id: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM members WHERE channel_id = ? AND user_id = ?", (channel_id, user_id)
        ).fetchone()
        return row is not None

    async def members(self, channel_id: str) -> tuple[list[str], int]:
        row = self.conn.execute(
            "SELECT membership_seq FROM channels WHERE channel_id = ?", (channel_id,)
        ).fetchone()
        if row is None:
            return [], 0
        users = [r[0] for r in self.conn.execute(
            "SELECT user_id FROM members WHERE channel_id = ? ORDER BY user_id", (channel_id,))]  # fmt: skip
        return users, int(row[0])

    async def channels_of(self, user_id: str) -> list[channel_pb2.Channel]:
        rows = self.conn.execute(
            f"SELECT {', '.join('c.' + c.strip() for c in self._COLUMNS.split(','))} FROM members m "
            "JOIN channels c ON c.channel_id = m.channel_id WHERE m.user_id = ? "
            "ORDER BY c.last_activity_ms DESC, c.channel_id",
            (user_id,),
        ).fetchall()
        result = []
        for row in rows:
            members = [r[0] for r in self.conn.execute(
                "SELECT user_id FROM members WHERE channel_id = ? ORDER BY user_id", (row[0],))]  # fmt: skip
            result.append(self._channel_from_row(row, members))
        return result

    async def read_marker(self, user_id: str, channel_id: str) -> int:
        row = self.conn.execute(
            "SELECT seq FROM read_markers WHERE user_id = ? AND channel_id = ?",
            (user_id, channel_id),
        ).fetchone()
        return int(row[0]) if row else 0

    async def read_markers(self, user_id: str) -> dict[str, int]:
        return {
            str(r[0]): int(r[1])
            for r in self.conn.execute(
                "SELECT channel_id, seq FROM read_markers WHERE user_id = ?", (user_id,)
            )
        }

    async def all_memberships(
        self, after_channel_id: str = "", limit: int = 10_000
    ) -> list[tuple[str, int, list[str]]]:
        rows = self.conn.execute(
            "SELECT channel_id, membership_seq FROM channels WHERE channel_id > ? ORDER BY channel_id LIMIT ?",
            (after_channel_id, limit),
        ).fetchall()
        if not rows:
            return []
        members: dict[str, list[str]] = {r[0]: [] for r in rows}
        for channel_id, user_id in self.conn.execute(
            "SELECT channel_id, user_id FROM members WHERE channel_id >= ? AND channel_id <= ? ORDER BY channel_id, user_id",
            (rows[0][0], rows[-1][0]),
        ):
            members[channel_id].append(user_id)
        return [(r[0], int(r[1]), members[r[0]]) for r in rows]

    # -- every-region mode (ADR-026) -------------------------------------------------

    def _apply_origin(self, event: events_pb2.Event) -> None:
        """Applies an origin-stamped event once, by the rules of :mod:`mesh.core.convergence`.

        Whatever order a channel's events arrive in, the channel row, members and known
        messages end the same: the kept creation is the first in order, membership is
        recomputed from every join and leave of the user, a delete is final.
        """
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            fresh = conn.execute(
                "INSERT OR IGNORE INTO origin_applied (channel_id, origin_region, origin_seq) VALUES (?, ?, ?)",
                (event.channel_id, event.origin_region, event.origin_seq),
            ).rowcount
            if fresh:
                _record_position(conn, "origin_applied", event)
                self._decide(event)
                conn.execute(
                    "UPDATE channels SET last_activity_ms = MAX(last_activity_ms, ?) WHERE channel_id = ?",
                    (event.occurred_at.ToMilliseconds(), event.channel_id),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _decide(self, event: events_pb2.Event) -> None:
        # Edits change nothing here: a message's text lives in the history store.
        conn, kind, key = self.conn, event.WhichOneof("payload"), order_key_of(event)
        if kind == "channel_created":
            ch = event.channel_created.channel
            row = conn.execute(
                "SELECT hlc, origin_region, event_id FROM origin_channels WHERE channel_id = ?",
                (event.channel_id,),
            ).fetchone()
            # The same id created twice (a retried CreateChannel through another region):
            # one channel, described by the creation first in order.
            if row is None or key < (int(row[0]), str(row[1]), str(row[2])):
                conn.execute(
                    "INSERT OR REPLACE INTO origin_channels (channel_id, hlc, origin_region, event_id) "
                    "VALUES (?, ?, ?, ?)",
                    (event.channel_id, *key),
                )
                conn.execute(
                    "INSERT INTO channels (channel_id, name, created_by, created_at_ms, visibility, last_seq, "
                    "membership_seq, last_activity_ms) VALUES (?, ?, ?, ?, ?, 0, 0, ?) ON CONFLICT (channel_id) "
                    "DO UPDATE SET name = excluded.name, created_by = excluded.created_by, "
                    "created_at_ms = excluded.created_at_ms, visibility = excluded.visibility",
                    (event.channel_id, ch.name, ch.created_by_user_id, ch.created_at.ToMilliseconds(),
                     int(ch.visibility), event.occurred_at.ToMilliseconds()),
                )  # fmt: skip
            # The initial members join with the creation (having seen nothing: any leave
            # of theirs removes them).
            for user in ch.member_user_ids:
                self._membership(event, "join", user, {})
        elif kind == "member_joined":
            self._membership(
                event, "join", event.member_joined.user_id, dict(event.member_joined.observed)
            )
        elif kind == "member_left":
            self._membership(
                event, "leave", event.member_left.user_id, dict(event.member_left.observed)
            )
        elif kind == "message_created":
            m = event.message_created.message
            row = conn.execute(
                "SELECT hlc, origin_region, event_id, deleted FROM known_messages WHERE message_id = ?",
                (m.message_id,),
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO known_messages (message_id, channel_id, sender_user_id, deleted, body, hlc, "
                    "origin_region, event_id) VALUES (?, ?, ?, 0, ?, ?, ?, ?)",
                    (m.message_id, m.channel_id, m.sender_user_id, m.SerializeToString(), *key),
                )
            elif row[0] is None or key < (int(row[0]), str(row[1]), str(row[2])):
                # First creation here (a delete came first), or an earlier copy of it.
                deleted = bool(row[3])
                conn.execute(
                    "UPDATE known_messages SET channel_id = ?, sender_user_id = ?, body = ?, hlc = ?, "
                    "origin_region = ?, event_id = ? WHERE message_id = ?",
                    (m.channel_id, m.sender_user_id, b"" if deleted else m.SerializeToString(),
                     *key, m.message_id),
                )  # fmt: skip
        elif kind == "message_deleted":
            d = event.message_deleted
            # Final, even before the creation arrives (its text is never kept then).
            conn.execute(
                "INSERT INTO known_messages (message_id, channel_id, sender_user_id, deleted, body, hlc, "
                "origin_region, event_id) VALUES (?, ?, ?, 1, x'', NULL, '', '') "
                "ON CONFLICT (message_id) DO UPDATE SET deleted = 1, body = x''",
                (d.message_id, event.channel_id, event.actor_user_id),
            )

    def _membership(
        self, event: events_pb2.Event, kind: str, user: str, seen: dict[str, int]
    ) -> None:
        conn = self.conn
        conn.execute(
            "INSERT OR IGNORE INTO membership_changes (channel_id, user_id, origin_region, origin_seq, kind, "
            "hlc, event_id, seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (event.channel_id, user, event.origin_region, event.origin_seq, kind, event.hlc,
             event.event_id, json.dumps(seen, sort_keys=True)),
        )  # fmt: skip
        changes = [
            membership_change(r[0], user, Stamp(int(r[1]), str(r[2]), str(r[3]), int(r[4])), r[5])
            for r in conn.execute(
                "SELECT kind, hlc, origin_region, event_id, origin_seq, seen FROM membership_changes "
                "WHERE channel_id = ? AND user_id = ?",
                (event.channel_id, user),
            )
        ]
        if is_member(user, changes):
            conn.execute(
                "INSERT OR IGNORE INTO members (channel_id, user_id) VALUES (?, ?)",
                (event.channel_id, user),
            )
        else:
            conn.execute(
                "DELETE FROM members WHERE channel_id = ? AND user_id = ?", (event.channel_id, user)
            )

    async def channel_clock(self, channel_id: str) -> ChannelClock:
        rows = self.conn.execute(
            "SELECT origin_region, applied_seq, max_hlc FROM origin_positions WHERE channel_id = ?",
            (channel_id,),
        ).fetchall()
        return ChannelClock(
            {str(r[0]): int(r[1]) for r in rows if r[1]}, max((int(r[2]) for r in rows), default=0)
        )

    async def origin_read_marker(self, user_id: str, channel_id: str) -> dict[str, int]:
        return {
            str(r[0]): int(r[1])
            for r in self.conn.execute(
                "SELECT origin_region, origin_seq FROM origin_read_markers "
                "WHERE user_id = ? AND channel_id = ?",
                (user_id, channel_id),
            )
        }

    async def origin_read_markers(self, user_id: str) -> dict[str, dict[str, int]]:
        markers: dict[str, dict[str, int]] = {}
        for channel_id, origin, seq in self.conn.execute(
            "SELECT channel_id, origin_region, origin_seq FROM origin_read_markers WHERE user_id = ?",
            (user_id,),
        ):
            markers.setdefault(str(channel_id), {})[str(origin)] = int(seq)
        return markers

    async def known_message(self, message_id: str) -> MessageRecord | None:
        row = self.conn.execute(
            "SELECT message_id, channel_id, sender_user_id, deleted, body FROM known_messages "
            "WHERE message_id = ? AND hlc IS NOT NULL",
            (message_id,),
        ).fetchone()
        if row is None:
            return None
        return MessageRecord(str(row[0]), str(row[1]), 0, str(row[2]), bool(row[3]), bytes(row[4]))


class SqliteHistoryStore(_Db):
    """Event logs and message state of one region."""

    SCHEMA = (
        """
    CREATE TABLE IF NOT EXISTS events (
        channel_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        event BLOB NOT NULL,
        PRIMARY KEY (channel_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS messages (
        channel_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        message_id TEXT NOT NULL,
        sender_user_id TEXT NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0,
        edit_seq INTEGER NOT NULL DEFAULT 0,
        body BLOB NOT NULL,
        PRIMARY KEY (channel_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS messages_by_id ON messages (message_id);
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    -- Every-region mode (ADR-026): every origin's events, and each message as shown.
    CREATE TABLE IF NOT EXISTS origin_events (
        channel_id TEXT NOT NULL,
        origin_region TEXT NOT NULL,
        origin_seq INTEGER NOT NULL,
        hlc INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        event BLOB NOT NULL,
        PRIMARY KEY (channel_id, origin_region, origin_seq)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS origin_events_by_message ON origin_events (channel_id, message_id)
        WHERE message_id != '';
    CREATE TABLE IF NOT EXISTS origin_messages (
        channel_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        hlc INTEGER NOT NULL,
        origin_region TEXT NOT NULL,
        event_id TEXT NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (channel_id, message_id)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS origin_messages_in_order
        ON origin_messages (channel_id, hlc, origin_region, event_id);
    -- Where each shown message sits among its origin's events, for unread counts.
    CREATE TABLE IF NOT EXISTS origin_unread (
        channel_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        origin_region TEXT NOT NULL,
        origin_seq INTEGER NOT NULL,
        sender_user_id TEXT NOT NULL,
        deleted INTEGER NOT NULL,
        PRIMARY KEY (channel_id, message_id)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS origin_unread_by_position
        ON origin_unread (channel_id, origin_region, origin_seq);
    """
        + _ORIGIN_POSITIONS
    )

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._backfill_unread()

    async def apply(self, events: Sequence[events_pb2.Event], stream_seq: int = 0) -> int:
        conn = self.conn
        applied = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for event in events:
                if is_origin_event(event):
                    applied += self._apply_origin(event)
                    continue
                if event.seq <= 0 or not event.channel_id:
                    continue
                cur = conn.execute(
                    "INSERT OR IGNORE INTO events (channel_id, seq, event) VALUES (?, ?, ?)",
                    (event.channel_id, event.seq, event.SerializeToString()),
                )
                if cur.rowcount == 0:
                    continue  # seen before: applying it again must change nothing
                applied += 1
                self._apply_to_messages(event)
            if stream_seq:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('applied_stream_seq', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
                    (stream_seq,),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return applied

    def _apply_to_messages(self, event: events_pb2.Event) -> None:
        kind = event.WhichOneof("payload")
        if kind == "message_created":
            m = event.message_created.message
            self.conn.execute(
                "INSERT OR IGNORE INTO messages (channel_id, seq, message_id, sender_user_id, deleted, edit_seq, body) "
                "VALUES (?, ?, ?, ?, 0, ?, ?)",
                (
                    m.channel_id,
                    m.seq,
                    m.message_id,
                    m.sender_user_id,
                    event.seq,
                    m.SerializeToString(),
                ),
            )
        elif kind == "message_edited":
            m = event.message_edited.message
            # Only a newer edit wins, so a redelivered old edit cannot undo a later one.
            self.conn.execute(
                "UPDATE messages SET body = ?, edit_seq = ? WHERE channel_id = ? AND seq = ? AND edit_seq < ? AND deleted = 0",
                (m.SerializeToString(), event.seq, m.channel_id, m.seq, event.seq),
            )
        elif kind == "message_deleted":
            d = event.message_deleted
            row = self.conn.execute(
                "SELECT body FROM messages WHERE channel_id = ? AND seq = ?",
                (event.channel_id, d.message_seq),
            ).fetchone()
            if row is None:
                return
            tomb = message_pb2.Message.FromString(row[0])
            tomb.text = ""
            tomb.deleted = True
            self.conn.execute(
                "UPDATE messages SET body = ?, deleted = 1, edit_seq = ? WHERE channel_id = ? AND seq = ?",
                (tomb.SerializeToString(), event.seq, event.channel_id, d.message_seq),
            )

    async def history(
        self,
        channel_id: str,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int = 50,
    ) -> HistoryPage:
        conn = self.conn
        upper = before_seq if before_seq is not None else 2**62
        if after_seq is not None:
            rows = conn.execute(
                "SELECT body FROM messages WHERE channel_id = ? AND seq > ? AND seq < ? ORDER BY seq ASC LIMIT ?",
                (channel_id, after_seq, upper, limit + 1),
            ).fetchall()
            bodies = [r[0] for r in rows[:limit]]
        else:
            rows = conn.execute(
                "SELECT body FROM messages WHERE channel_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                (channel_id, upper, limit + 1),
            ).fetchall()
            bodies = [r[0] for r in reversed(rows[:limit])]
        has_more = len(rows) > limit
        return HistoryPage(
            [message_pb2.Message.FromString(b) for b in bodies],
            has_more,
            await self.last_seq(channel_id),
        )

    async def events_after(
        self, channel_id: str, after_seq: int, limit: int = 500
    ) -> list[events_pb2.Event]:
        rows = self.conn.execute(
            "SELECT event FROM events WHERE channel_id = ? AND seq > ? ORDER BY seq ASC LIMIT ?",
            (channel_id, after_seq, limit),
        ).fetchall()
        return [events_pb2.Event.FromString(r[0]) for r in rows]

    async def last_seq(self, channel_id: str) -> int:
        row = self.conn.execute(
            "SELECT MAX(seq) FROM events WHERE channel_id = ?", (channel_id,)
        ).fetchone()
        return int(row[0] or 0)

    async def unread_count(
        self, channel_id: str, after_seq: int, user_id: str, cap: int = UNREAD_CAP
    ) -> int:
        row = self.conn.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM messages WHERE channel_id = ? AND seq > ? AND deleted = 0 "
            "AND sender_user_id != ? LIMIT ?)",
            (channel_id, after_seq, user_id, cap),
        ).fetchone()
        return int(row[0])

    async def applied_stream_seq(self) -> int:
        row = self.conn.execute(
            "SELECT value FROM meta WHERE key = 'applied_stream_seq'"
        ).fetchone()
        return int(row[0]) if row else 0

    # -- every-region mode (ADR-026) -------------------------------------------------

    def _apply_origin(self, event: events_pb2.Event) -> bool:
        """Stores an origin-stamped event once and recomputes the message it is about."""
        if not _fits(event):
            return False
        message_id = message_id_of(event)
        fresh = self.conn.execute(
            "INSERT OR IGNORE INTO origin_events (channel_id, origin_region, origin_seq, hlc, event_id, "
            "message_id, event) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (event.channel_id, event.origin_region, event.origin_seq, event.hlc, event.event_id,
             message_id, event.SerializeToString()),
        ).rowcount  # fmt: skip
        if not fresh:
            return False  # seen before: applying it again must change nothing
        _record_position(self.conn, "origin_events", event)
        if message_id:
            self._resolve(event.channel_id, message_id)
        return True

    def _resolve(self, channel_id: str, message_id: str) -> None:
        """Recomputes a message from every event about it (so arrival order cannot matter)."""
        rows = self.conn.execute(
            # Without statistics the planner prefers the primary key, and would scan every
            # event the channel ever had for each message event.
            "SELECT event FROM origin_events INDEXED BY origin_events_by_message "
            "WHERE channel_id = ? AND message_id = ? AND message_id != ''",
            (channel_id, message_id),
        ).fetchall()
        current = current_message(events_pb2.Event.FromString(r[0]) for r in rows)
        if current is None:
            return  # edits and deletes wait for the creation
        (hlc, origin, event_id), message = current
        self.conn.execute(
            "INSERT OR REPLACE INTO origin_messages (channel_id, message_id, hlc, origin_region, event_id, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (channel_id, message_id, hlc, origin, event_id, message.SerializeToString()),
        )
        self._index_unread(message)

    def _index_unread(self, message: message_pb2.Message) -> None:
        # The kept creation's position (an earlier copy arriving later moves it).
        self.conn.execute(
            "INSERT OR REPLACE INTO origin_unread (channel_id, message_id, origin_region, origin_seq, "
            "sender_user_id, deleted) VALUES (?, ?, ?, ?, ?, ?)",
            (message.channel_id, message.message_id, message.origin_region, message.origin_seq,
             message.sender_user_id, int(message.deleted)),
        )  # fmt: skip

    def _backfill_unread(self) -> None:
        """Indexes messages stored before ``origin_unread`` existed (once, at open)."""
        if self.conn.execute("SELECT 1 FROM origin_unread LIMIT 1").fetchone() is not None:
            return
        rows = self.conn.execute("SELECT body FROM origin_messages").fetchall()
        if not rows:
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for (body,) in rows:
                self._index_unread(message_pb2.Message.FromString(body))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    async def origin_unread_count(
        self,
        channel_id: str,
        read_through: Mapping[str, int],
        user_id: str,
        cap: int = UNREAD_CAP,
    ) -> int:
        row = self.conn.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM origin_unread u LEFT JOIN json_each(?) r "
            "ON r.key = u.origin_region WHERE u.channel_id = ? AND u.deleted = 0 "
            "AND u.sender_user_id != ? AND u.origin_seq > COALESCE(r.value, 0) LIMIT ?)",
            (json.dumps(dict(read_through)), channel_id, user_id, cap),
        ).fetchone()
        return int(row[0])

    async def last_origin_seqs(self, channel_id: str) -> dict[str, int]:
        return {
            str(r[0]): int(r[1])
            for r in self.conn.execute(
                "SELECT origin_region, applied_seq FROM origin_positions "
                "WHERE channel_id = ? AND applied_seq > 0",
                (channel_id,),
            )
        }

    async def origin_events_after(
        self, channel_id: str, origin_region: str, after_origin_seq: int, limit: int = 500
    ) -> list[events_pb2.Event]:
        rows = self.conn.execute(
            "SELECT event FROM origin_events WHERE channel_id = ? AND origin_region = ? AND origin_seq > ? "
            "ORDER BY origin_seq ASC LIMIT ?",
            (channel_id, origin_region, after_origin_seq, limit),
        ).fetchall()
        return [events_pb2.Event.FromString(r[0]) for r in rows]

    async def ordered_history(
        self, channel_id: str, *, before: OrderKey | None = None, limit: int = 50
    ) -> OrderedPage:
        newest_first = "ORDER BY hlc DESC, origin_region DESC, event_id DESC LIMIT ?"
        if before is None or before[0] >= HLC_LIMIT:  # no stored key reaches that far
            rows = self.conn.execute(
                "SELECT hlc, origin_region, event_id, body FROM origin_messages WHERE channel_id = ? "
                + newest_first,
                (channel_id, limit + 1),
            ).fetchall()
        else:
            # A row-value comparison: the whole key, so ties at one hlc are kept apart.
            rows = self.conn.execute(
                "SELECT hlc, origin_region, event_id, body FROM origin_messages WHERE channel_id = ? "
                "AND (hlc, origin_region, event_id) < (?, ?, ?) " + newest_first,
                (channel_id, *before, limit + 1),
            ).fetchall()
        page = list(reversed(rows[:limit]))
        return OrderedPage(
            [message_pb2.Message.FromString(r[3]) for r in page],
            len(rows) > limit,
            (int(page[0][0]), str(page[0][1]), str(page[0][2])) if page else None,
        )

    async def messages_by_id(
        self, channel_id: str, message_ids: Sequence[str]
    ) -> dict[str, message_pb2.Message]:
        found: dict[str, message_pb2.Message] = {}
        ids = list(dict.fromkeys(message_ids))
        for start in range(0, len(ids), 500):  # below SQLite's bound-parameter limit
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            for message_id, body in self.conn.execute(
                f"SELECT message_id, body FROM origin_messages WHERE channel_id = ? AND message_id IN ({marks})",
                (channel_id, *chunk),
            ):
                found[str(message_id)] = message_pb2.Message.FromString(body)
        return found
