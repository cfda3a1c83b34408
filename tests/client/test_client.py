"""ChatClient against a scripted grpc.aio server: retries, keys, auth, TLS, resume."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from chatmesh.v1 import command_service_pb2 as cpb
from mesh.client import ChatClient, RetryPolicy
from mesh.core.errors import (
    DeadlineExceeded,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from tests.client.conftest import (
    HANG,
    Connection,
    Server,
    event,
    heartbeat,
    replay_complete,
)

Serve = Callable[..., Awaitable[Server]]
FAST = RetryPolicy(initial_backoff=0.001, max_backoff=0.01, budget=20, attempt_timeout=5)
CH = "ch_" + "a" * 26


async def test_send_is_retried_with_one_idempotency_key(serve: Serve) -> None:
    server = await serve()
    server.script.failures = [
        Unavailable("BACKEND_UNAVAILABLE", "store did not answer"),
        Unavailable("SHUTTING_DOWN", "restarting"),
    ]
    async with ChatClient(server.target, token="tok", retry=FAST) as client:
        sent = await client.send_message(CH, "hello")
    assert sent.message.text == "hello"
    calls = server.script.of("SendMessage")
    assert len(calls) == 3
    keys = {c.request.client_msg_id for c in calls}
    assert len(keys) == 1 and len(keys.pop()) == 32
    assert all(c.metadata["authorization"] == "Bearer tok" for c in calls)


async def test_each_logical_send_gets_its_own_key_and_a_given_key_is_kept(serve: Serve) -> None:
    server = await serve()
    async with ChatClient(server.target, retry=FAST) as client:
        await client.send_message(CH, "one")
        await client.send_message(CH, "two")
        await client.send_message(CH, "three", client_msg_id="mine-1")
        await client.send_message(cpb.SendMessageRequest(channel_id=CH, text="four"))
        await client.send_message(
            cpb.SendMessageRequest(channel_id=CH, text="five", client_msg_id="mine-2")
        )
        await client.create_channel("room", ["bob"])
    keys = [c.request.client_msg_id for c in server.script.of("SendMessage")]
    assert keys[0] != keys[1] and keys[2] == "mine-1" and keys[4] == "mine-2"
    assert keys[3] and keys[3] not in (keys[0], keys[1])
    assert server.script.of("CreateChannel")[0].request.client_request_id


async def test_resource_exhausted_is_retried_only_with_retry_info(serve: Serve) -> None:
    server = await serve()
    server.script.failures = [ResourceExhausted("RATE_LIMITED", "later", retry_delay=0.01)]
    async with ChatClient(server.target, retry=FAST) as client:
        await client.get_history(CH)
        assert len(server.script.of("GetHistory")) == 2
        server.script.failures = [ResourceExhausted("RATE_LIMITED", "no advice")]
        with pytest.raises(ResourceExhausted) as info:
            await client.get_history(CH)
    assert info.value.reason == "RATE_LIMITED" and info.value.retry_delay is None
    assert len(server.script.of("GetHistory")) == 3


async def test_final_errors_are_raised_typed_at_once(serve: Serve) -> None:
    server = await serve()
    server.script.failures = [
        PermissionDenied("NOT_A_MEMBER", "you are not in ch_x", channel_id=CH, user_id="carol")
    ]
    async with ChatClient(server.target, retry=FAST) as client:
        with pytest.raises(PermissionDenied) as info:
            await client.send_message(CH, "let me in")
    err = info.value
    assert (err.code, err.reason, err.message) == (
        "PERMISSION_DENIED",
        "NOT_A_MEMBER",
        "you are not in ch_x",
    )
    assert err.metadata == {"channel_id": CH, "user_id": "carol"}
    assert len(server.script.of("SendMessage")) == 1


async def test_attempt_timeout_is_retried_for_keyed_commands_only(serve: Serve) -> None:
    server = await serve()
    policy = RetryPolicy(initial_backoff=0.001, budget=20, attempt_timeout=0.3)
    async with ChatClient(server.target, retry=policy) as client:
        server.script.failures = [HANG]
        await client.send_message(CH, "slow first time")
        sends = server.script.of("SendMessage")
        assert len(sends) == 2 and sends[0].request.client_msg_id == sends[1].request.client_msg_id
        server.script.failures = [HANG]
        with pytest.raises(DeadlineExceeded):
            await client.join_channel(CH)  # no key: it may have taken effect
        assert len(server.script.of("JoinChannel")) == 1


async def test_retries_end_at_max_attempts_with_the_last_error(serve: Serve) -> None:
    server = await serve()
    server.script.failures = [Unavailable("BACKEND_UNAVAILABLE", f"try {i}") for i in range(5)]
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.001, budget=20)
    async with ChatClient(server.target, retry=policy) as client:
        with pytest.raises(Unavailable) as info:
            await client.send_message(CH, "x")
    assert info.value.message == "try 2" and len(server.script.of("SendMessage")) == 3


async def test_token_provider_is_asked_for_every_attempt(serve: Serve) -> None:
    server = await serve()
    tokens = iter(["first", "second", "third"])
    server.script.failures = [Unavailable("BACKEND_UNAVAILABLE", "x")]

    async def provider() -> str:
        return next(tokens)

    async with ChatClient(server.target, token=provider, retry=FAST) as client:
        await client.get_history(CH)
        other = client.with_token(lambda: "someone-else")
        await other.get_history(CH)
        await other.close()  # does not close the shared connection
        await client.get_history(CH)
    assert [c.metadata["authorization"] for c in server.script.of("GetHistory")] == [
        "Bearer first",
        "Bearer second",
        "Bearer someone-else",
        "Bearer third",
    ]


async def test_no_token_sends_no_authorization_and_extra_metadata_goes_through(
    serve: Serve,
) -> None:
    server = await serve()
    async with ChatClient(server.target, retry=FAST) as client:
        await client.get_history(CH, metadata=(("authorization", "Basic Zm9v"), ("x-a", "1")))
    [call] = server.script.of("GetHistory")
    assert call.metadata["authorization"] == "Basic Zm9v" and call.metadata["x-a"] == "1"


async def test_get_history_sends_only_the_bounds_given(serve: Serve) -> None:
    server = await serve()
    async with ChatClient(server.target, retry=FAST) as client:
        await client.get_history(CH, after_seq=0, limit=5)
    [call] = server.script.of("GetHistory")
    assert call.request.HasField("after_seq") and call.request.after_seq == 0
    assert not call.request.HasField("before_seq") and call.request.limit == 5


async def test_tls_with_the_edge_ca_file(serve: Serve, tls: Any) -> None:
    server = await serve(secure=True)
    edge = {"grpc": server.target, "tls": True, "ca_file": str(tls.ca_file), "http": "x"}
    async with ChatClient.from_edge(edge, token="tok", retry=FAST) as client:
        assert (await client.get_history(CH)).last_seq == 42
    # The system roots do not know the test CA; a plaintext client cannot talk TLS.
    for untrusting in (
        ChatClient(server.target, tls=True, retry=RetryPolicy.none()),
        ChatClient(server.target, retry=RetryPolicy.none()),
    ):
        async with untrusting:
            with pytest.raises(Unavailable):
                await untrusting.get_history(CH)
    assert len(server.script.of("GetHistory")) == 1


# -- subscriptions -------------------------------------------------------------------------


async def _seqs(subscription: Any, count: int) -> list[int]:
    seqs: list[int] = []
    async for ev in subscription:
        seqs.append(ev.seq)
        if len(seqs) == count:
            break
    return seqs


async def test_subscription_resumes_after_unavailable_without_duplicates(serve: Serve) -> None:
    server = await serve()
    other = "ch_" + "b" * 26
    server.script.connections = [
        Connection(
            [replay_complete(), event(CH, 1), event(CH, 2)], Unavailable("SHUTTING_DOWN", "bye")
        ),
        Connection([event(CH, 2), event(CH, 3), replay_complete(1), event(CH, 4)], HANG),
    ]
    async with ChatClient(server.target, token="tok", stream_retry=FAST) as client:
        subscription = client.subscribe({other: 5})
        assert await _seqs(subscription, 4) == [1, 2, 3, 4]
        await subscription.close()
    requests = [dict(c.request.resume_from) for c in server.script.of("Subscribe")]
    assert requests == [{other: 5}, {other: 5, CH: 2}]
    assert subscription.reconnects == 1 and subscription.duplicates == 1
    assert isinstance(subscription.last_error, Unavailable)
    assert subscription.last_error.reason == "SHUTTING_DOWN"


async def test_slow_consumer_cut_reconnects_and_control_items_are_visible(serve: Serve) -> None:
    server = await serve()
    server.script.connections = [
        Connection([replay_complete(), event(CH, 1)], ResourceExhausted("SLOW_CONSUMER", "slow")),
        Connection([replay_complete(0), heartbeat(60_000), event(CH, 2)], HANG),
    ]
    async with ChatClient(server.target, stream_retry=FAST) as client:
        subscription = client.subscribe()
        kinds = []
        async for item in subscription.responses():
            kinds.append(item.WhichOneof("kind"))
            if item.WhichOneof("kind") == "event" and item.event.seq == 2:
                break
    assert kinds == ["replay_complete", "event", "replay_complete", "heartbeat", "event"]
    assert dict(server.script.of("Subscribe")[1].request.resume_from) == {CH: 1}


async def test_subscription_raises_final_errors_typed(serve: Serve) -> None:
    server = await serve()
    server.script.connections = [Connection([], PermissionDenied("NOT_A_MEMBER", "not yours"))]
    async with ChatClient(server.target, stream_retry=FAST) as client:
        with pytest.raises(PermissionDenied) as info:
            await _seqs(client.subscribe({CH: 0}), 1)
    assert info.value.reason == "NOT_A_MEMBER" and len(server.script.of("Subscribe")) == 1


async def test_without_reconnect_the_first_ending_is_final(serve: Serve) -> None:
    server = await serve()
    server.script.connections = [Connection([event(CH, 1)], Unavailable("SHUTTING_DOWN", "bye"))]
    async with ChatClient(server.target, stream_retry=FAST) as client:
        subscription = client.subscribe(reconnect=False)
        seen = []
        with pytest.raises(Unavailable):
            async for ev in subscription:
                seen.append(ev.seq)
    assert seen == [1] and subscription.reconnects == 0


async def test_reconnects_end_when_the_budget_is_spent(serve: Serve) -> None:
    server = await serve()
    server.script.connections = [
        Connection([], Unavailable("BACKEND_UNAVAILABLE", f"down {i}")) for i in range(3)
    ]
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.001, budget=20)
    async with ChatClient(server.target, stream_retry=policy) as client:
        subscription = client.subscribe()
        with pytest.raises(Unavailable) as info:
            await _seqs(subscription, 1)
    assert info.value.message == "down 2" and subscription.reconnects == 2


async def test_a_stream_silent_past_its_heartbeat_timeout_is_reconnected(serve: Serve) -> None:
    server = await serve()
    server.script.connections = [
        Connection([replay_complete(), event(CH, 1), heartbeat(timeout_ms=200)], HANG),
        Connection([replay_complete(), event(CH, 2)], HANG),
    ]
    async with ChatClient(server.target, stream_retry=FAST) as client:
        subscription = client.subscribe()
        assert await _seqs(subscription, 2) == [1, 2]
    assert subscription.reconnects == 1
    assert isinstance(subscription.last_error, Unavailable)
    assert "presumed dead" in subscription.last_error.message
    assert dict(server.script.of("Subscribe")[1].request.resume_from) == {CH: 1}


async def test_close_ends_iteration_from_another_task(serve: Serve) -> None:
    server = await serve()
    server.script.connections = [Connection([replay_complete(), event(CH, 1)], HANG)]
    async with ChatClient(server.target, stream_retry=FAST) as client:
        subscription = client.subscribe()
        got: list[int] = []
        first = asyncio.Event()

        async def reader() -> None:
            async for ev in subscription:
                got.append(ev.seq)
                first.set()

        task = asyncio.create_task(reader())
        await first.wait()
        await subscription.close()
        await asyncio.wait_for(task, 10)  # ends cleanly, no exception
    assert got == [1] and subscription.closed()


async def test_an_event_beyond_a_gap_is_not_yielded_the_stream_resumes_before_it(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve()
    server.script.connections = [
        Connection([event(CH, 1), event(CH, 4)], HANG),
        Connection([replay_complete(), event(CH, 2), event(CH, 3), event(CH, 4)], HANG),
    ]
    async with ChatClient(server.target, stream_retry=FAST) as client:
        subscription = client.subscribe({CH: 0})
        with caplog.at_level(logging.WARNING, logger="mesh.client"):
            assert await _seqs(subscription, 4) == [1, 2, 3, 4]
        await subscription.close()
    assert subscription.gaps == 1 and subscription.gap_waits == 1
    assert dict(server.script.of("Subscribe")[1].request.resume_from) == {CH: 1}
    assert any("instead of skipping" in r.getMessage() for r in caplog.records)


async def test_a_stream_gap_status_waits_for_history_then_resumes_from_the_last_seq(
    serve: Serve,
) -> None:
    server = await serve()  # its GetHistory says the region holds the channel up to 42
    gap = Unavailable("STREAM_GAP", "2..3 not here yet", channel_id=CH, last_delivered_seq="1",
                      first_missing_seq="2", last_missing_seq="3")  # fmt: skip
    server.script.connections = [
        Connection([replay_complete(), event(CH, 1)], gap),
        Connection([event(CH, 2), event(CH, 3), replay_complete(), event(CH, 4)], HANG),
    ]
    async with ChatClient(server.target, stream_retry=FAST) as client:
        subscription = client.subscribe({CH: 0})
        assert await _seqs(subscription, 4) == [1, 2, 3, 4]
        await subscription.close()
    [asked] = server.script.of("GetHistory")
    assert asked.request.channel_id == CH and asked.request.after_seq == 1
    assert dict(server.script.of("Subscribe")[1].request.resume_from) == {CH: 1}
    assert isinstance(subscription.last_error, Unavailable)
    assert subscription.last_error.reason == "STREAM_GAP"
