"""The authorization matrix: every public RPC x every kind of caller -> the status it gets.

The rows come from the contract: every method of every service the edge routes
(``mesh.deploy.envoy.PUBLIC_PREFIXES``) is read from the proto descriptors, and
:data:`MATRIX` must name exactly those methods, so a new RPC without a row (or a
row for an RPC that is gone) fails :func:`test_the_matrix_covers_every_public_rpc`.

Each row runs against a fresh private channel of the ``dev`` mesh, through the
us-east edge, with raw gRPC calls built from the descriptors (the same path any
client takes). The callers (columns):

* ``member`` of the channel and author of its one message;
* ``non_member``: a valid token, never in the channel;
* ``former_member``: was in the channel, left;
* ``no_token``, ``forged_token`` (signed by another key), ``expired_token``;
* ``other_author``: a member acting on the member's message (edit/delete only).

Refusals run first; before the member's call, the channel must be exactly as
set up (refused calls stored nothing); the member's call runs last, since it
may change the channel (leave, delete).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, message, message_factory

from chatmesh.v1 import (
    command_service_pb2,
    notification_service_pb2,
    query_service_pb2,
)
from mesh.core.auth import KeyDirectory, mint
from mesh.core.errors import PermissionDenied
from mesh.deploy.envoy import PUBLIC_PREFIXES
from mesh.harness.supervisor import Mesh
from mesh.rpc.status import parse_details
from tests.helpers import Auth, eventually
from tests.services.client import User

pytestmark = pytest.mark.services

OK = grpc.StatusCode.OK
PD = grpc.StatusCode.PERMISSION_DENIED
EXISTS = grpc.StatusCode.ALREADY_EXISTS
UNAUTH = grpc.StatusCode.UNAUTHENTICATED

COLUMNS = (
    "non_member",
    "former_member",
    "no_token",
    "forged_token",
    "expired_token",
    "other_author",
    "member",  # last: its call may change the channel
)
TOKEN_REASONS = {"no_token": "TOKEN_MISSING", "forged_token": "TOKEN_INVALID",
                 "expired_token": "TOKEN_EXPIRED"}  # fmt: skip


@dataclass(frozen=True)
class Row:
    """What each caller gets from one RPC (None: the column does not apply)."""

    member: grpc.StatusCode
    non_member: grpc.StatusCode
    former_member: grpc.StatusCode
    other_author: grpc.StatusCode | None = None
    reason: str = "NOT_A_MEMBER"
    """ErrorInfo.reason of the non-member and former-member refusals."""

    def expected(self, column: str) -> grpc.StatusCode | None:
        if column in TOKEN_REASONS:
            return UNAUTH
        value: grpc.StatusCode | None = getattr(self, column)
        return value


MATRIX: dict[str, Row] = {
    # Anyone with a token may create a channel of their own.
    "chatmesh.v1.CommandService.CreateChannel": Row(OK, OK, OK),
    # A private channel cannot be joined; a member is already in.
    "chatmesh.v1.CommandService.JoinChannel": Row(EXISTS, PD, PD, reason="CHANNEL_PRIVATE"),
    "chatmesh.v1.CommandService.LeaveChannel": Row(OK, PD, PD),
    "chatmesh.v1.CommandService.SendMessage": Row(OK, PD, PD),
    "chatmesh.v1.CommandService.EditMessage": Row(OK, PD, PD, other_author=PD),
    "chatmesh.v1.CommandService.DeleteMessage": Row(OK, PD, PD, other_author=PD),
    "chatmesh.v1.CommandService.SetTyping": Row(OK, PD, PD),
    "chatmesh.v1.CommandService.MarkRead": Row(OK, PD, PD),
    "chatmesh.v1.QueryService.GetHistory": Row(OK, PD, PD),
    "chatmesh.v1.QueryService.GetChannel": Row(OK, PD, PD),
    # The caller's own list: OK for everyone, and the channel is listed for members only
    # (checked in the test).
    "chatmesh.v1.QueryService.ListChannels": Row(OK, OK, OK),
    # Presence of the channel's members; what a stranger sees is the presence rules'
    # business (issue 13, finding 5), the status is OK.
    "chatmesh.v1.QueryService.GetPresence": Row(OK, OK, OK),
    "chatmesh.v1.NotificationService.Subscribe": Row(OK, PD, PD),
}

_FILES = (command_service_pb2, query_service_pb2, notification_service_pb2)


def public_methods() -> dict[str, descriptor.MethodDescriptor]:
    """Every method of every service the edge routes, by full name."""
    prefixes = set(PUBLIC_PREFIXES.values())
    methods: dict[str, descriptor.MethodDescriptor] = {}
    for module in _FILES:
        for service in module.DESCRIPTOR.services_by_name.values():
            if f"/{service.full_name}/" in prefixes:
                for method in service.methods:
                    methods[method.full_name] = method
    return methods


def test_the_matrix_covers_every_public_rpc() -> None:
    methods = public_methods()
    # Every routed service was found in the descriptors (none was renamed away).
    assert {f"/{m.containing_service.full_name}/" for m in methods.values()} == set(
        PUBLIC_PREFIXES.values()
    )
    missing = sorted(set(methods) - set(MATRIX))
    stale = sorted(set(MATRIX) - set(methods))
    assert not missing, f"public RPCs without an authorization matrix row: {missing}"
    assert not stale, f"matrix rows for RPCs the contract no longer has: {stale}"


# -- the world each row runs in ----------------------------------------------------------


@dataclass
class World:
    channel_id: str
    message_id: str
    users: dict[str, str]
    """Column -> user id (for the token columns, whose name the token would carry)."""


def _request(method: descriptor.MethodDescriptor, world: World, column: str) -> message.Message:
    """A valid request of ``method`` aimed at the world's channel (and message)."""
    cls = message_factory.GetMessageClass(method.input_type)
    name = method.name
    ch, msg = world.channel_id, world.message_id
    user = world.users[column]
    build: dict[str, Callable[[], dict[str, Any]]] = {
        "CreateChannel": lambda: {"name": f"authz {column}", "client_request_id": f"az-{column}"},
        "JoinChannel": lambda: {"channel_id": ch},
        "LeaveChannel": lambda: {"channel_id": ch},
        "SendMessage": lambda: {
            "channel_id": ch,
            "text": f"by {column}",
            "client_msg_id": f"az-{column}-{ch[-6:]}",
        },
        "EditMessage": lambda: {"channel_id": ch, "message_id": msg, "text": f"edited by {column}"},
        "DeleteMessage": lambda: {"channel_id": ch, "message_id": msg},
        "SetTyping": lambda: {"channel_id": ch, "typing": True},
        "MarkRead": lambda: {"channel_id": ch, "seq": 1},
        "GetHistory": lambda: {"channel_id": ch},
        "GetChannel": lambda: {"channel_id": ch},
        "ListChannels": dict,
        "GetPresence": lambda: {"user_ids": sorted({world.users["member"], user})},
        "Subscribe": lambda: {"resume_from": {ch: 0}},
    }
    assert name in build, f"no request builder for {method.full_name}: add one with its row"
    return cls(**build[name]())


