"""The SQLite command log's group commit: many concurrent appends, one transaction.

A second connection holding the write lock keeps the store's writer thread from
committing, so every append made meanwhile queues up: the tests can then say
exactly which appends share a commit, without timing anything.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mesh.stores import LogConflict, LogEntry, MessageRecord
from mesh.stores.sqlite import SqliteCommandStore
from tests.helpers import eventually


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteCommandStore]:
    db = SqliteCommandStore(tmp_path / "command.db")
    try:
        yield db
    finally:
        await db.close()


@contextmanager
def write_lock_held(path: Path) -> Iterator[None]:
    """Another connection holds the database's write lock until the block ends."""
    other = sqlite3.connect(str(path), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def committed_rows(path: Path) -> list[tuple[str, int, str | None, int]]:
    """What a fresh connection sees: only committed data."""
    other = sqlite3.connect(str(path))
    try:
        return other.execute(
            "SELECT channel_id, seq, idempotency_key, published FROM command_log ORDER BY channel_id, seq"
        ).fetchall()
    finally:
        other.close()


def log_entry(channel_id: str, seq: int, key: str | None = None) -> LogEntry:
    return LogEntry(channel_id, seq, f"{channel_id}/{seq}".encode(), key)


async def test_concurrent_appends_share_a_commit_and_each_returns_only_once_committed(
    store: SqliteCommandStore,
) -> None:
    visible_on_return: list[bool] = []

    async def append(entry: LogEntry) -> None:
        await store.append(entry)
        position = (entry.channel_id, entry.seq)
        visible_on_return.append(position in {(r[0], r[1]) for r in committed_rows(store.path)})

    with write_lock_held(store.path):
        tasks = [
            asyncio.create_task(append(log_entry(f"ch_{i % 4}", i // 4 + 1, f"k{i}")))
            for i in range(20)
        ]
        await asyncio.sleep(0)  # every task runs up to its wait for the writer
        assert not any(t.done() for t in tasks)  # nothing acknowledged while nothing can commit
        assert committed_rows(store.path) == []
    await asyncio.gather(*tasks)

    assert visible_on_return == [True] * 20
    # The writer may have taken the first append alone before it blocked; the other
    # 19 queued behind it and went together.
    assert store.commits <= 2
    rows = committed_rows(store.path)
    assert sorted((r[0], r[1]) for r in rows) == sorted(
        (f"ch_{i % 4}", i // 4 + 1) for i in range(20)
    )


async def test_a_conflicting_entry_fails_alone_and_the_rest_of_its_batch_commits(
    store: SqliteCommandStore,
) -> None:
    await store.append(log_entry("ch_a", 1, "k0"))
    with write_lock_held(store.path):
        results = asyncio.gather(
            store.append(log_entry("ch_a", 2, "k1")),
            store.append(log_entry("ch_a", 2, "k2")),  # the seq k1 just took
            store.append(log_entry("ch_b", 1, "k1")),  # the key k1 just took
            store.append(log_entry("ch_a", 3, "k3")),
            store.append(log_entry("ch_a", 1, "k4")),  # a seq taken by an earlier commit
            return_exceptions=True,
        )
        await asyncio.sleep(0)
    outcome = await results

    assert [type(r).__name__ if r else None for r in outcome] == [
        None,
        "LogConflict",
        "LogConflict",
        None,
        "LogConflict",
    ]
    assert committed_rows(store.path) == [
        ("ch_a", 1, "k0", 0),
        ("ch_a", 2, "k1", 0),
        ("ch_a", 3, "k3", 0),
    ]


async def test_a_failed_commit_fails_every_append_of_its_batch_and_writes_none(
    store: SqliteCommandStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = store._writer
    real_commit = writer._commit_transaction
    failures = [sqlite3.OperationalError("disk I/O error")]

    def failing_commit() -> None:
        if failures:
            raise failures.pop()
        real_commit()

    monkeypatch.setattr(writer, "_commit_transaction", failing_commit)
    record = MessageRecord("msg_1", "ch_a", 1, "alice", False, b"body")
    with write_lock_held(store.path):
        results = asyncio.gather(
            store.append(log_entry("ch_a", 1, "k1"), record),
            store.append(log_entry("ch_b", 1, "k2")),
            store.append(log_entry("ch_c", 1, "k3")),
            return_exceptions=True,
        )
        await asyncio.sleep(0)
    outcome = await results

    # Two batches at most (see the first test): the one that failed failed as a whole,
    # and an append that committed is one the store did write.
    failed = [i for i, r in enumerate(outcome) if isinstance(r, sqlite3.OperationalError)]
    assert failed and failed == list(range(len(failed)))
    assert not any(isinstance(r, LogConflict) for r in outcome)
    written = [(r[0], r[1]) for r in committed_rows(store.path)]
    assert written == [(f"ch_{c}", 1) for c in "abc"[len(failed) :]]
    assert (await store.message("msg_1") is None) == (0 in failed)
    assert await store.by_idempotency_key("k1") is None

    # The store goes on: the client's retry of a failed append succeeds.
    await store.append(log_entry("ch_a", 1, "k1"), record)
    assert await store.message("msg_1") == record


async def test_publish_marks_count_at_once_and_reach_the_file_without_another_append(
    tmp_path: Path,
) -> None:
    path = tmp_path / "command.db"
    store = SqliteCommandStore(path)
    try:
        for seq in (1, 2, 3):
            await store.append(log_entry("ch_a", seq, f"k{seq}"))
        with write_lock_held(path):
            await store.mark_published("ch_a", 2)  # returns without waiting for the writer
            # This store's reads already treat it as published ...
            assert [e.seq for e in await store.unpublished()] == [1, 3]
            assert [e.seq for e in await store.unpublished(limit=1, channel_id="ch_a")] == [1]
            got = await store.by_idempotency_key("k2")
            assert got is not None and got.published
            # ... while the file does not have it yet.
            assert [r[3] for r in committed_rows(path)] == [0, 0, 0]
    finally:
        await store.close()  # waits for queued writes
    assert [r[3] for r in committed_rows(path)] == [0, 1, 0]
    again = SqliteCommandStore(path)
    try:
        assert [e.seq for e in await again.unpublished()] == [1, 3]
    finally:
        await again.close()


async def test_a_cancelled_append_returns_only_once_its_write_settled(
    store: SqliteCommandStore,
) -> None:
    with write_lock_held(store.path):
        task = asyncio.create_task(store.append(log_entry("ch_a", 1, "k1")))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0)
        # The caller (who holds the channel's lock) is still waiting for the write.
        assert not task.done()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The write went through: the next command on the channel finds it in the log.
    assert committed_rows(store.path) == [("ch_a", 1, "k1", 0)]
    assert [e.seq for e in await store.unpublished(channel_id="ch_a")] == [1]


async def test_a_publish_mark_shares_the_next_appends_commit(store: SqliteCommandStore) -> None:
    store._writer._lazy_delay = 3600.0  # only the next append may carry the mark
    await store.append(log_entry("ch_a", 1, "k1"))
    before = store.commits
    await store.mark_published("ch_a", 1)
    await store.append(log_entry("ch_a", 2, "k2"))

    # One transaction (one fsync) held the second entry and the first one's mark.
    assert store.commits == before + 1
    assert committed_rows(store.path) == [("ch_a", 1, "k1", 1), ("ch_a", 2, "k2", 0)]


async def test_a_publish_mark_reaches_the_file_when_no_append_follows(
    store: SqliteCommandStore,
) -> None:
    await store.append(log_entry("ch_a", 1, "k1"))
    await store.mark_published("ch_a", 1)

    # Committed on its own, without another write or a close to carry it.
    await eventually(
        lambda: committed_rows(store.path) == [("ch_a", 1, "k1", 1)], what="the mark committed"
    )
    assert [e.seq for e in await store.unpublished()] == []
