"""Commands' write path (``_commit``): sequencing, idempotency, publish repair, second writers.

Nothing is started: the bus is the in-memory fake (its EVENTS stream is what
subscribers would see), the command log and metadata are embedded SQLite files.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from chatmesh.v1 import channel_pb2, command_service_pb2 as pb, events_pb2
from mesh.bus.subjects import Subjects
from mesh.core.errors import AlreadyExists, InvalidArgument, ResourceExhausted, Unavailable
from mesh.core.events import new_event
from mesh.core.ratelimit import Limit, RateLimiter
from mesh.rpc.status import parse_details, to_status
from mesh.stores import (
    CommandStore,
    LogConflict,
    LogEntry,
    MessageRecord,
    open_command,
    open_metadata,
)
from services.command.service import Commands
from tests.bus.fakes import FakeBus

ORIGIN = "us-east"


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.bus = FakeBus()
        self.closers: list[Callable[[], Awaitable[None]]] = []

    async def stores(self) -> tuple[CommandStore, Any]:
        log = await open_command(f"sqlite:///{self.tmp_path}/command.db")
        metadata = await open_metadata(f"sqlite:///{self.tmp_path}/metadata.db", primary_reads=True)
        self.closers += [log.close, metadata.close]
        return log, metadata

    async def commands(self, log: CommandStore | None = None, metadata: Any = None) -> Commands:
        if log is None or metadata is None:
            own_log, own_metadata = await self.stores()
            log, metadata = log or own_log, metadata or own_metadata
        return Commands(
            bus=self.bus, events=self.bus, jetstream=self.bus,
            command_store=log, metadata=metadata, region=ORIGIN, publish_timeout=1,
        )  # fmt: skip

    def stream(self, channel_id: str) -> list[tuple[int, str]]:
        """(seq, kind) of the channel's events in EVENTS, in stream order."""
        events = [
            events_pb2.Event.FromString(m.data)
            for m in self.bus.stored(subject=Subjects.channel_events(channel_id))
        ]
        return [(e.seq, e.WhichOneof("payload") or "") for e in events]

    def texts(self, channel_id: str) -> list[str]:
        return [
            events_pb2.Event.FromString(m.data).message_created.message.text
            for m in self.bus.stored(subject=Subjects.channel_events(channel_id))
            if events_pb2.Event.FromString(m.data).WhichOneof("payload") == "message_created"
        ]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    env = Env(tmp_path)
    yield env
    for close in env.closers:
        await close()
    await env.bus.close()


@pytest.fixture
async def commands(env: Env) -> Commands:
    return await env.commands()


async def _channel(commands: Commands, key: str = "r1", members: tuple[str, ...] = ("bob",)) -> str:
    resp = await commands.create_channel(
        "alice",
        pb.CreateChannelRequest(name="general", member_user_ids=members, client_request_id=key),
        ORIGIN,
    )
    return resp.channel.channel_id


def _send(channel_id: str, client_msg_id: str, text: str = "hi") -> pb.SendMessageRequest:
    return pb.SendMessageRequest(channel_id=channel_id, client_msg_id=client_msg_id, text=text)


async def test_seqs_increase_per_channel_with_no_gaps(env: Env, commands: Commands) -> None:
    ch1 = await _channel(commands, "r1")
    ch2 = await _channel(commands, "r2")
    for i in range(3):
        await commands.send_message("alice", _send(ch1, f"a{i}"), ORIGIN)
        await commands.send_message("bob", _send(ch2, f"b{i}"), ORIGIN)
    await commands.leave_channel("bob", pb.LeaveChannelRequest(channel_id=ch1), ORIGIN)
    # Concurrent commands on one channel queue on its lock: still one seq each, in order.
    await asyncio.gather(
        *(commands.send_message("alice", _send(ch1, f"c{i}"), ORIGIN) for i in range(8))
    )

    assert [seq for seq, _ in env.stream(ch1)] == list(range(1, 14))
    assert [seq for seq, _ in env.stream(ch2)] == [1, 2, 3, 4]
    assert env.stream(ch1)[4] == (5, "member_left")
    assert await commands.log.last_seq(ch1) == 13 and await commands.log.unpublished() == []
    channel = await commands.metadata.channel(ch1)
    assert channel is not None and channel.last_seq == 13


