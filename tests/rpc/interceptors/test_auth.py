"""Authenticator: every call needs a valid bearer token; the identity reaches the handler."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

from chatmesh.v1 import notification_service_pb2 as npb, query_service_pb2 as qpb
from mesh.core.auth import MAX_TOKEN_LIFETIME, KeyDirectory, TokenVerifier, mint
from mesh.rpc.interceptors import Authenticator, ErrorMapper
from mesh.rpc.interceptors.auth import current_user
from mesh.rpc.status import from_rpc_error

CH = "ch_" + "a" * 26


async def test_valid_token_passes_identity_to_the_handler(
    serve: Any, keys: KeyDirectory, verifier: TokenVerifier
) -> None:
    h = await serve([ErrorMapper(), Authenticator(verifier)])
    seen: list[str] = []

    async def handler(request: Any, context: Any) -> qpb.GetHistoryResponse:
        seen.append(current_user())
        return qpb.GetHistoryResponse()

    h.script.unary = handler
    await h.query.GetHistory(
        qpb.GetHistoryRequest(channel_id=CH),
        metadata=(("authorization", f"Bearer {mint(keys, 'alice')}"),),
    )
    assert seen == ["alice"]


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "TOKEN_MISSING"),
        ((("authorization", "Token abc"),), "TOKEN_MISSING"),
        ((("authorization", "Bearer x.y.z"),), "TOKEN_INVALID"),
    ],
)
async def test_bad_tokens_never_reach_the_handler(
    serve: Any, verifier: TokenVerifier, metadata: tuple[tuple[str, str], ...], reason: str
) -> None:
    h = await serve([ErrorMapper(), Authenticator(verifier)])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.query.GetHistory(qpb.GetHistoryRequest(channel_id=CH), metadata=metadata)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert from_rpc_error(info.value).reason == reason
    assert h.script.seen == []
    stream = h.notification.Subscribe(npb.SubscribeRequest(), metadata=metadata)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stream:
            pass
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_expired_token(serve: Any, keys: KeyDirectory, verifier: TokenVerifier) -> None:
    h = await serve([ErrorMapper(), Authenticator(verifier)])
    token = mint(keys, "alice", ttl_seconds=-120)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.query.GetHistory(
            qpb.GetHistoryRequest(channel_id=CH), metadata=(("authorization", f"Bearer {token}"),)
        )
    assert from_rpc_error(info.value).reason == "TOKEN_EXPIRED"


async def test_public_prefixes_skip_authentication(serve: Any, verifier: TokenVerifier) -> None:
    h = await serve(
        [ErrorMapper(), Authenticator(verifier, public_prefixes=("/chatmesh.v1.QueryService/",))]
    )
    resp = await h.query.GetHistory(qpb.GetHistoryRequest(channel_id=CH))
    assert resp.last_seq == 7


async def test_two_authorization_headers_are_refused_even_if_both_are_valid(
    serve: Any, keys: KeyDirectory, verifier: TokenVerifier
) -> None:
    """Issue 13: the edge checked the first and forwarded the last; a service called
    directly must not pick one either."""
    h = await serve([ErrorMapper(), Authenticator(verifier)])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.query.GetHistory(
            qpb.GetHistoryRequest(channel_id=CH),
            metadata=(
                ("authorization", f"Bearer {mint(keys, 'amy')}"),
                ("authorization", f"Bearer {mint(keys, 'bob')}"),
            ),
        )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert from_rpc_error(info.value).reason == "TOKEN_INVALID"
    assert "exactly one" in (info.value.details() or "")
    assert h.script.seen == []


async def test_tokens_living_longer_than_the_maximum_are_refused(
    serve: Any, keys: KeyDirectory, verifier: TokenVerifier
) -> None:
    h = await serve([ErrorMapper(), Authenticator(verifier)])

    async def call(token: str) -> Any:
        return await h.query.GetHistory(
            qpb.GetHistoryRequest(channel_id=CH), metadata=(("authorization", f"Bearer {token}"),)
        )

    # A year-long token, valid in every other respect.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(mint(keys, "alice", ttl_seconds=365 * 24 * 3600))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert from_rpc_error(info.value).reason == "TOKEN_INVALID"
    assert "lifetime" in (info.value.details() or "")
    # Just over the bound, issued an hour ago (so exp is not the point): refused too.
    with pytest.raises(grpc.aio.AioRpcError):
        await call(mint(keys, "alice", ttl_seconds=MAX_TOKEN_LIFETIME + 60, now=time.time() - 3600))
    assert h.script.seen == []
    # At the bound: accepted.
    assert (await call(mint(keys, "alice", ttl_seconds=MAX_TOKEN_LIFETIME))).last_seq == 7
