"""Deadlines: unary calls end by their deadline; the remaining budget is visible to handlers."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from chatmesh.v1 import query_service_pb2 as qpb
from mesh.rpc.interceptors import Deadlines, ErrorMapper
from mesh.rpc.interceptors.deadline import remaining
from mesh.rpc.status import from_rpc_error

REQ = qpb.GetHistoryRequest(channel_id="ch_" + "a" * 26)


async def test_server_default_deadline_ends_slow_calls(serve: Any) -> None:
    h = await serve([ErrorMapper(), Deadlines(default_timeout=0.2)])
    release = asyncio.Event()

    async def slow(request: Any, context: Any) -> Any:
        await release.wait()  # never set: only the deadline can end this call
        return qpb.GetHistoryResponse()

    h.script.unary = slow
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.query.GetHistory(REQ)  # no client deadline
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert from_rpc_error(info.value).reason == "DEADLINE_EXCEEDED"


async def test_client_deadline_is_visible_for_propagation(serve: Any) -> None:
    h = await serve([ErrorMapper(), Deadlines(default_timeout=10)])
    budgets: list[float] = []

    async def record(request: Any, context: Any) -> Any:
        budgets.append(remaining())
        return qpb.GetHistoryResponse()

    h.script.unary = record
    await h.query.GetHistory(REQ, timeout=1.5)
    await h.query.GetHistory(REQ)
    # Which deadline applied, not how fast the call was: the client's (grpc rounds the
    # wire timeout up a little), then the server default, which is longer.
    assert 0 < budgets[0] <= 1.6 < budgets[1] <= 10