async def test_a_retry_with_the_same_key_returns_the_logged_message_and_publishes_nothing(
    env: Env, commands: Commands
) -> None:
    ch = await _channel(commands)
    first = await commands.send_message("alice", _send(ch, "k1", "hello"), ORIGIN)
    published = len(env.bus.stored())
    again = await commands.send_message("alice", _send(ch, "k1", "hello"), ORIGIN)

    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.message == first.message and again.message.seq == 2
    assert len(env.bus.stored()) == published
    # Keys are per sender: bob's "k1" is another message.
    other = await commands.send_message("bob", _send(ch, "k1", "hello"), ORIGIN)
    assert not other.duplicate and other.message.seq == 3
    # A repeated CreateChannel is the same channel.
    assert await _channel(commands) == ch and [s for s, _ in env.stream(ch)] == [1, 2, 3]


async def test_a_retry_is_answered_from_the_log_even_after_the_sender_left(
    env: Env, commands: Commands
) -> None:
    ch = await _channel(commands)
    first = await commands.send_message("bob", _send(ch, "k1", "bye soon"), ORIGIN)
    await commands.leave_channel("bob", pb.LeaveChannelRequest(channel_id=ch), ORIGIN)
    # The first answer was lost; the retry must get it, not NOT_A_MEMBER.
    again = await commands.send_message("bob", _send(ch, "k1", "bye soon"), ORIGIN)
    assert again.duplicate and again.message == first.message
    assert [s for s, _ in env.stream(ch)] == [1, 2, 3]


async def test_a_key_reused_for_a_different_message_is_already_exists(
    env: Env, commands: Commands
) -> None:
    ch = await _channel(commands)
    await commands.send_message("alice", _send(ch, "k1", "hello"), ORIGIN)
    published = len(env.bus.stored())
    with pytest.raises(AlreadyExists) as err:
        await commands.send_message("alice", _send(ch, "k1", "something else"), ORIGIN)
    assert (err.value.code, err.value.reason) == ("ALREADY_EXISTS", "IDEMPOTENCY_KEY_REUSED")
    with pytest.raises(AlreadyExists):
        await commands.create_channel(
            "alice",
            pb.CreateChannelRequest(
                name="other name", member_user_ids=["bob"], client_request_id="r1"
            ),
            ORIGIN,
        )
    assert len(env.bus.stored()) == published and env.texts(ch) == ["hello"]


async def test_a_channel_key_reused_with_another_visibility_is_already_exists(
    env: Env, commands: Commands
) -> None:
    """Issue 13, finding 4: this returned OK with the old (private) channel."""
    ch = await _channel(commands)  # private: visibility unspecified
    published = len(env.bus.stored())
    public = pb.CreateChannelRequest(
        name="general",
        member_user_ids=["bob"],
        client_request_id="r1",
        visibility=channel_pb2.CHANNEL_VISIBILITY_PUBLIC,
    )
    with pytest.raises(AlreadyExists) as err:
        await commands.create_channel("alice", public, ORIGIN)
    assert err.value.reason == "IDEMPOTENCY_KEY_REUSED"
    # Saying "private" explicitly is the same request as leaving it unspecified.
    public.visibility = channel_pb2.CHANNEL_VISIBILITY_PRIVATE
    assert (await commands.create_channel("alice", public, ORIGIN)).channel.channel_id == ch
    assert len(env.bus.stored()) == published


async def test_create_channel_adds_at_most_the_configured_number_of_members(env: Env) -> None:
    """Issue 13, finding 5: up to 1,000 users could be added without being asked."""
    commands = await env.commands()
    commands.max_initial_members = 3
    too_many = pb.CreateChannelRequest(name="crowd", member_user_ids=["b", "c", "d", "e"])
    with pytest.raises(InvalidArgument) as err:
        await commands.create_channel("alice", too_many, ORIGIN)
    assert [(v.field, v.rule_id) for v in err.value.violations] == [
        ("member_user_ids", "member_user_ids.max_initial")
    ]
    assert env.bus.stored() == []
    # The caller listing themselves does not count; three others are fine.
    ok = pb.CreateChannelRequest(name="crowd", member_user_ids=["alice", "b", "c", "d"])
    created = await commands.create_channel("alice", ok, ORIGIN)
    assert list(created.channel.member_user_ids) == ["alice", "b", "c", "d"]


