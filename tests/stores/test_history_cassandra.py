"""What only the Cassandra history backend has (the shared contract runs in test_contract.py).

Partitions by seq range (paging across bucket boundaries, over buckets without
messages and over gaps in the log), migrations (a reader waits for the migrator;
a newer schema is refused), DSN parsing, the event loop staying responsive during
a large apply, and the backend's errors mapped to ``Unavailable``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mesh.core.errors import Unavailable
from mesh.stores import HistoryPage, HistoryStore, open_history
from mesh.stores.cassandra import (
    BUCKET_SIZE,
    SCHEMA_VERSION,
    CassandraHistoryStore,
    open_cassandra_history,
    parse_dsn,
)
from tests.stores.cassandra_backend import CassandraTestCluster, cassandra_dsn
from tests.stores.test_contract import created, deleted, edited, joined, sent, seqs

pytestmark = pytest.mark.cassandra


_keyspaces = iter(range(1, 1_000_000))


@pytest.fixture
async def history_dsn(
    cassandra_cluster: CassandraTestCluster,
) -> AsyncIterator[str]:
    """The contract keyspace, emptied (overrides the conftest's per-backend fixture, so the
    conftest's ``history_store`` opens Cassandra here)."""
    async with cassandra_dsn({"cassandra_cluster": cassandra_cluster}) as dsn:
        yield dsn


# ---------------------------------------------------------------- seq-range partitions


async def test_pages_cross_bucket_boundaries_and_skip_buckets_without_messages(
    history_store: HistoryStore,
) -> None:
    b = BUCKET_SIZE
    # Messages up to 1005, then a whole bucket of membership changes (1006..2199),
    # then messages again: one bucket (1) has a few messages, bucket 2 has none at
    # its start.
    messages = list(range(2, 1006)) + list(range(2200, 2300))
    events = [created("ch_a")] + [
        sent("ch_a", s, "bob" if s % 2 else "alice") for s in range(2, 1006)
    ]
    events += [joined("ch_a", s, f"u{s}") for s in range(1006, 2200)]
    events += [sent("ch_a", s, "bob") for s in range(2200, 2300)]
    for i in range(0, len(events), 500):
        await history_store.apply(events[i : i + 500])

    page = await history_store.history("ch_a", before_seq=2210, limit=20)
    assert seqs(page.messages) == [*range(996, 1006), *range(2200, 2210)]
    assert page.has_more and page.last_seq == 2299
    forward = await history_store.history("ch_a", after_seq=b - 3, limit=10)
    assert seqs(forward.messages) == [998, 999, 1000, 1001, 1002, 1003, 1004, 1005, 2200, 2201]
    assert forward.has_more
    everything: list[int] = []
    before: int | None = None
    while True:
        p = await history_store.history("ch_a", before_seq=before, limit=333)
        everything = seqs(p.messages) + everything
        if not p.has_more:
            break
        before = p.messages[0].seq
    assert everything == messages
    assert (
        await history_store.unread_count("ch_a", 1000, "alice", cap=5000) == 3 + 100
    )  # 1001, 1003, 1005
    replay = await history_store.events_after("ch_a", b - 2, limit=5)
    assert [e.seq for e in replay] == [999, 1000, 1001, 1002, 1003]


async def test_events_after_jumps_gaps_longer_than_a_bucket(history_store: HistoryStore) -> None:
    far = 7 * BUCKET_SIZE + 17
    await history_store.apply(
        [created("ch_a"), sent("ch_a", 2), joined("ch_a", far, "carol"), sent("ch_a", far + 1)]
    )
    assert [e.seq for e in await history_store.events_after("ch_a", 2)] == [far, far + 1]
    assert [e.seq for e in await history_store.events_after("ch_a", 0, limit=3)] == [1, 2, far]
    page = await history_store.history("ch_a", limit=1)
    assert seqs(page.messages) == [far + 1] and page.has_more and page.last_seq == far + 1
    assert seqs((await history_store.history("ch_a", before_seq=far + 1)).messages) == [2]


async def test_pages_stay_exact_when_the_guessed_first_bucket_is_wrong(
    history_store: HistoryStore,
) -> None:
    # The store reads its guess of a page's first bucket alongside the bucket index
    # (one round trip); these reads start from buckets the guess gets wrong.
    b = BUCKET_SIZE
    await history_store.apply([created("ch_a"), sent("ch_a", 2), sent("ch_a", 3)])
    assert seqs((await history_store.history("ch_a")).messages) == [2, 3]  # remembers bucket 0
    await history_store.apply(
        [joined("ch_a", 2 * b + 5, "carol"), sent("ch_a", 2 * b + 6, "carol")]
    )
    page = await history_store.history("ch_a", limit=2)  # the remembered bucket is stale now
    assert seqs(page.messages) == [3, 2 * b + 6] and page.has_more
    after = await history_store.history("ch_a", after_seq=b + 10, limit=5)  # bucket 1 has nothing
    assert seqs(after.messages) == [2 * b + 6] and not after.has_more
    before = await history_store.history("ch_a", before_seq=2 * b, limit=5)  # bucket 1 again
    assert seqs(before.messages) == [2, 3] and not before.has_more
    assert [e.seq for e in await history_store.events_after("ch_a", b + 10)] == [
        2 * b + 5,
        2 * b + 6,
    ]
    assert await history_store.unread_count("ch_a", b + 10, "alice") == 1


async def test_an_edit_of_a_message_never_seen_lists_nothing(history_store: HistoryStore) -> None:
    ghost = sent("ch_a", 5, "alice", "never delivered")
    await history_store.apply([created("ch_a"), sent("ch_a", 2), edited(ghost, 6, "edited ghost")])
    page = await history_store.history("ch_a")
    assert seqs(page.messages) == [2] and page.last_seq == 6
    assert await history_store.unread_count("ch_a", 0, "bob") == 1
    assert (
        await history_store.apply([deleted("ch_a", 7, 5)]) == 1
    )  # delete of it: no tombstone either
    assert seqs((await history_store.history("ch_a")).messages) == [2]


async def test_a_batch_that_creates_edits_and_deletes_one_message(
    history_store: HistoryStore,
) -> None:
    original = sent("ch_a", 2, "alice", "draft")
    fixed = edited(original, 3, "final")
    assert await history_store.apply([created("ch_a"), original, fixed, deleted("ch_a", 4, 2)]) == 4
    (tomb,) = (await history_store.history("ch_a")).messages
    expected = fixed.message_edited.message
    expected.text = ""
    expected.deleted = True
    assert tomb == expected  # built from the edit of the same batch


async def test_event_loop_stays_responsive_during_a_large_apply(
    history_store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other tasks run all through a large apply, counted in loop iterations, not seconds.

    A ticker task advances once per loop iteration; every driver request records the
    ticker's count when it goes out. While requests are in flight nothing else holds a
    slot, so a non-blocking store sends at most ``concurrency`` requests per iteration
    (a worker's next request needs its answer, which arrives iterations later). A
    blocking driver call, or a batch bound and sent in one go, puts them all in one.
    """
    events = [created("ch_a")] + [sent("ch_a", s) for s in range(2, 2002)]
    assert isinstance(history_store, CassandraHistoryStore)
    cql = history_store._cql  # the store's statement runner: watch each request it sends
    session = cql.session
    ticks = 0
    sent_at_tick: list[int] = []

    class Watched:
        def __getattr__(self, name: str) -> Any:
            return getattr(session, name)

        def execute_async(self, *args: Any, **kwargs: Any) -> Any:
            sent_at_tick.append(ticks)
            return session.execute_async(*args, **kwargs)

    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            await asyncio.sleep(0)
            ticks += 1

    monkeypatch.setattr(cql, "session", Watched())
    task = asyncio.create_task(ticker())
    try:
        started = time.perf_counter()
        assert await history_store.apply(events, stream_seq=2001) == 2001
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        await task
    per_iteration = Counter(sent_at_tick)
    concurrency = history_store.settings.concurrency
    print(
        f"\napplied 2001 events in {elapsed:.2f}s: {len(sent_at_tick)} requests over "
        f"{len(per_iteration)} loop iterations, at most {max(per_iteration.values())} in one"
    )
    assert len(sent_at_tick) >= 2 * 2001  # a message row and a log row per event
    assert max(per_iteration.values()) <= concurrency, per_iteration.most_common(3)


# ---------------------------------------------------------------------- migrations


async def test_a_reader_waits_for_the_migrator(
    cassandra_cluster: CassandraTestCluster,
) -> None:
    keyspace = f"fresh_{next(_keyspaces)}_{int(time.time())}"
    reader = asyncio.create_task(open_history(cassandra_cluster.dsn(keyspace, schema_timeout="60")))
    await asyncio.sleep(0)  # let the reader start polling before the keyspace exists
    migrator = await open_history(
        cassandra_cluster.dsn(keyspace, migrate="true", replication="dc1:1")
    )
    store = await asyncio.wait_for(reader, 60)
    try:
        await migrator.apply([created("ch_a"), sent("ch_a", 2)], stream_seq=3)
        assert seqs((await store.history("ch_a")).messages) == [2]
        again = await open_history(cassandra_cluster.dsn(keyspace, migrate="true"))  # idempotent
        await again.close()
    finally:
        await store.close()
        await migrator.close()


async def test_a_reader_without_migrator_gives_up_at_its_deadline(
    cassandra_cluster: CassandraTestCluster,
) -> None:
    # The error names the DSN's deadline: the reader gave up when that ran out.
    with pytest.raises(RuntimeError, match=r"not at version \d+ within 1(\.0)?s"):
        await open_history(cassandra_cluster.dsn("never_migrated", schema_timeout="1"))


async def test_a_newer_schema_is_refused(
    cassandra_cluster: CassandraTestCluster,
) -> None:
    keyspace = f"newer_{next(_keyspaces)}_{int(time.time())}"
    store = await open_history(cassandra_cluster.dsn(keyspace, migrate="true"))
    await store.close()
    await asyncio.to_thread(
        cassandra_cluster.session.execute,
        f"INSERT INTO {keyspace}.schema_migrations (version, description) VALUES ({SCHEMA_VERSION + 1}, 'future')",
    )
    for params in ({}, {"migrate": "true"}):
        with pytest.raises(RuntimeError, match=f"version {SCHEMA_VERSION + 1}"):
            await open_history(cassandra_cluster.dsn(keyspace, schema_timeout="5", **params))


# --------------------------------------------------------------------- errors, DSN


async def test_unreachable_replicas_raise_unavailable(
    cassandra_cluster: CassandraTestCluster,
) -> None:
    # Two replicas wanted in a one-node DC: LOCAL_QUORUM (2) cannot be met, and the
    # coordinator refuses with Unavailable, which must surface as the domain error.
    keyspace = f"rf2_{next(_keyspaces)}_{int(time.time())}"
    migrator = await open_cassandra_history(
        cassandra_cluster.dsn(keyspace, migrate="true", replication="dc1:2", write="ONE")
    )
    await migrator.close()
    store = await open_cassandra_history(cassandra_cluster.dsn(keyspace))
    try:
        with pytest.raises(Unavailable) as info:
            await store.apply([created("ch_a")])
        assert info.value.reason == "BACKEND_UNAVAILABLE"
        assert await store.history("ch_a") == HistoryPage(
            [], False, 0
        )  # LOCAL_ONE reads still work
    finally:
        await store.close()


def test_dsn_parameters() -> None:
    s = parse_dsn(
        "cassandra://10.0.0.1:9042,10.0.0.2/chat?dc=eu&read=local_quorum&write=EACH_QUORUM"
        "&replication=us-east:3,eu:2&migrate=yes&schema_timeout=5&timeout=2.5&connect_timeout=3&concurrency=16"
    )
    assert s.hosts == (("10.0.0.1", 9042), ("10.0.0.2", 9042))
    assert (s.keyspace, s.local_dc, s.migrate, s.concurrency) == ("chat", "eu", True, 16)
    assert (s.read_consistency, s.write_consistency) == (6, 7)  # LOCAL_QUORUM, EACH_QUORUM
    assert s.replication == {"us-east": 3, "eu": 2}
    assert (s.schema_timeout, s.request_timeout, s.connect_timeout) == (5.0, 2.5, 3.0)
    defaults = parse_dsn("cassandra://h:1/k")
    assert (defaults.read_consistency, defaults.write_consistency, defaults.migrate) == (
        10,
        6,
        False,
    )
    for bad in (
        "mongodb://h/k",
        "cassandra:///k",
        "cassandra://h:1/",
        "cassandra://h:1/bad-name",
        "cassandra://h:1/k?read=SOMETIMES",
        "cassandra://h:1/k?replication=eu",
        "cassandra://h:1/k?migrate=maybe",
        "cassandra://h:1/k?timeout=0",
        "cassandra://h:1/k?allow_filtering=true",
    ):
        with pytest.raises(ValueError):
            parse_dsn(bad)
