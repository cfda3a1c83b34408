"""The contract every store backend honours (SQLite, MongoDB wire, later Cassandra).

One suite per interface of :mod:`mesh.stores.base`; the fixtures in ``conftest.py``
run each test against every registered backend, each time on a fresh, empty store.
Events are real ``chatmesh.v1`` protobuf messages, built the way the Command Service
builds them, and every assertion compares exact values.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Sequence
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import ServerSelectionTimeoutError

from chatmesh.v1 import channel_pb2, events_pb2, message_pb2, presence_pb2
from mesh.core.errors import Unavailable
from mesh.core.events import new_event
from mesh.harness.ports import allocate
from mesh.harness.servers.ferretdb import FerretDB
from mesh.stores import (
    UNREAD_CAP,
    CommandStore,
    HistoryPage,
    HistoryStore,
    LogConflict,
    LogEntry,
    MessageRecord,
    MetadataStore,
    open_command,
    open_history,
    open_metadata,
)
from mesh.stores.mongo import open_mongo_command, open_mongo_metadata

T0 = 1_767_000_000_000
"""A fixed wall-clock origin (ms) so timestamps in assertions are exact."""

PUBLIC = channel_pb2.CHANNEL_VISIBILITY_PUBLIC
PRIVATE = channel_pb2.CHANNEL_VISIBILITY_PRIVATE


# ----------------------------------------------------------------- event builders


def _event(channel_id: str, seq: int, at_ms: int | None, actor: str = "alice") -> events_pb2.Event:
    return new_event(
        channel_id,
        seq=seq,
        origin_region="us-east",
        actor=actor,
        at_ms=T0 + seq * 1000 if at_ms is None else at_ms,
    )


def created(
    channel_id: str,
    members: Sequence[str] = ("alice", "bob"),
    *,
    seq: int = 1,
    name: str = "general",
    by: str = "alice",
    visibility: channel_pb2.ChannelVisibility = PUBLIC,
    at_ms: int | None = None,
) -> events_pb2.Event:
    event = _event(channel_id, seq, at_ms, by)
    ch = event.channel_created.channel
    ch.channel_id = channel_id
    ch.name = name
    ch.member_user_ids.extend(members)
    ch.created_by_user_id = by
    ch.created_at.CopyFrom(event.occurred_at)
    ch.visibility = visibility
    ch.last_seq = seq
    return event


def joined(channel_id: str, seq: int, user: str, *, at_ms: int | None = None) -> events_pb2.Event:
    event = _event(channel_id, seq, at_ms, user)
    event.member_joined.user_id = user
    return event


def left(channel_id: str, seq: int, user: str, *, at_ms: int | None = None) -> events_pb2.Event:
    event = _event(channel_id, seq, at_ms, user)
    event.member_left.user_id = user
    return event


def message_id(channel_id: str, seq: int) -> str:
    return f"msg_{channel_id}_{seq}"


def sent(
    channel_id: str,
    seq: int,
    sender: str = "alice",
    text: str | None = None,
    *,
    at_ms: int | None = None,
) -> events_pb2.Event:
    event = _event(channel_id, seq, at_ms, sender)
    m = event.message_created.message
    m.message_id = message_id(channel_id, seq)
    m.channel_id = channel_id
    m.seq = seq
    m.sender_user_id = sender
    m.text = f"message {seq} from {sender}" if text is None else text
    m.created_at.CopyFrom(event.occurred_at)
    m.origin_region = "us-east"
    m.client_msg_id = f"c{seq}"
    return event


def edited(original: events_pb2.Event, seq: int, text: str) -> events_pb2.Event:
    """An edit of ``original`` (a message_created event) as event ``seq``."""
    before = original.message_created.message
    event = _event(before.channel_id, seq, None, before.sender_user_id)
    m = event.message_edited.message
    m.CopyFrom(before)
    m.text = text
    m.edited_at.CopyFrom(event.occurred_at)
    m.client_msg_id = ""
    return event


def deleted(channel_id: str, seq: int, message_seq: int) -> events_pb2.Event:
    event = _event(channel_id, seq, None)
    event.message_deleted.message_id = message_id(channel_id, message_seq)
    event.message_deleted.message_seq = message_seq
    return event


def read_up_to(channel_id: str, user: str, last_read_seq: int) -> events_pb2.Event:
    event = new_event(channel_id, seq=0, origin_region="us-east", actor=user)
    event.read_marker_updated.user_id = user
    event.read_marker_updated.last_read_seq = last_read_seq
    return event


def typing(channel_id: str, user: str) -> events_pb2.Event:
    event = new_event(channel_id, seq=0, origin_region="us-east", actor=user)
    event.typing_changed.user_id = user
    event.typing_changed.typing = True
    return event


def presence(user: str) -> events_pb2.Event:
    event = new_event("", seq=0, origin_region="us-east", actor=user)
    event.presence_changed.presence.user_id = user
    event.presence_changed.presence.status = presence_pb2.PRESENCE_STATUS_ONLINE
    return event


def seqs(messages: Sequence[message_pb2.Message]) -> list[int]:
    return [m.seq for m in messages]


# ===================================================================== CommandStore


def entry(
    channel_id: str,
    seq: int,
    key: str | None = None,
    *,
    published: bool = False,
    text: str | None = None,
) -> LogEntry:
    payload = sent(channel_id, seq, text=text).SerializeToString()
    return LogEntry(channel_id, seq, payload, key, published)


def positions(entries: Sequence[LogEntry]) -> list[tuple[str, int]]:
    return [(e.channel_id, e.seq) for e in entries]


async def test_command_store_starts_empty(command_store: CommandStore) -> None:
    assert await command_store.last_seq("ch_a") == 0
    assert await command_store.by_idempotency_key("send:alice:1") is None
    assert await command_store.unpublished() == []
    assert await command_store.message("msg_x") is None


async def test_append_sets_last_seq_per_channel(command_store: CommandStore) -> None:
    for seq in (1, 2, 3):
        await command_store.append(entry("ch_a", seq))
    await command_store.append(entry("ch_b", 1))
    await command_store.append(entry("ch_a0", 7))
    assert await command_store.last_seq("ch_a") == 3
    assert await command_store.last_seq("ch_b") == 1
    assert await command_store.last_seq("ch_a0") == 7
    assert await command_store.last_seq("ch_c") == 0
    await command_store.append(
        entry("ch_a", 10)
    )  # a gap (a writer died after taking 4..9) is allowed
    assert await command_store.last_seq("ch_a") == 10


async def test_append_of_a_taken_seq_raises_and_keeps_the_first(
    command_store: CommandStore,
) -> None:
    first = entry("ch_a", 1, text="first")
    await command_store.append(first)
    with pytest.raises(LogConflict):
        await command_store.append(entry("ch_a", 1, "send:bob:k1", text="second"))
    # The failed append left nothing behind: not its event, not its idempotency key.
    assert await command_store.unpublished() == [first]
    assert await command_store.by_idempotency_key("send:bob:k1") is None
    assert await command_store.last_seq("ch_a") == 1


async def test_append_of_an_identical_entry_twice_raises(command_store: CommandStore) -> None:
    e = entry("ch_a", 1, "send:alice:k1")
    await command_store.append(e)
    with pytest.raises(LogConflict):
        await command_store.append(e)
    assert await command_store.unpublished() == [e]


async def test_duplicate_idempotency_key_raises_in_any_channel(command_store: CommandStore) -> None:
    first = entry("ch_a", 1, "send:alice:k1")
    await command_store.append(first)
    with pytest.raises(LogConflict):
        await command_store.append(entry("ch_a", 2, "send:alice:k1"))
    with pytest.raises(LogConflict):
        await command_store.append(entry("ch_b", 1, "send:alice:k1"))
    assert await command_store.last_seq("ch_a") == 1
    assert await command_store.last_seq("ch_b") == 0
    assert await command_store.unpublished() == [first]
    assert await command_store.by_idempotency_key("send:alice:k1") == first


async def test_entries_without_idempotency_key_never_conflict(command_store: CommandStore) -> None:
    # On MongoDB a plain unique index would treat every missing key as the same null.
    for seq in range(1, 6):
        await command_store.append(entry("ch_a", seq))
    await command_store.append(entry("ch_b", 1))
    assert positions(await command_store.unpublished()) == [("ch_a", s) for s in range(1, 6)] + [
        ("ch_b", 1)
    ]
    assert all(e.idempotency_key is None for e in await command_store.unpublished())


async def test_by_idempotency_key_returns_the_whole_entry(command_store: CommandStore) -> None:
    e = entry("ch_a", 7, "create:alice:r1")
    await command_store.append(entry("ch_a", 6, "create:alice:r0"))
    await command_store.append(e)
    assert await command_store.by_idempotency_key("create:alice:r1") == e
    await command_store.mark_published("ch_a", 7)
    assert await command_store.by_idempotency_key("create:alice:r1") == dataclasses.replace(
        e, published=True
    )
    assert await command_store.by_idempotency_key("create:alice:r2") is None


async def test_unpublished_order_limit_filter_and_mark_published(
    command_store: CommandStore,
) -> None:
    appended = {}
    for channel_id, seq in [
        ("ch_b", 1),
        ("ch_a", 2),
        ("ch_a0", 1),
        ("ch_a", 1),
        ("ch_c", 1),
        ("ch_a", 3),
        ("ch_b", 2),
    ]:
        appended[channel_id, seq] = e = entry(channel_id, seq, f"send:u:{channel_id}:{seq}")
        await command_store.append(e)
    order = [
        ("ch_a", 1),
        ("ch_a", 2),
        ("ch_a", 3),
        ("ch_a0", 1),
        ("ch_b", 1),
        ("ch_b", 2),
        ("ch_c", 1),
    ]
    assert await command_store.unpublished() == [appended[p] for p in order]
    assert positions(await command_store.unpublished(limit=2)) == order[:2]
    assert positions(await command_store.unpublished(channel_id="ch_b")) == [
        ("ch_b", 1),
        ("ch_b", 2),
    ]
    assert positions(await command_store.unpublished(limit=1, channel_id="ch_a")) == [("ch_a", 1)]
    assert await command_store.unpublished(channel_id="ch_zz") == []

    await command_store.mark_published("ch_a", 1)
    await command_store.mark_published("ch_b", 2)
    await command_store.mark_published("ch_a", 1)  # again: a no-op
    await command_store.mark_published("ch_zz", 9)  # unknown entry: a no-op, creates nothing
    remaining = [p for p in order if p not in {("ch_a", 1), ("ch_b", 2)}]
    assert positions(await command_store.unpublished()) == remaining
    assert positions(await command_store.unpublished(channel_id="ch_a")) == [
        ("ch_a", 2),
        ("ch_a", 3),
    ]
    assert await command_store.last_seq("ch_zz") == 0
    assert await command_store.last_seq("ch_a") == 3  # publishing removes nothing from the log


async def test_entry_appended_as_published_is_not_pending(command_store: CommandStore) -> None:
    e = entry("ch_a", 1, "k", published=True)
    await command_store.append(e)
    assert await command_store.unpublished() == []
    assert await command_store.by_idempotency_key("k") == e
    assert await command_store.last_seq("ch_a") == 1


async def test_event_bytes_round_trip_exactly(command_store: CommandStore) -> None:
    raw = bytes(range(256)) * 512  # 128 KiB, every byte value, NULs included
    big = sent("ch_a", 2, text="ü" * 50_000).SerializeToString()
    await command_store.append(LogEntry("ch_a", 1, raw, "k1"))
    await command_store.append(LogEntry("ch_a", 2, big, "k2"))
    assert [e.event for e in await command_store.unpublished()] == [raw, big]
    got = await command_store.by_idempotency_key("k2")
    assert (
        got is not None
        and events_pb2.Event.FromString(got.event).message_created.message.text == "ü" * 50_000
    )


async def test_message_records_insert_and_replace(command_store: CommandStore) -> None:
    body = sent("ch_a", 2).message_created.message.SerializeToString()
    record = MessageRecord("msg_1", "ch_a", 2, "alice", False, body)
    other = MessageRecord("msg_2", "ch_b", 5, "bob", False, b"\x00\xff\x00")
    await command_store.put_message(record)
    await command_store.put_message(other)
    assert await command_store.message("msg_1") == record
    assert await command_store.message("msg_2") == other
    tombstone = MessageRecord("msg_1", "ch_a", 2, "alice", True, b"")
    await command_store.put_message(tombstone)
    assert await command_store.message("msg_1") == tombstone
    assert await command_store.message("msg_2") == other
    assert await command_store.message("msg_3") is None


async def test_concurrent_appends_of_one_seq_let_exactly_one_win(
    command_store: CommandStore,
) -> None:
    candidates = [entry("ch_a", 1, text=f"writer {i}") for i in range(20)]
    results = await asyncio.gather(
        *(command_store.append(e) for e in candidates), return_exceptions=True
    )
    winners = [e for e, r in zip(candidates, results, strict=True) if r is None]
    assert len(winners) == 1
    assert all(isinstance(r, LogConflict) for r in results if r is not None)
    assert await command_store.unpublished() == winners


async def test_concurrent_appends_with_one_key_let_exactly_one_win(
    command_store: CommandStore,
) -> None:
    candidates = [entry("ch_a", seq, "send:alice:retry") for seq in range(1, 21)]
    results = await asyncio.gather(
        *(command_store.append(e) for e in candidates), return_exceptions=True
    )
    winners = [e for e, r in zip(candidates, results, strict=True) if r is None]
    assert len(winners) == 1
    assert all(isinstance(r, LogConflict) for r in results if r is not None)
    assert await command_store.by_idempotency_key("send:alice:retry") == winners[0]
    assert await command_store.last_seq("ch_a") == winners[0].seq


async def test_command_store_survives_reopen(command_store: CommandStore, command_dsn: str) -> None:
    e1, e2 = entry("ch_a", 1, "k1"), entry("ch_a", 2)
    await command_store.append(e1)
    await command_store.append(e2)
    await command_store.mark_published("ch_a", 1)
    await command_store.put_message(MessageRecord("msg_1", "ch_a", 1, "alice", False, b"body"))
    again = await open_command(command_dsn)  # the schema step runs again: it must be a no-op
    try:
        assert await again.last_seq("ch_a") == 2
        assert await again.unpublished() == [e2]
        assert await again.by_idempotency_key("k1") == dataclasses.replace(e1, published=True)
        assert await again.message("msg_1") == MessageRecord(
            "msg_1", "ch_a", 1, "alice", False, b"body"
        )
        with pytest.raises(LogConflict):
            await again.append(entry("ch_a", 2))
    finally:
        await again.close()


# ==================================================================== MetadataStore


async def member_view(store: MetadataStore, channel_id: str) -> tuple[list[str], int]:
    """``members()``, checked against ``channel()`` and ``is_member()``."""
    members, seq = await store.members(channel_id)
    ch = await store.channel(channel_id)
    assert (list(ch.member_user_ids) if ch else []) == members
    for user in members:
        assert await store.is_member(channel_id, user)
    return members, seq


async def test_metadata_store_starts_empty(metadata_store: MetadataStore) -> None:
    assert await metadata_store.channel("ch_a") is None
    assert await metadata_store.members("ch_a") == ([], 0)
    assert await metadata_store.is_member("ch_a", "alice") is False
    assert await metadata_store.channels_of("alice") == []
    assert await metadata_store.read_marker("alice", "ch_a") == 0
    assert await metadata_store.read_markers("alice") == {}
    assert await metadata_store.all_memberships() == []


async def test_channel_created(metadata_store: MetadataStore) -> None:
    event = created(
        "ch_a", ["carol", "alice", "bob"], name="general", by="alice", visibility=PRIVATE, at_ms=T0
    )
    await metadata_store.apply(event)
    expected = channel_pb2.Channel(
        channel_id="ch_a",
        name="general",
        member_user_ids=["alice", "bob", "carol"],
        created_by_user_id="alice",
        visibility=PRIVATE,
        last_seq=1,
    )
    expected.created_at.FromMilliseconds(T0)
    assert await metadata_store.channel("ch_a") == expected
    assert await metadata_store.members("ch_a") == (["alice", "bob", "carol"], 1)
    assert await metadata_store.is_member("ch_a", "bob") is True
    assert await metadata_store.is_member("ch_a", "dave") is False
    assert await metadata_store.is_member("ch_b", "alice") is False


async def test_join_and_leave(metadata_store: MetadataStore) -> None:
    await metadata_store.apply(created("ch_a", ["alice", "bob"]))
    await metadata_store.apply(joined("ch_a", 2, "carol"))
    assert await member_view(metadata_store, "ch_a") == (["alice", "bob", "carol"], 2)
    await metadata_store.apply(left("ch_a", 3, "bob"))
    assert await member_view(metadata_store, "ch_a") == (["alice", "carol"], 3)
    assert await metadata_store.is_member("ch_a", "bob") is False
    ch = await metadata_store.channel("ch_a")
    assert ch is not None and ch.last_seq == 3
    await metadata_store.apply(joined("ch_a", 4, "bob"))  # rejoin
    assert await member_view(metadata_store, "ch_a") == (["alice", "bob", "carol"], 4)


async def test_older_membership_changes_are_ignored(metadata_store: MetadataStore) -> None:
    for event in [
        created("ch_a", ["alice"]),
        joined("ch_a", 2, "bob"),
        joined("ch_a", 3, "carol"),
        left("ch_a", 5, "bob"),
    ]:
        await metadata_store.apply(event)
    assert await member_view(metadata_store, "ch_a") == (["alice", "carol"], 5)
    await metadata_store.apply(joined("ch_a", 4, "dave"))  # older than the last change (5)
    await metadata_store.apply(left("ch_a", 4, "carol"))
    await metadata_store.apply(
        joined("ch_a", 2, "bob")
    )  # redelivered join of someone who left since
    await metadata_store.apply(left("ch_a", 5, "alice"))  # same seq as the last change: not newer
    assert await member_view(metadata_store, "ch_a") == (["alice", "carol"], 5)
    assert await metadata_store.is_member("ch_a", "dave") is False
    assert await metadata_store.is_member("ch_a", "bob") is False
    ch = await metadata_store.channel("ch_a")
    assert ch is not None and ch.last_seq == 5


async def test_redelivery_is_idempotent(metadata_store: MetadataStore) -> None:
    events = [
        created("ch_a", ["alice", "bob"]),
        joined("ch_a", 2, "carol"),
        sent("ch_a", 3),
        joined("ch_a", 4, "dave"),
        left("ch_a", 5, "carol"),
        sent("ch_a", 6),
        read_up_to("ch_a", "bob", 3),
    ]
    for event in events:
        await metadata_store.apply(event)

    async def state() -> tuple[object, ...]:
        return (
            await metadata_store.channel("ch_a"),
            await metadata_store.members("ch_a"),
            await metadata_store.channels_of("dave"),
            await metadata_store.read_markers("bob"),
            await metadata_store.all_memberships(),
        )

    before = await state()
    assert before[1] == (["alice", "bob", "dave"], 5)
    for event in events:  # the whole batch again, as after a worker crash before its ack
        await metadata_store.apply(event)
    assert await state() == before
    for event in reversed(events[1:]):  # and every later event once more, out of order
        await metadata_store.apply(event)
    assert await state() == before


async def test_redelivered_channel_created_does_not_resurrect_members(
    metadata_store: MetadataStore,
) -> None:
    creation = created("ch_a", ["alice", "bob"])
    await metadata_store.apply(creation)
    await metadata_store.apply(left("ch_a", 2, "bob"))
    await metadata_store.apply(creation)  # redelivered
    assert await member_view(metadata_store, "ch_a") == (["alice"], 2)
    assert await metadata_store.is_member("ch_a", "bob") is False


async def test_membership_events_of_an_unknown_channel_are_ignored(
    metadata_store: MetadataStore,
) -> None:
    await metadata_store.apply(joined("ch_a", 2, "alice"))
    await metadata_store.apply(sent("ch_a", 3))
    assert await metadata_store.channel("ch_a") is None
    assert await metadata_store.members("ch_a") == ([], 0)
    assert await metadata_store.is_member("ch_a", "alice") is False
    assert await metadata_store.channels_of("alice") == []
    assert await metadata_store.all_memberships() == []


async def test_ephemeral_events_change_nothing(metadata_store: MetadataStore) -> None:
    await metadata_store.apply(created("ch_a", ["alice"]))
    before = await metadata_store.channel("ch_a")
    await metadata_store.apply(typing("ch_a", "bob"))
    await metadata_store.apply(presence("bob"))
    assert await metadata_store.channel("ch_a") == before
    assert await metadata_store.members("ch_a") == (["alice"], 1)
    assert await metadata_store.read_markers("bob") == {}


async def test_message_events_move_last_seq_forward_only(metadata_store: MetadataStore) -> None:
    await metadata_store.apply(created("ch_a", ["alice"]))
    await metadata_store.apply(sent("ch_a", 3))
    await metadata_store.apply(sent("ch_a", 2))  # redelivered older event
    ch = await metadata_store.channel("ch_a")
    assert ch is not None and ch.last_seq == 3
    assert await metadata_store.members("ch_a") == (
        ["alice"],
        1,
    )  # messages are no membership change


async def test_channels_of_lists_most_recently_active_first(metadata_store: MetadataStore) -> None:
    await metadata_store.apply(created("ch_a", ["alice", "bob"], at_ms=T0 + 1000))
    await metadata_store.apply(created("ch_b", ["alice"], at_ms=T0 + 2000))
    await metadata_store.apply(created("ch_c", ["carol", "alice"], at_ms=T0 + 3000))
    await metadata_store.apply(created("ch_d", ["bob"], at_ms=T0 + 500))
    await metadata_store.apply(created("ch_t2", ["alice"], at_ms=T0 + 1500))
    await metadata_store.apply(created("ch_t1", ["alice"], at_ms=T0 + 1500))  # same activity: by id

    async def ids(user: str) -> list[str]:
        return [c.channel_id for c in await metadata_store.channels_of(user)]

    assert await ids("alice") == ["ch_c", "ch_b", "ch_t1", "ch_t2", "ch_a"]
    await metadata_store.apply(sent("ch_a", 2, at_ms=T0 + 10_000))
    assert await ids("alice") == ["ch_a", "ch_c", "ch_b", "ch_t1", "ch_t2"]
    await metadata_store.apply(
        sent("ch_b", 2, at_ms=T0 + 1200)
    )  # a late event: activity stays at its max
    assert await ids("alice") == ["ch_a", "ch_c", "ch_b", "ch_t1", "ch_t2"]
    await metadata_store.apply(left("ch_c", 2, "alice", at_ms=T0 + 20_000))
    assert await ids("alice") == ["ch_a", "ch_b", "ch_t1", "ch_t2"]
    assert await ids("carol") == ["ch_c"]
    channels = await metadata_store.channels_of("bob")
    assert [c.channel_id for c in channels] == ["ch_a", "ch_d"]
    assert channels[0] == await metadata_store.channel("ch_a")
    assert list(channels[0].member_user_ids) == ["alice", "bob"]
    assert channels[0].last_seq == 2
    assert await metadata_store.channels_of("nobody") == []


async def test_read_markers_only_move_forward(metadata_store: MetadataStore) -> None:
    await metadata_store.apply(read_up_to("ch_a", "alice", 5))
    assert await metadata_store.read_marker("alice", "ch_a") == 5
    await metadata_store.apply(read_up_to("ch_a", "alice", 3))
    assert await metadata_store.read_marker("alice", "ch_a") == 5
    await metadata_store.apply(read_up_to("ch_a", "alice", 9))
    await metadata_store.apply(read_up_to("ch_b", "alice", 2))
    await metadata_store.apply(read_up_to("ch_a", "bob", 1))
    assert await metadata_store.read_marker("alice", "ch_a") == 9
    assert await metadata_store.read_markers("alice") == {"ch_a": 9, "ch_b": 2}
    assert await metadata_store.read_markers("bob") == {"ch_a": 1}
    assert await metadata_store.read_marker("bob", "ch_b") == 0
    await metadata_store.apply(read_up_to("ch_a", "alice", 9))  # redelivered
    assert await metadata_store.read_markers("alice") == {"ch_a": 9, "ch_b": 2}


async def test_all_memberships_pages_by_channel_id(metadata_store: MetadataStore) -> None:
    # Ids where one is a prefix of another catch key schemes that sort "ch_a:..." after "ch_a0...".
    ids = ["ch_a", "ch_a0", "ch_a00", "ch_ab", "ch_b"] + [f"ch_{n:03d}" for n in range(18)]
    rng = random.Random(5)
    rng.shuffle(ids)
    expected = []
    for i, channel_id in enumerate(ids):
        members = [f"u{j}" for j in range(i % 4)]
        rng.shuffle(members)
        await metadata_store.apply(created(channel_id, members))
        seq = 1
        if i % 3 == 0:
            await metadata_store.apply(joined(channel_id, 2, "zed"))
            members.append("zed")
            seq = 2
        if i % 5 == 0 and members:
            await metadata_store.apply(left(channel_id, 3, members[0]))
            members.pop(0)
            seq = 3
        expected.append((channel_id, seq, sorted(members)))
    expected.sort()
    assert any(not m for _, _, m in expected)  # a channel without members is listed too

    pages, after = [], ""
    for _ in range(len(ids) + 1):  # bounded: a backend that repeats a page must fail, not hang
        page = await metadata_store.all_memberships(after, limit=5)
        if not page:
            break
        pages.append(page)
        after = page[-1][0]
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [row for p in pages for row in p] == expected
    assert await metadata_store.all_memberships() == expected
    at = [row[0] for row in expected].index("ch_a")
    assert await metadata_store.all_memberships("ch_a", limit=2) == expected[at + 1 : at + 3]
    assert (await metadata_store.all_memberships("ch_a", limit=1))[0][0] == "ch_a0"
    assert await metadata_store.all_memberships(expected[-1][0]) == []


async def test_ids_containing_separators_do_not_collide(metadata_store: MetadataStore) -> None:
    # Backends that build keys by joining ids must escape, or these pairs would share a key.
    await metadata_store.apply(created("ch_x", ["y:z", "q"]))
    await metadata_store.apply(created("ch_x:y", ["z"]))
    await metadata_store.apply(created("ch_%3A", ["%"]))
    assert await metadata_store.members("ch_x") == (["q", "y:z"], 1)
    assert await metadata_store.members("ch_x:y") == (["z"], 1)
    assert await metadata_store.members("ch_%3A") == (["%"], 1)
    assert await metadata_store.is_member("ch_x", "z") is False
    assert await metadata_store.is_member("ch_x:y", "y:z") is False
    await metadata_store.apply(read_up_to("b:c", "a", 4))
    await metadata_store.apply(read_up_to("c", "a:b", 7))
    assert await metadata_store.read_markers("a") == {"b:c": 4}
    assert await metadata_store.read_markers("a:b") == {"c": 7}


async def test_metadata_store_survives_reopen(
    metadata_store: MetadataStore, metadata_dsn: str
) -> None:
    await metadata_store.apply(created("ch_a", ["alice", "bob"]))
    await metadata_store.apply(left("ch_a", 2, "bob"))
    await metadata_store.apply(read_up_to("ch_a", "alice", 2))
    again = await open_metadata(metadata_dsn)
    try:
        assert await again.members("ch_a") == (["alice"], 2)
        assert await again.read_markers("alice") == {"ch_a": 2}
        assert await again.channel("ch_a") == await metadata_store.channel("ch_a")
    finally:
        await again.close()


# ===================================================================== HistoryStore


async def seed(
    store: HistoryStore, channel_id: str, last: int, sender: str = "alice"
) -> list[events_pb2.Event]:
    """``channel_created`` at seq 1 and messages 2..``last``."""
    events = [created(channel_id, ["alice", "bob"])] + [
        sent(channel_id, s, sender) for s in range(2, last + 1)
    ]
    assert await store.apply(events) == len(events)
    return events


async def test_history_store_starts_empty(history_store: HistoryStore) -> None:
    assert await history_store.history("ch_a") == HistoryPage([], False, 0)
    assert await history_store.events_after("ch_a", 0) == []
    assert await history_store.last_seq("ch_a") == 0
    assert await history_store.unread_count("ch_a", 0, "alice") == 0
    assert await history_store.applied_stream_seq() == 0


async def test_apply_counts_new_events_and_ignores_redelivery(history_store: HistoryStore) -> None:
    batch = [created("ch_a"), sent("ch_a", 2), sent("ch_a", 3)]
    fourth = sent("ch_a", 4)
    assert await history_store.apply(batch) == 3
    assert await history_store.apply(batch) == 0
    impostor = sent("ch_a", 3, text="a different event at a taken seq")
    assert await history_store.apply([impostor, fourth]) == 1
    assert await history_store.apply([]) == 0
    assert (
        await history_store.apply([typing("ch_a", "bob"), presence("bob")]) == 0
    )  # no seq: not log events
    assert await history_store.events_after("ch_a", 0) == [*batch, fourth]
    page = await history_store.history("ch_a")
    assert page.messages == [e.message_created.message for e in (batch[1], batch[2], fourth)]
    assert page.last_seq == 4


async def test_history_default_page_is_the_newest(history_store: HistoryStore) -> None:
    events = await seed(history_store, "ch_a", 11)  # messages 2..11
    page = await history_store.history("ch_a", limit=3)
    assert page == HistoryPage([e.message_created.message for e in events[-3:]], True, 11)
    assert seqs(page.messages) == [9, 10, 11]
    assert (await history_store.history("ch_a", limit=9)) == HistoryPage(
        [e.message_created.message for e in events[2:]], True, 11
    )
    assert seqs((await history_store.history("ch_a", limit=10)).messages) == list(range(2, 12))
    assert (
        await history_store.history("ch_a", limit=10)
    ).has_more is False  # exactly all: nothing beyond
    assert (await history_store.history("ch_a", limit=11)).has_more is False
    assert seqs((await history_store.history("ch_a")).messages) == list(
        range(2, 12)
    )  # default limit 50


async def test_history_before_seq_pages_backwards(history_store: HistoryStore) -> None:
    await seed(history_store, "ch_a", 11)

    async def page(before: int, limit: int) -> tuple[list[int], bool, int]:
        p = await history_store.history("ch_a", before_seq=before, limit=limit)
        return seqs(p.messages), p.has_more, p.last_seq

    assert await page(9, 3) == ([6, 7, 8], True, 11)
    assert await page(6, 3) == ([3, 4, 5], True, 11)
    assert await page(5, 3) == ([2, 3, 4], False, 11)  # exactly the rest
    assert await page(4, 3) == ([2, 3], False, 11)
    assert await page(2, 3) == ([], False, 11)
    assert await page(100, 3) == ([9, 10, 11], True, 11)


async def test_history_after_seq_pages_forwards(history_store: HistoryStore) -> None:
    await seed(history_store, "ch_a", 11)

    async def page(after: int, limit: int) -> tuple[list[int], bool]:
        p = await history_store.history("ch_a", after_seq=after, limit=limit)
        return seqs(p.messages), p.has_more

    assert await page(0, 3) == ([2, 3, 4], True)  # 0: from the start, oldest first
    assert await page(1, 3) == ([2, 3, 4], True)
    assert await page(7, 3) == ([8, 9, 10], True)
    assert await page(8, 3) == ([9, 10, 11], False)  # exactly the rest
    assert await page(9, 3) == ([10, 11], False)
    assert await page(11, 3) == ([], False)
    assert await page(0, 50) == (list(range(2, 12)), False)


async def test_history_range_reads_forwards_between_bounds(history_store: HistoryStore) -> None:
    await seed(history_store, "ch_a", 11)

    async def page(after: int, before: int, limit: int) -> tuple[list[int], bool]:
        p = await history_store.history("ch_a", after_seq=after, before_seq=before, limit=limit)
        return seqs(p.messages), p.has_more

    assert await page(3, 9, 10) == ([4, 5, 6, 7, 8], False)
    assert await page(3, 9, 5) == ([4, 5, 6, 7, 8], False)  # exactly the range: nothing beyond
    assert await page(3, 9, 4) == ([4, 5, 6, 7], True)
    assert await page(3, 5, 3) == ([4], False)
    assert await page(0, 5, 2) == ([2, 3], True)  # from the start, bounded above
    assert await page(0, 5, 3) == ([2, 3, 4], False)
    assert await page(11, 20, 3) == ([], False)


async def test_history_lists_only_messages_but_the_log_has_everything(
    history_store: HistoryStore,
) -> None:
    events = [
        created("ch_a"),
        sent("ch_a", 2),
        joined("ch_a", 3, "carol"),
        sent("ch_a", 4, "carol"),
        left("ch_a", 5, "carol"),
        sent("ch_a", 6),
        joined("ch_a", 7, "dave"),
    ]
    assert await history_store.apply(events) == 7
    page = await history_store.history("ch_a")
    assert page == HistoryPage([events[i].message_created.message for i in (1, 3, 5)], False, 7)
    assert await history_store.history("ch_a", before_seq=6, limit=1) == HistoryPage(
        [events[3].message_created.message], True, 7
    )
    assert await history_store.events_after("ch_a", 0) == events
    assert await history_store.last_seq("ch_a") == 7


async def test_edits_only_a_newer_edit_wins(history_store: HistoryStore) -> None:
    original = sent("ch_a", 2, "alice", "helo")
    first, second = edited(original, 3, "hello"), edited(original, 5, "hello!")
    assert await history_store.apply([created("ch_a"), original, sent("ch_a", 4, "bob")]) == 3
    assert await history_store.apply([second]) == 1
    assert await history_store.apply([first]) == 1  # late: stored in the log, but must not win
    assert await history_store.apply([second]) == 0
    page = await history_store.history("ch_a")
    assert page.messages[0] == second.message_edited.message
    assert page.messages[0].text == "hello!"
    assert page.messages[0].edited_at.ToMilliseconds() == T0 + 5000
    assert page.messages[1] == sent("ch_a", 4, "bob").message_created.message
    assert page.last_seq == 5
    assert [e.seq for e in await history_store.events_after("ch_a", 0)] == [1, 2, 3, 4, 5]


async def test_delete_leaves_a_tombstone(history_store: HistoryStore) -> None:
    secret = sent("ch_a", 2, "alice", "secret")
    await history_store.apply([created("ch_a"), secret, sent("ch_a", 3, "bob")])
    assert await history_store.apply([deleted("ch_a", 4, 2)]) == 1
    assert (
        await history_store.apply([edited(secret, 5, "resurrected")]) == 1
    )  # an edit after the delete
    assert await history_store.apply([deleted("ch_a", 4, 2)]) == 0
    tomb = message_pb2.Message()
    tomb.CopyFrom(secret.message_created.message)
    tomb.text = ""
    tomb.deleted = True
    page = await history_store.history("ch_a")
    assert page == HistoryPage([tomb, sent("ch_a", 3, "bob").message_created.message], False, 5)
    assert (
        await history_store.apply([deleted("ch_a", 6, 99)]) == 1
    )  # unknown message: logged, nothing else
    assert seqs((await history_store.history("ch_a")).messages) == [2, 3]


async def test_events_after_pages_through_one_channel(history_store: HistoryStore) -> None:
    events = await seed(history_store, "ch_a", 21)
    await seed(history_store, "ch_b", 30)
    assert await history_store.events_after("ch_a", 0, limit=7) == events[:7]
    assert await history_store.events_after("ch_a", 7, limit=7) == events[7:14]
    assert await history_store.events_after("ch_a", 14) == events[14:]
    assert await history_store.events_after("ch_a", 21) == []
    assert await history_store.events_after("ch_c", 0) == []


async def test_last_seq_per_channel(history_store: HistoryStore) -> None:
    await seed(history_store, "ch_a", 5)
    await seed(history_store, "ch_a0", 2)
    assert await history_store.last_seq("ch_a") == 5
    assert await history_store.last_seq("ch_a0") == 2
    assert await history_store.last_seq("ch_b") == 0
    await history_store.apply([joined("ch_a", 9, "carol")])  # any log event counts, gaps allowed
    assert await history_store.last_seq("ch_a") == 9
    assert (await history_store.history("ch_a", limit=1)).last_seq == 9


async def test_unread_count_excludes_own_and_deleted_and_is_capped(
    history_store: HistoryStore,
) -> None:
    await history_store.apply(
        [
            created("ch_a", ["alice", "bob", "carol", "dave"]),
            sent("ch_a", 2, "alice"),
            sent("ch_a", 3, "bob"),
            sent("ch_a", 4, "carol"),
            sent("ch_a", 5, "bob"),
            sent("ch_a", 6, "alice"),
            sent("ch_a", 7, "carol"),
            deleted("ch_a", 8, 4),
            joined("ch_a", 9, "erin"),
        ]
    )
    await seed(history_store, "ch_b", 10, sender="bob")
    assert await history_store.unread_count("ch_a", 0, "alice") == 3  # 3, 5, 7 (4 is deleted)
    assert await history_store.unread_count("ch_a", 3, "alice") == 2
    assert await history_store.unread_count("ch_a", 7, "alice") == 0
    assert await history_store.unread_count("ch_a", 0, "bob") == 3  # 2, 6, 7
    assert await history_store.unread_count("ch_a", 0, "dave") == 5
    assert await history_store.unread_count("ch_a", 0, "dave", cap=2) == 2
    assert await history_store.unread_count("ch_a", 0, "dave", cap=5) == 5
    assert await history_store.unread_count("ch_b", 0, "alice") == 9
    assert await history_store.unread_count("ch_c", 0, "alice") == 0


async def test_applied_stream_seq_only_moves_forward(history_store: HistoryStore) -> None:
    assert await history_store.apply([created("ch_a")], stream_seq=10) == 1
    assert await history_store.applied_stream_seq() == 10
    assert await history_store.apply([], stream_seq=5) == 0
    assert await history_store.applied_stream_seq() == 10
    assert (
        await history_store.apply([sent("ch_a", 2)], stream_seq=7) == 1
    )  # new event, old position
    assert await history_store.applied_stream_seq() == 10
    assert (
        await history_store.apply([created("ch_a")], stream_seq=12) == 0
    )  # only duplicates: still recorded
    assert await history_store.applied_stream_seq() == 12
    assert await history_store.apply([sent("ch_a", 3)]) == 1  # stream_seq 0: not recorded
    assert await history_store.applied_stream_seq() == 12


async def test_large_channel_pages_completely_both_ways(history_store: HistoryStore) -> None:
    n = 5000
    started = time.monotonic()
    assert await history_store.apply([created("ch_big", ["alice", "bob"])], stream_seq=1) == 1
    for first in range(2, n + 2, 500):
        batch = [
            sent("ch_big", s, "bob" if s % 7 else "alice")
            for s in range(first, min(first + 500, n + 2))
        ]
        batch.append(sent("ch_noise", first))  # another channel interleaved at the same seqs
        assert await history_store.apply(batch, stream_seq=first) == len(batch)
    applied = time.monotonic() - started
    everything = list(range(2, n + 2))

    backwards: list[int] = []
    before: int | None = None  # first page: the newest
    pages = 0
    for _ in range(n // 200 + 1):  # bounded: a repeated page must fail, not hang
        page = await history_store.history("ch_big", before_seq=before, limit=200)
        pages += 1
        assert page.last_seq == n + 1
        assert len(page.messages) == 200
        assert seqs(page.messages) == sorted(seqs(page.messages))
        backwards = seqs(page.messages) + backwards
        if not page.has_more:
            break
        before = page.messages[0].seq
    assert pages == n // 200
    assert backwards == everything

    forwards: list[int] = []
    after = 0  # from the start
    for _ in range(n // 200 + 1):
        page = await history_store.history("ch_big", after_seq=after, limit=200)
        forwards += seqs(page.messages)
        if not page.has_more:
            break
        after = page.messages[-1].seq
    assert forwards == everything

    by_alice = sum(1 for s in everything if s % 7 == 0)
    assert await history_store.unread_count("ch_big", 0, "bob") == by_alice
    assert await history_store.unread_count("ch_big", 0, "alice") == UNREAD_CAP
    assert await history_store.unread_count("ch_big", 0, "alice", cap=n) == n - by_alice
    assert len(await history_store.events_after("ch_big", 0, limit=n + 10)) == n + 1
    print(
        f"applied {n} messages in {applied:.2f}s; paged both ways in {time.monotonic() - started - applied:.2f}s"
    )


async def test_history_store_survives_reopen(history_store: HistoryStore, history_dsn: str) -> None:
    events = await seed(history_store, "ch_a", 4)
    await history_store.apply([], stream_seq=42)
    again = await open_history(history_dsn)
    try:
        assert await again.events_after("ch_a", 0) == events
        assert await again.applied_stream_seq() == 42
        assert await again.apply(events) == 0
    finally:
        await again.close()


# ============================================== MongoDB-wire specifics (not contract)
# How the MongoDB-wire stores lay out data and choose servers: what the contract
# above cannot see, but production on a real replica set depends on.


@pytest.mark.mongo
async def test_mongo_layout_indexes_and_read_preferences(ferretdb_server: FerretDB) -> None:
    base = f"{ferretdb_server.uri}layout?replicaSet=rs0&serverSelectionTimeoutMS=5000"
    command = await open_mongo_command(f"{base}&readPreference=nearest")
    nearest = await open_mongo_metadata(f"{base}&readPreference=nearest")
    primary = await open_mongo_metadata(f"{base}&readPreference=nearest", read_preference="primary")
    default = await open_mongo_metadata(base)
    raw: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(base)
    try:
        assert nearest.read_preference.mongos_mode == "nearest"
        assert primary.read_preference.mongos_mode == "primary"
        assert default.read_preference.mongos_mode == "primary"
        assert command.read_preference.mongos_mode == "primary"  # whatever the DSN says

        await command.append(entry("ch_a", 3))
        await command.append(entry("ch_a", 4, "send:alice:k"))
        docs = await raw.layout.command_log.find({}, {"event": 0}).sort("_id", 1).to_list()
        # The _id is the (channel, seq) pair, and a missing key is absent (not null),
        # which the sparse unique index on real MongoDB needs.
        assert docs == [
            {
                "_id": "ch_a:00000000000000000003",
                "channel_id": "ch_a",
                "seq": 3,
                "published": False,
            },
            {
                "_id": "ch_a:00000000000000000004",
                "channel_id": "ch_a",
                "seq": 4,
                "published": False,
                "idempotency_key": "send:alice:k",
            },
        ]
        log_indexes = await raw.layout.command_log.index_information()
        assert log_indexes["channel_seq"]["key"] == [("channel_id", 1), ("seq", 1)]
        assert log_indexes["channel_seq"]["unique"] is True
        assert log_indexes["idempotency_key"]["unique"] is True
        assert log_indexes["unpublished"]["key"] == [
            ("published", 1),
            ("channel_id", 1),
            ("seq", 1),
        ]
        member_indexes = await raw.layout.memberships.index_information()
        assert member_indexes["by_channel"]["key"] == [
            ("channel_id", 1),
            ("member", 1),
            ("user_id", 1),
        ]
        assert member_indexes["by_user"]["key"] == [
            ("user_id", 1),
            ("member", 1),
            ("channel_id", 1),
        ]
        assert await raw.layout.schema.find().sort("_id", 1).to_list() == [
            {"_id": "command", "version": 1},
            {"_id": "metadata", "version": 1},
        ]

        await primary.apply(created("ch_a", ["alice", "bob"]))
        await primary.apply(left("ch_a", 2, "bob"))
        members = (
            await raw.layout.memberships.find({}, {"_id": 1, "member": 1, "seq": 1})
            .sort("_id", 1)
            .to_list()
        )
        # A leave keeps a tombstone, so a redelivered older join cannot bring bob back.
        assert members == [
            {"_id": "ch_a:alice", "member": True, "seq": 1},
            {"_id": "ch_a:bob", "member": False, "seq": 2},
        ]
        assert await nearest.members("ch_a") == (["alice"], 2)
    finally:
        for store in (command, nearest, primary, default):
            await store.close()
        await raw.drop_database("layout")
        await raw.close()


@pytest.mark.mongo
async def test_mongo_refuses_a_schema_from_newer_code(ferretdb_server: FerretDB) -> None:
    dsn = f"{ferretdb_server.uri}newer?replicaSet=rs0&serverSelectionTimeoutMS=5000"
    raw: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(dsn)
    try:
        await raw.newer.schema.insert_one({"_id": "metadata", "version": 99})
        with pytest.raises(RuntimeError, match="metadata schema in database 'newer' is version 99"):
            await open_mongo_metadata(dsn)
    finally:
        await raw.drop_database("newer")
        await raw.close()


@pytest.mark.mongo
async def test_mongo_unreachable_server_is_unavailable_after_its_selection_timeout() -> None:
    port = allocate("127.0.0.1")  # nothing listens there
    dsn = f"mongodb://127.0.0.1:{port}/x?serverSelectionTimeoutMS=300&connectTimeoutMS=300"
    with pytest.raises(Unavailable) as caught:
        await open_mongo_command(dsn)
    assert caught.value.reason == "BACKEND_UNAVAILABLE"
    # It gave up because the DSN's server-selection timeout ran out (the driver says
    # which one), not after some other, longer wait.
    assert isinstance(caught.value.__cause__, ServerSelectionTimeoutError)
    assert "Timeout: 0.3s" in str(caught.value.__cause__)