async def test_a_failed_publish_is_published_first_by_the_next_command_in_order(
    env: Env, commands: Commands
) -> None:
    ch = await _channel(commands)
    env.bus.fail_publishes = 1
    with pytest.raises(Unavailable):
        await commands.send_message("alice", _send(ch, "m1", "one"), ORIGIN)
    [pending] = await commands.log.unpublished()
    assert (pending.channel_id, pending.seq, pending.published) == (ch, 2, False)
    assert env.texts(ch) == []  # logged, not in the stream

    await commands.send_message("alice", _send(ch, "m2", "two"), ORIGIN)
    assert env.stream(ch) == [
        (1, "channel_created"),
        (2, "message_created"),
        (3, "message_created"),
    ]
    assert env.texts(ch) == ["one", "two"]
    assert await commands.log.unpublished() == []

    # The client's retry of the failed send finds it logged (and now published).
    retry = await commands.send_message("alice", _send(ch, "m1", "one"), ORIGIN)
    assert retry.duplicate and retry.message.seq == 2 and env.texts(ch) == ["one", "two"]


async def test_a_retry_after_a_failed_publish_publishes_the_logged_event_once(
    env: Env, commands: Commands
) -> None:
    ch = await _channel(commands)
    env.bus.fail_publishes = 1
    with pytest.raises(Unavailable):
        await commands.send_message("alice", _send(ch, "m1", "one"), ORIGIN)
    retry = await commands.send_message("alice", _send(ch, "m1", "one"), ORIGIN)
    assert retry.duplicate and retry.message.seq == 2
    assert env.texts(ch) == ["one"] and await commands.log.unpublished() == []


async def test_republish_pending_repairs_every_channel_in_order_after_a_restart(env: Env) -> None:
    log, metadata = await env.stores()
    before = await env.commands(log, metadata)
    ch1 = await _channel(before, "r1")
    ch2 = await _channel(before, "r2")
    env.bus.fail_publishes = 3  # JetStream is down for a while
    for ch, key in ((ch1, "x1"), (ch2, "y1"), (ch1, "x2")):
        with pytest.raises(Unavailable):
            await before.send_message("alice", _send(ch, key, key), ORIGIN)
    # Only the first of ch1's pending events was attempted for x2 (the flush failed first).
    assert [(e.channel_id, e.seq) for e in await log.unpublished(channel_id=ch1)] == [(ch1, 2)]

    after = await env.commands(log, metadata)  # the process restarted
    assert await after.republish_pending() == 2
    assert env.texts(ch1) == ["x1"] and env.texts(ch2) == ["y1"]
    assert await log.unpublished() == [] and await after.republish_pending() == 0
    await after.send_message("alice", _send(ch1, "x2", "x2"), ORIGIN)
    assert [s for s, _ in env.stream(ch1)] == [1, 2, 3] and env.texts(ch1) == ["x1", "x2"]


async def test_a_second_writer_is_detected_and_the_next_seq_taken(env: Env) -> None:
    log, metadata = await env.stores()
    a = await env.commands(log, metadata)
    b = await env.commands(log, metadata)  # another process on the same log
    ch = await _channel(a)
    await a.send_message("alice", _send(ch, "a1"), ORIGIN)  # a caches seq 2
    await b.send_message("bob", _send(ch, "b1"), ORIGIN)  # b takes 3
    third = await a.send_message("alice", _send(ch, "a2"), ORIGIN)  # a's cache says 3: conflict

    assert third.message.seq == 4
    assert [s for s, _ in env.stream(ch)] == [1, 2, 3, 4]