@dataclass
class Outcome:
    code: grpc.StatusCode
    reason: str
    response: message.Message | None


async def _call(
    channel: grpc.aio.Channel,
    method: descriptor.MethodDescriptor,
    request: message.Message,
    metadata: tuple[tuple[str, str], ...],
) -> Outcome:
    path = f"/{method.containing_service.full_name}/{method.name}"
    out_cls = message_factory.GetMessageClass(method.output_type)
    try:
        if method.server_streaming:
            call = channel.unary_stream(
                path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=out_cls.FromString,
            )(request, metadata=metadata)
            try:
                first = await asyncio.wait_for(call.read(), 30)
            finally:
                call.cancel()
            return Outcome(OK, "", first)
        response = await channel.unary_unary(
            path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=out_cls.FromString,
        )(request, metadata=metadata, timeout=30)
        return Outcome(OK, "", response)
    except grpc.aio.AioRpcError as err:
        details = next(
            (v for k, v in err.trailing_metadata() or () if k == "grpc-status-details-bin"), None
        )
        reason = parse_details(details if isinstance(details, bytes) else None).reason
        return Outcome(err.code(), reason, None)


@pytest.fixture(scope="module")
async def edge(dev_mesh: Mesh) -> AsyncIterator[grpc.aio.Channel]:
    channel = grpc.aio.insecure_channel(dev_mesh.endpoints["us-east"]["edge"]["grpc"])
    yield channel
    await channel.close()


