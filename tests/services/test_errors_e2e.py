"""Bad input, bad tokens and trespassers get the right status and leave no trace (issue 4).

Calls enter through the region's edge with :class:`mesh.client.ChatClient`, so each
failure is seen as applications see it: the typed error the status maps back to.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatmesh.v1 import command_service_pb2 as cpb, query_service_pb2 as qpb
from mesh.client import Subscription
from mesh.core.auth import KeyDirectory, mint
from mesh.core.errors import (
    ChatmeshError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from mesh.harness.supervisor import Mesh
from tests.helpers import Auth, eventually
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


async def _code(call: object) -> tuple[type[ChatmeshError], str, list[tuple[str, str]], str]:
    """The error class, reason, (field, rule) violations and message a call fails with."""
    try:
        await call  # type: ignore[misc]
    except ChatmeshError as err:
        fields = [(v.field, v.rule_id) for v in getattr(err, "violations", [])]
        assert err.code == type(err).code  # the class is the status code
        return type(err), err.reason, fields, err.message
    raise AssertionError("the call succeeded")


async def _stream_code(subscription: Subscription) -> tuple[type[ChatmeshError], str]:
    try:
        async for _ in subscription:
            pass
    except ChatmeshError as err:
        return type(err), err.reason
    raise AssertionError("the stream ended without an error")


async def test_non_members_are_denied_everywhere(trio: tuple[User, User, str]) -> None:
    alice, carol, channel = trio

    async def denied_in_eu() -> bool:  # once eu's replica knows the channel
        code, reason, _, _ = await _code(carol.history(channel))
        return (code, reason) == (PermissionDenied, "NOT_A_MEMBER")

    await eventually(denied_in_eu, what="PERMISSION_DENIED from eu")
    code, reason, _, _ = await _code(carol.send(channel, "let me in"))
    assert (code, reason) == (PermissionDenied, "NOT_A_MEMBER")
    subscription = carol.client.subscribe({channel: 0})
    assert await _stream_code(subscription) == (PermissionDenied, "NOT_A_MEMBER")
    code, reason, _, _ = await _code(carol.client.join_channel(channel))
    assert (code, reason) == (PermissionDenied, "CHANNEL_PRIVATE")
    code, reason, _, _ = await _code(carol.history("ch_" + "0" * 26))
    assert (code, reason) == (NotFound, "CHANNEL_NOT_FOUND")
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
    anonymous = alice.client.with_token(None)  # the metadata below is all it sends
    for name, (metadata, reason) in cases.items():
        for call in (
            anonymous.get_history(request, metadata=metadata),
            anonymous.send_message(
                cpb.SendMessageRequest(channel_id=channel, text="x", client_msg_id=f"tok-{name}"),
                metadata=metadata,
            ),
        ):
            code, got_reason, _, _ = await _code(call)
            assert (code, got_reason) == (Unauthenticated, reason), name
        stream = anonymous.subscribe(metadata=metadata)
        assert await _stream_code(stream) == (Unauthenticated, reason), name
    history = await alice.history(channel)
    assert [m.text for m in history.messages] == ["secret"]


async def test_every_validation_rule_answers_invalid_argument_naming_the_field(
    trio: tuple[User, User, str],
) -> None:
    alice, _, channel = trio
    c = alice.client
    cases = [
        (
            c.send_message(cpb.SendMessageRequest(channel_id=channel, text="", client_msg_id="v1")),
            "text",
            "string.min_len",
        ),
        (
            c.send_message(
                cpb.SendMessageRequest(channel_id=channel, text="x" * 4001, client_msg_id="v2")
            ),
            "text",
            "string.max_len",
        ),
        (
            c.send_message(
                cpb.SendMessageRequest(channel_id=channel, text="   \n", client_msg_id="v3")
            ),
            "text",
            "text.not_blank",
        ),
        (
            c.send_message(
                cpb.SendMessageRequest(channel_id="nope", text="hi", client_msg_id="v4")
            ),
            "channel_id",
            "string.pattern",
        ),
        (
            # An explicit empty key: a request message's empty key would be filled in.
            c.send_message(channel, "hi", client_msg_id=""),
            "client_msg_id",
            "string.pattern",
        ),
        (
            c.create_channel(cpb.CreateChannelRequest(name="", member_user_ids=["x"])),
            "name",
            "string.min_len",
        ),
        (
            c.create_channel(cpb.CreateChannelRequest(name="n", member_user_ids=["a", "a"])),
            "member_user_ids",
            "repeated.unique",
        ),
        (
            c.create_channel(cpb.CreateChannelRequest(name="n", member_user_ids=["bad.id"])),
            "member_user_ids[0]",
            "string.pattern",
        ),
        (
            c.mark_read(cpb.MarkReadRequest(channel_id=channel, seq=-1)),
            "seq",
            "int64.gte",
        ),
        (
            c.edit_message(cpb.EditMessageRequest(channel_id=channel, message_id="m", text="t")),
            "message_id",
            "string.pattern",
        ),
        (
            c.get_history(qpb.GetHistoryRequest(channel_id=channel, limit=0)),
            "limit",
            "int32.gte_lte",
        ),
        (
            c.get_history(qpb.GetHistoryRequest(channel_id=channel, limit=201)),
            "limit",
            "int32.gte_lte",
        ),
        (
            c.get_history(qpb.GetHistoryRequest(channel_id=channel, before_seq=5, after_seq=4)),
            "",
            "history.bounds_order",
        ),
        (
            c.get_presence(qpb.GetPresenceRequest(user_ids=[])),
            "user_ids",
            "repeated.min_items",
        ),
    ]
    for call, field, rule in cases:
        code, reason, fields, message = await _code(call)
        assert code is InvalidArgument and reason == "INVALID_FIELD", (field, rule)
        assert (field, rule) in fields, (field, rule, fields)
        assert rule in message and (field in message if field else True)
    stream = alice.client.subscribe({"not-a-channel": 0})
    assert await _stream_code(stream) == (InvalidArgument, "INVALID_FIELD")
    history = await alice.history(channel)
    assert [m.text for m in history.messages] == ["secret"], "rejected input left no trace"


async def test_edit_rules(trio: tuple[User, User, str], dev_mesh: Mesh, auth: Auth) -> None:
    alice, _, channel = trio
    bob = User(dev_mesh, auth, "err-bob", "eu")
    try:
        msg = (await alice.send(channel, "mine")).message
        code, reason, _, _ = await _code(bob.client.edit_message(channel, msg.message_id, "yours"))
        assert (code, reason) == (PermissionDenied, "NOT_THE_AUTHOR")
        await alice.client.delete_message(channel, msg.message_id)
        await alice.client.delete_message(channel, msg.message_id)  # deleting twice succeeds
        code, reason, _, _ = await _code(
            alice.client.edit_message(channel, msg.message_id, "again")
        )
        assert (code, reason) == (FailedPrecondition, "MESSAGE_DELETED")
        code, reason, _, _ = await _code(alice.client.edit_message(channel, "msg_" + "0" * 26, "x"))
        assert (code, reason) == (NotFound, "MESSAGE_NOT_FOUND")
    finally:
        await bob.close()