async def test_a_second_writers_unpublished_entry_goes_out_before_the_next_send(
    env: Env,
) -> None:
    # ``a`` last published its own append (so it skips the pending read); ``b`` then
    # logs seq 3 but fails to publish it: ``a``'s append conflicts, publishes 3, takes 4.
    log, metadata = await env.stores()
    a = await env.commands(log, metadata)
    b = await env.commands(log, metadata)
    ch = await _channel(a)
    await a.send_message("alice", _send(ch, "a1", "a1"), ORIGIN)
    env.bus.fail_publishes = 1
    with pytest.raises(Unavailable):
        await b.send_message("bob", _send(ch, "b1", "b1"), ORIGIN)
    third = await a.send_message("alice", _send(ch, "a2", "a2"), ORIGIN)

    assert third.message.seq == 4
    assert [s for s, _ in env.stream(ch)] == [1, 2, 3, 4]
    assert env.texts(ch) == ["a1", "b1", "a2"] and await log.unpublished() == []


class _Log:
    """The real command log, with a hook run just before each append."""

    def __init__(
        self, real: CommandStore, before_append: Callable[[LogEntry], Awaitable[None]]
    ) -> None:
        self.real = real
        self.before_append = before_append

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def append(self, entry: LogEntry, message: MessageRecord | None = None) -> None:
        await self.before_append(entry)
        await self.real.append(entry, message)


async def test_a_concurrent_retry_that_logged_first_is_returned_as_a_duplicate(env: Env) -> None:
    log, metadata = await env.stores()
    other = await env.commands(log, metadata)
    ch = await _channel(other)
    raced: list[pb.SendMessageResponse] = []

    async def other_writer_first(entry: LogEntry) -> None:
        # The same send, through another process, lands between our key lookup and our append.
        if not raced:
            raced.append(await other.send_message("alice", _send(ch, "k1", "hello"), ORIGIN))

    racing = await env.commands(_Log(log, other_writer_first), metadata)  # type: ignore[arg-type]
    ours = await racing.send_message("alice", _send(ch, "k1", "hello"), ORIGIN)

    assert ours.duplicate and ours.message == raced[0].message
    assert [s for s, _ in env.stream(ch)] == [1, 2] and env.texts(ch) == ["hello"]


async def test_a_concurrent_retry_that_logged_first_but_did_not_publish_is_published(
    env: Env,
) -> None:
    log, metadata = await env.stores()
    other = await env.commands(log, metadata)
    ch = await _channel(other)
    raced: list[Exception] = []

    async def other_writer_first(entry: LogEntry) -> None:
        # The other process logs the same send, then its publish fails.
        if not raced:
            env.bus.fail_publishes = 1
            with pytest.raises(Unavailable) as err:
                await other.send_message("alice", _send(ch, "k1", "hello"), ORIGIN)
            raced.append(err.value)

    racing = await env.commands(_Log(log, other_writer_first), metadata)  # type: ignore[arg-type]
    ours = await racing.send_message("alice", _send(ch, "k1", "hello"), ORIGIN)

    assert raced and ours.duplicate and ours.message.seq == 2
    assert env.texts(ch) == ["hello"] and await log.unpublished() == []


async def test_writers_that_keep_conflicting_get_unavailable_and_publish_nothing(env: Env) -> None:
    log, metadata = await env.stores()
    ch = await _channel(await env.commands(log, metadata))

    async def conflict(entry: LogEntry) -> None:
        raise LogConflict("UNIQUE constraint failed: command_log.channel_id, command_log.seq")

    stuck = await env.commands(_Log(log, conflict), metadata)  # type: ignore[arg-type]
    with pytest.raises(Unavailable) as err:
        await stuck.send_message("alice", _send(ch, "k1"), ORIGIN)
    assert err.value.reason == "BACKEND_UNAVAILABLE"
    assert [s for s, _ in env.stream(ch)] == [1]


async def test_seqs_never_restart_below_what_the_stream_already_holds(env: Env) -> None:
    log, metadata = await env.stores()
    ch = await _channel(await env.commands(log, metadata))
    # The log was restored from a backup older than the stream: EVENTS already has seq 7.
    newer = new_event(ch, seq=7, origin_region=ORIGIN, actor="alice")
    newer.member_joined.user_id = "dave"
    await env.bus.publish_event(
        Subjects.channel_events(ch), newer.SerializeToString(), newer.event_id
    )

    restarted = await env.commands(log, metadata)
    sent = await restarted.send_message("alice", _send(ch, "k1"), ORIGIN)
    assert sent.message.seq == 8