@pytest.fixture(scope="module")
def foreign_keys() -> KeyDirectory:
    keys = KeyDirectory(Path(tempfile.mkdtemp()) / "keys")
    keys.ensure()
    return keys


async def _world(mesh: Mesh, auth: Auth, tag: str) -> tuple[World, User]:
    users = {
        "member": f"az-{tag}-mem",
        "other_author": f"az-{tag}-mem2",
        "former_member": f"az-{tag}-former",
        "non_member": f"az-{tag}-out",
        "no_token": f"az-{tag}-mem",
        "forged_token": f"az-{tag}-mem",
        "expired_token": f"az-{tag}-mem",
    }
    member = User(mesh, auth, users["member"], "us-east")
    former = User(mesh, auth, users["former_member"], "us-east")
    try:
        channel = await member.create_channel(
            f"authz {tag}", users["other_author"], users["former_member"]
        )
        sent = await member.send(channel, "original")
        await former.client.leave_channel(channel)

        # The query and notification side read the region's replicated metadata: wait
        # until it has the leave and the message.
        async def settled() -> bool:
            history = await member.history(channel)
            try:
                await former.history(channel)
            except PermissionDenied:
                return [m.text for m in history.messages] == ["original"]
            return False

        await eventually(settled, timeout=30, what=f"{tag}: the setup replicated")
    finally:
        await former.close()
    return World(channel, sent.message.message_id, users), member


def _metadata(
    auth: Auth, foreign: KeyDirectory, column: str, user: str
) -> tuple[tuple[str, str], ...]:
    if column == "no_token":
        return ()
    if column == "forged_token":
        token = mint(foreign, user)
    elif column == "expired_token":
        token = mint(auth.keys, user, ttl_seconds=-120)
    else:
        token = mint(auth.keys, user)
    return (("authorization", f"Bearer {token}"),)


@pytest.mark.parametrize("rpc", sorted(MATRIX))
async def test_authorization_matrix(
    rpc: str, dev_mesh: Mesh, auth: Auth, edge: grpc.aio.Channel, foreign_keys: KeyDirectory
) -> None:
    method = public_methods()[rpc]
    row = MATRIX[rpc]
    tag = method.name.lower()[:10]
    world, member = await _world(dev_mesh, auth, tag)
    try:
        got: dict[str, grpc.StatusCode] = {}
        for column in COLUMNS:
            expected = row.expected(column)
            if expected is None:
                continue
            if column == "member":
                # Nothing refused above left a trace: the channel is as set up.
                history = await member.history(world.channel_id)
                assert [(m.text, m.deleted) for m in history.messages] == [("original", False)]
                channel = (await member.client.get_channel(world.channel_id)).channel
                assert sorted(channel.member_user_ids) == sorted(
                    [world.users["member"], world.users["other_author"]]
                )
            outcome = await _call(
                edge,
                method,
                _request(method, world, column),
                _metadata(auth, foreign_keys, column, world.users[column]),
            )
            got[column] = outcome.code
            if column in TOKEN_REASONS:
                assert outcome.reason == TOKEN_REASONS[column], (rpc, column, outcome.reason)
            elif outcome.code == PD and column in ("non_member", "former_member"):
                assert outcome.reason == row.reason, (rpc, column, outcome.reason)
            elif outcome.code == PD and column == "other_author":
                assert outcome.reason == "NOT_THE_AUTHOR", (rpc, column, outcome.reason)
            if method.name == "ListChannels" and outcome.response is not None:
                listed = {
                    s.channel.channel_id
                    for s in outcome.response.channels  # type: ignore[attr-defined]
                }
                assert (world.channel_id in listed) == (column == "member"), (rpc, column)
        expected_row = {c: row.expected(c) for c in COLUMNS if row.expected(c) is not None}
        assert got == expected_row, rpc
    finally:
        await member.close()
