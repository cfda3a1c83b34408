"""AccessLog: one line per RPC with method, caller, status and duration."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import grpc
import pytest

from chatmesh.v1 import notification_service_pb2 as npb, query_service_pb2 as qpb
from mesh.core.errors import NotFound
from mesh.rpc.interceptors import AccessLog, ErrorMapper

REQ = qpb.GetHistoryRequest(channel_id="ch_" + "a" * 26)


async def test_one_line_per_rpc_with_status(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    h = await serve([AccessLog("query"), ErrorMapper()])
    with caplog.at_level(logging.INFO, logger="chatmesh.access"):
        await h.query.GetHistory(REQ)

        async def missing(request: Any, context: Any) -> Any:
            raise NotFound("CHANNEL_NOT_FOUND", "gone")

        h.script.unary = missing
        with pytest.raises(grpc.aio.AioRpcError):
            await h.query.GetHistory(REQ)
        async for _ in h.notification.Subscribe(npb.SubscribeRequest()):
            pass
    lines = [r.getMessage() for r in caplog.records if r.name == "chatmesh.access"]
    assert len(lines) == 3
    assert lines[0].startswith(
        "rpc /chatmesh.v1.QueryService/GetHistory service=query user=- code=OK"
    )
    assert "code=NOT_FOUND" in lines[1]
    assert "/chatmesh.v1.NotificationService/Subscribe" in lines[2] and "items=2" in lines[2]


async def test_a_stream_the_client_cancels_is_logged_once_with_its_peer(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The peer is read when the call starts: reading it from gRPC core after a
    # cancellation is what crashed services (SIGSEGV in cygrpc); see logging.py.
    h = await serve([AccessLog("notification")])
    h.script.stream_hold = True
    with caplog.at_level(logging.INFO, logger="chatmesh.access"):
        for _ in range(20):
            call = h.notification.Subscribe(npb.SubscribeRequest())
            await call.read()
            await call.read()
            call.cancel()
        await h.query.GetHistory(REQ)  # the server still serves

        def lines() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name == "chatmesh.access"]

        async with asyncio.timeout(10):
            while sum("Subscribe" in line for line in lines()) < 20:
                await asyncio.sleep(0.01)
    streams = [line for line in lines() if "Subscribe" in line]
    assert len(streams) == 20
    for line in streams:
        assert re.search(r"code=CANCELLED [0-9.]+ms items=2 peer=ipv4:127\.0\.0\.1:\d+$", line), (
            line
        )