async def test_typing_goes_over_core_nats_and_takes_no_seq(env: Env, commands: Commands) -> None:
    ch = await _channel(commands)
    await commands.set_typing("bob", pb.SetTypingRequest(channel_id=ch, typing=True), ORIGIN)
    [raw] = env.bus.published_on(Subjects.typing(ch))
    event = events_pb2.Event.FromString(raw)
    assert (event.seq, event.typing_changed.user_id, event.typing_changed.typing) == (
        0,
        "bob",
        True,
    )
    assert [s for s, _ in env.stream(ch)] == [1]


# -- admission and the write lease's fence (ADR-019) ---------------------------------


async def test_a_standby_refuses_with_retry_info_and_writes_nothing(env: Env) -> None:
    log, metadata = await env.stores()
    leader = await env.commands(log, metadata)
    ch = await _channel(leader)
    standby = await env.commands(log, metadata)
    standby.fence = lambda: False
    published = len(env.bus.stored())
    for call in (
        standby.send_message("alice", _send(ch, "s1"), ORIGIN),
        standby.mark_read("alice", pb.MarkReadRequest(channel_id=ch, seq=1), ORIGIN),
        standby.set_typing("alice", pb.SetTypingRequest(channel_id=ch, typing=True), ORIGIN),
    ):
        with pytest.raises(Unavailable) as refused:
            await call
        assert refused.value.retry_delay is not None
    assert len(env.bus.stored()) == published
    assert await log.last_seq(ch) == 1 and standby.shed == 3


async def test_a_leader_whose_lease_ran_out_mid_command_does_not_append(env: Env) -> None:
    log, metadata = await env.stores()
    commands = await env.commands(log, metadata)
    ch = await _channel(commands)
    held = [True]
    commands.fence = lambda: held[0]
    take_seq = commands._next_seq

    async def seq_then_paused(channel_id: str) -> int:
        seq = await take_seq(channel_id)
        held[0] = False  # admitted, then paused past its lease before the append
        return seq

    commands._next_seq = seq_then_paused  # type: ignore[method-assign]
    with pytest.raises(Unavailable, match="lost the write lease"):
        await commands.send_message("alice", _send(ch, "late"), ORIGIN)
    assert await log.last_seq(ch) == 1
    assert [s for s, _ in env.stream(ch)] == [1]


async def test_catching_up_and_overload_are_shed_and_a_takeover_forgets_cached_seqs(
    env: Env,
) -> None:
    log, metadata = await env.stores()
    a = await env.commands(log, metadata)
    b = await env.commands(log, metadata)
    ch = await _channel(a)
    await a.send_message("alice", _send(ch, "a1"), ORIGIN)  # a caches seq 2
    a.catching_up = True
    with pytest.raises(Unavailable, match="catching up"):
        await a.send_message("alice", _send(ch, "a2"), ORIGIN)
    a.catching_up = False
    a.max_inflight = 0
    with pytest.raises(Unavailable, match="overloaded"):
        await a.send_message("alice", _send(ch, "a2"), ORIGIN)
    a.max_inflight = 512
    await b.send_message("bob", _send(ch, "b1"), ORIGIN)  # b writes 3 while a is standby
    await a.take_over()
    sent = await a.send_message("alice", _send(ch, "a3"), ORIGIN)
    assert sent.message.seq == 4
    assert [s for s, _ in env.stream(ch)] == [1, 2, 3, 4]


