"""Bad input, bad tokens and trespassers get the right status and leave no trace (issue 4)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from chatmesh.v1 import (
    command_service_pb2 as cpb,
    notification_service_pb2 as npb,
    query_service_pb2 as qpb,
)
from mesh.core.auth import KeyDirectory, mint
from mesh.harness.supervisor import Mesh
from tests.helpers import Auth, eventually, status_details
from tests.services.client import User

pytestmark = pytest.mark.services


@pytest.fixture
async def trio(dev_mesh: Mesh, auth: Auth) -> AsyncIterator[tuple[User, User, str]]:
    alice = User(dev_mesh, auth, "err-alice", "us-east")
    carol = User(dev_mesh, auth, "err-carol", "eu")
    channel = await alice.create_channel("private", "err-bob")
    await alice.send(channel, "secret")
    yield alice, carol, channel
    await alice.close()
    await carol.close()


async def _code(call: object) -> tuple[grpc.StatusCode, str, list[tuple[str, str]], str]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        reason, fields = status_details(err)
        return err.code(), reason, fields, err.details() or ""
    raise AssertionError("the call succeeded")


async def _stream_code(stream_call: object) -> tuple[grpc.StatusCode, str]:
    try:
        async for _ in stream_call:  # type: ignore[attr-defined]
            pass
    except grpc.aio.AioRpcError as err:
        return err.code(), status_details(err)[0]
    raise AssertionError("the stream ended without an error")


async def test_non_members_are_denied_everywhere(trio: tuple[User, User, str]) -> None:
    alice, carol, channel = trio

    async def denied_in_eu() -> bool:  # once eu's replica knows the channel
        code, reason, _, _ = await _code(carol.history(channel))
        return (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_A_MEMBER")

    await eventually(denied_in_eu, what="PERMISSION_DENIED from eu")
    code, reason, _, _ = await _code(carol.send(channel, "let me in"))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_A_MEMBER")
    call = carol.notification.Subscribe(
        npb.SubscribeRequest(resume_from={channel: 0}), metadata=carol.md
    )
    assert await _stream_code(call) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_A_MEMBER")
    code, reason, _, _ = await _code(
        carol.command.JoinChannel(cpb.JoinChannelRequest(channel_id=channel), metadata=carol.md)
    )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "CHANNEL_PRIVATE")
    code, reason, _, _ = await _code(carol.history("ch_" + "0" * 26))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "CHANNEL_NOT_FOUND")
    history = await alice.history(channel)
    assert [m.text for m in history.messages] == ["secret"]


async def test_missing_forged_and_expired_tokens_are_unauthenticated(
    dev_mesh: Mesh, trio: tuple[User, User, str]
) -> None:
    alice, _, channel = trio
    request = qpb.GetHistoryRequest(channel_id=channel)
    other_keys = KeyDirectory(Path(tempfile.mkdtemp()) / "keys")
    other_keys.ensure()
    keys = KeyDirectory(dev_mesh.run_dir / "keys")
    cases = {
        "missing": ((), "TOKEN_MISSING"),
        "not bearer": ((("authorization", "Basic Zm9vOmJhcg=="),), "TOKEN_MISSING"),
        "forged": (
            (("authorization", f"Bearer {mint(other_keys, 'err-alice')}"),),
            "TOKEN_INVALID",
        ),
        "garbage": ((("authorization", "Bearer not.a.jwt"),), "TOKEN_INVALID"),
        "expired": (
            (("authorization", f"Bearer {mint(keys, 'err-alice', ttl_seconds=-120)}"),),
            "TOKEN_EXPIRED",
        ),
        "wrong audience": (
            (("authorization", f"Bearer {mint(keys, 'err-alice', audience='other')}"),),
            "TOKEN_INVALID",
        ),
    }
    for name, (metadata, reason) in cases.items():
        for call in (
            alice.query.GetHistory(request, metadata=metadata),
            alice.command.SendMessage(
                cpb.SendMessageRequest(channel_id=channel, text="x", client_msg_id=f"tok-{name}"),
                metadata=metadata,
            ),
        ):
            code, got_reason, _, _ = await _code(call)
            assert (code, got_reason) == (grpc.StatusCode.UNAUTHENTICATED, reason), name
        stream = alice.notification.Subscribe(npb.SubscribeRequest(), metadata=metadata)
        assert await _stream_code(stream) == (grpc.StatusCode.UNAUTHENTICATED, reason), name
    history = await alice.history(channel)
    assert [m.text for m in history.messages] == ["secret"]


async def test_every_validation_rule_answers_invalid_argument_naming_the_field(
    trio: tuple[User, User, str],
) -> None:
    alice, _, channel = trio
    md = alice.md
    c, q = alice.command, alice.query
    cases = [
        (
            c.SendMessage(
                cpb.SendMessageRequest(channel_id=channel, text="", client_msg_id="v1"), metadata=md
            ),
            "text",
            "string.min_len",
        ),
        (
            c.SendMessage(
                cpb.SendMessageRequest(channel_id=channel, text="x" * 4001, client_msg_id="v2"),
                metadata=md,
            ),
            "text",
            "string.max_len",
        ),
        (
            c.SendMessage(
                cpb.SendMessageRequest(channel_id=channel, text="   \n", client_msg_id="v3"),
                metadata=md,
            ),
            "text",
            "text.not_blank",
        ),
        (
            c.SendMessage(
                cpb.SendMessageRequest(channel_id="nope", text="hi", client_msg_id="v4"),
                metadata=md,
            ),
            "channel_id",
            "string.pattern",
        ),
        (
            c.SendMessage(
                cpb.SendMessageRequest(channel_id=channel, text="hi", client_msg_id=""), metadata=md
            ),
            "client_msg_id",
            "string.pattern",
        ),
        (
            c.CreateChannel(cpb.CreateChannelRequest(name="", member_user_ids=["x"]), metadata=md),
            "name",
            "string.min_len",
        ),
        (
            c.CreateChannel(
                cpb.CreateChannelRequest(name="n", member_user_ids=["a", "a"]), metadata=md
            ),
            "member_user_ids",
            "repeated.unique",
        ),
        (
            c.CreateChannel(
                cpb.CreateChannelRequest(name="n", member_user_ids=["bad.id"]), metadata=md
            ),
            "member_user_ids[0]",
            "string.pattern",
        ),
        (
            c.MarkRead(cpb.MarkReadRequest(channel_id=channel, seq=-1), metadata=md),
            "seq",
            "int64.gte",
        ),
        (
            c.EditMessage(
                cpb.EditMessageRequest(channel_id=channel, message_id="m", text="t"), metadata=md
            ),
            "message_id",
            "string.pattern",
        ),
        (
            q.GetHistory(qpb.GetHistoryRequest(channel_id=channel, limit=0), metadata=md),
            "limit",
            "int32.gte_lte",
        ),
        (
            q.GetHistory(qpb.GetHistoryRequest(channel_id=channel, limit=201), metadata=md),
            "limit",
            "int32.gte_lte",
        ),
        (
            q.GetHistory(
                qpb.GetHistoryRequest(channel_id=channel, before_seq=5, after_seq=4), metadata=md
            ),
            "",
            "history.bounds_order",
        ),
        (
            q.GetPresence(qpb.GetPresenceRequest(user_ids=[]), metadata=md),
            "user_ids",
            "repeated.min_items",
        ),
    ]
    for call, field, rule in cases:
        code, reason, fields, message = await _code(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and reason == "INVALID_FIELD", (field, rule)
        assert (field, rule) in fields, (field, rule, fields)
        assert rule in message and (field in message if field else True)
    stream = alice.notification.Subscribe(
        npb.SubscribeRequest(resume_from={"not-a-channel": 0}), metadata=md
    )
    assert await _stream_code(stream) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    history = await alice.history(channel)
    assert [m.text for m in history.messages] == ["secret"], "rejected input left no trace"


async def test_edit_rules(trio: tuple[User, User, str], dev_mesh: Mesh, auth: Auth) -> None:
    alice, _, channel = trio
    bob = User(dev_mesh, auth, "err-bob", "eu")
    try:
        msg = (await alice.send(channel, "mine")).message
        code, reason, _, _ = await _code(
            bob.command.EditMessage(
                cpb.EditMessageRequest(channel_id=channel, message_id=msg.message_id, text="yours"),
                metadata=bob.md,
            )
        )
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_THE_AUTHOR")
        await alice.command.DeleteMessage(
            cpb.DeleteMessageRequest(channel_id=channel, message_id=msg.message_id),
            metadata=alice.md,
        )
        await alice.command.DeleteMessage(
            cpb.DeleteMessageRequest(channel_id=channel, message_id=msg.message_id),
            metadata=alice.md,
        )
        code, reason, _, _ = await _code(
            alice.command.EditMessage(
                cpb.EditMessageRequest(channel_id=channel, message_id=msg.message_id, text="again"),
                metadata=alice.md,
            )
        )
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "MESSAGE_DELETED")
        code, reason, _, _ = await _code(
            alice.command.EditMessage(
                cpb.EditMessageRequest(channel_id=channel, message_id="msg_" + "0" * 26, text="x"),
                metadata=alice.md,
            )
        )
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "MESSAGE_NOT_FOUND")
    finally:
        await bob.close()
