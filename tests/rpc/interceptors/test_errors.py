"""ErrorMapper: domain errors become statuses with details; internal errors are masked and logged."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest

from chatmesh.v1 import notification_service_pb2 as npb, query_service_pb2 as qpb
from mesh.core.errors import NotFound, PermissionDenied, Unavailable
from mesh.rpc.interceptors import ErrorMapper
from mesh.rpc.status import from_rpc_error

REQ = qpb.GetHistoryRequest(channel_id="ch_" + "a" * 26)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (
            NotFound("CHANNEL_NOT_FOUND", "no such channel", channel_id="ch_x"),
            grpc.StatusCode.NOT_FOUND,
        ),
        (PermissionDenied("NOT_A_MEMBER", "not yours"), grpc.StatusCode.PERMISSION_DENIED),
        (Unavailable("BACKEND_UNAVAILABLE", "try again"), grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_domain_errors_map_to_their_status(
    serve: Any, error: Exception, code: grpc.StatusCode
) -> None:
    h = await serve([ErrorMapper()])

    async def fail(request: Any, context: Any) -> Any:
        raise error

    h.script.unary = fail
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.query.GetHistory(REQ)
    assert info.value.code() == code
    assert info.value.details() == str(error)
    assert from_rpc_error(info.value).reason == error.reason  # type: ignore[attr-defined]


async def test_internal_errors_are_masked_and_logged_with_the_same_id(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    h = await serve([ErrorMapper()])

    async def boom(request: Any, context: Any) -> Any:
        raise KeyError("secret internal detail")

    h.script.unary = boom
    with (
        caplog.at_level(logging.ERROR, logger="mesh.rpc.status"),
        pytest.raises(grpc.aio.AioRpcError) as info,
    ):
        await h.query.GetHistory(REQ)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    details = info.value.details() or ""
    assert "secret" not in details and details.startswith("internal error (id=")
    error_id = details.split("id=")[1].rstrip(")")
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)


async def test_stream_errors_after_items(serve: Any) -> None:
    h = await serve([ErrorMapper()])
    h.script.stream_error = Unavailable("SHUTTING_DOWN", "bye")
    items = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for item in h.notification.Subscribe(npb.SubscribeRequest()):
            items.append(item)
    assert len(items) == 2
    assert (
        info.value.code() == grpc.StatusCode.UNAVAILABLE
        and from_rpc_error(info.value).reason == "SHUTTING_DOWN"
    )