async def test_a_flooding_user_is_refused_and_nothing_refused_is_stored(env: Env) -> None:
    log, metadata = await env.stores()
    clock = [0.0]
    limits = {
        "send": Limit(1.0, 5),
        "typing": Limit(1.0, 2),
        "create_channel": Limit(1.0, 2),
        "join": Limit(1.0, 1),
    }
    commands = Commands(
        bus=env.bus, events=env.bus, jetstream=env.bus, command_store=log, metadata=metadata,
        region=ORIGIN, publish_timeout=1, limiter=RateLimiter(limits, clock=lambda: clock[0]),
    )  # fmt: skip
    ch = await _channel(commands, "r1", members=("bob",))
    await _channel(commands, "r2")
    with pytest.raises(ResourceExhausted) as refused_create:
        await _channel(commands, "r3")
    results = await asyncio.gather(
        *(commands.send_message("alice", _send(ch, f"f{i}"), ORIGIN) for i in range(20)),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, ResourceExhausted)]
    assert len(refused) == 15 and all(r.reason == "RATE_LIMITED" for r in refused)
    assert all(r.retry_delay is not None and r.retry_delay > 0 for r in refused)
    # Another user's sends in the same channel are untouched by alice's flood.
    await commands.send_message("bob", _send(ch, "b1"), ORIGIN)
    # Edits and deletes share the message-write bucket; typing has its own.
    with pytest.raises(ResourceExhausted):
        await commands.delete_message(
            "alice", pb.DeleteMessageRequest(channel_id=ch, message_id="msg_x"), ORIGIN
        )
    for _ in range(2):
        await commands.set_typing("alice", pb.SetTypingRequest(channel_id=ch, typing=True), ORIGIN)
    with pytest.raises(ResourceExhausted):
        await commands.set_typing("alice", pb.SetTypingRequest(channel_id=ch, typing=True), ORIGIN)

    # Refused requests left nothing: 5 of alice's sends and bob's one, no third channel.
    assert len(env.texts(ch)) == 6
    assert await log.by_idempotency_key("create:alice:r3") is None
    assert refused_create.value.metadata == {"action": "create_channel"}
    # Once the bucket refilled, alice may send again.
    clock[0] += 1.0
    await commands.send_message("alice", _send(ch, "later"), ORIGIN)


async def test_joins_beyond_the_burst_are_rate_limited_per_user_and_store_nothing(
    env: Env,
) -> None:
    log, metadata = await env.stores()
    clock = [0.0]
    commands = Commands(
        bus=env.bus, events=env.bus, jetstream=env.bus, command_store=log, metadata=metadata,
        region=ORIGIN, publish_timeout=1,
        limiter=RateLimiter({"join": Limit(1.0, 2)}, clock=lambda: clock[0]),
    )  # fmt: skip
    public = []
    for i in range(4):
        created = await commands.create_channel(
            "alice",
            pb.CreateChannelRequest(
                name=f"open{i}",
                client_request_id=f"p{i}",
                visibility=channel_pb2.CHANNEL_VISIBILITY_PUBLIC,
            ),
            ORIGIN,
        )
        public.append(created.channel.channel_id)

    def join(user: str, channel_id: str) -> Awaitable[pb.JoinChannelResponse]:
        return commands.join_channel(user, pb.JoinChannelRequest(channel_id=channel_id), ORIGIN)

    await join("carol", public[0])
    await join("carol", public[1])
    for channel_id in public[2:]:
        with pytest.raises(ResourceExhausted) as refused:
            await join("carol", channel_id)
        assert refused.value.reason == "RATE_LIMITED"
        assert refused.value.metadata == {"action": "join"}
        # The status the client gets carries the wait as google.rpc.RetryInfo.
        details = parse_details(to_status(refused.value))
        assert details.reason == "RATE_LIMITED"
        assert details.retry_delay is not None and 0 < details.retry_delay <= 1.0
        # Refused before anything was written: carol is not a member, no event was published.
        assert not await metadata.is_member(channel_id, "carol")
        assert env.stream(channel_id) == [(1, "channel_created")]

    # Another user's joins, to the same channels, are untouched by carol's empty bucket.
    for channel_id in public[:2]:
        await join("dave", channel_id)
        assert await metadata.is_member(channel_id, "dave")

    # Once carol's bucket refilled (retry_delay later), her next join is served.
    clock[0] += details.retry_delay
    await join("carol", public[2])
    assert await metadata.is_member(public[2], "carol")
