"""AccessLog: one line per RPC with method, caller, status and duration."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import grpc
import pytest

from chatmesh.v1 import notification_service_pb2 as npb, query_service_pb2 as qpb
from mesh.core.auth import KeyDirectory, TokenVerifier, mint
from mesh.core.errors import NotFound
from mesh.rpc.interceptors import AccessLog, Authenticator, ErrorMapper, Validator
from mesh.rpc.interceptors._throttle import Throttle
from tests.helpers import eventually

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


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "chatmesh.access"]


async def _logged(caplog: pytest.LogCaptureFixture, count: int) -> list[str]:
    """The access lines once there are ``count``: grpc.aio's abort sends the status before
    it raises, so a client can see an error a moment before the server logs it."""
    await eventually(lambda: len(_access_lines(caplog)) >= count, what=f"{count} access lines")
    return _access_lines(caplog)


async def test_unary_calls_name_the_caller_when_they_succeed_too(
    serve: Any, keys: KeyDirectory, verifier: TokenVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13: unary OK lines said ``user=-`` (the identity was reset before the log)."""
    h = await serve([AccessLog("query"), ErrorMapper(), Authenticator(verifier)])
    md = (("authorization", f"Bearer {mint(keys, 'alice')}"),)
    with caplog.at_level(logging.INFO, logger="chatmesh.access"):
        await h.query.GetHistory(REQ, metadata=md)
        async for _ in h.notification.Subscribe(npb.SubscribeRequest(), metadata=md):
            pass
        with pytest.raises(grpc.aio.AioRpcError):
            await h.query.GetHistory(REQ)  # no token: nobody to name
        lines = await _logged(caplog, 3)
    assert len(lines) == 3
    assert "GetHistory service=query user=alice code=OK" in lines[0]
    assert "Subscribe service=query user=alice code=OK" in lines[1]
    assert "user=- code=UNAUTHENTICATED" in lines[2]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_hundred_bad_requests_from_one_client_log_one_line_per_interval(
    serve: Any, keys: KeyDirectory, verifier: TokenVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13: every bad request wrote a line (and garbage bytes a traceback) to the log."""
    clock = Clock()
    chain = [AccessLog("query", throttle=Throttle(10, clock=clock)), ErrorMapper(),
             Authenticator(verifier), Validator()]  # fmt: skip
    h = await serve(chain)
    md = (("authorization", f"Bearer {mint(keys, 'mallory')}"),)
    other = (("authorization", f"Bearer {mint(keys, 'alice')}"),)
    garbage = h.channel.unary_unary("/chatmesh.v1.QueryService/GetHistory")
    with caplog.at_level(logging.DEBUG):
        for i in range(100):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                if i % 2:
                    await h.query.GetHistory(qpb.GetHistoryRequest(channel_id="nope"), metadata=md)
                else:
                    await garbage(bytes.fromhex("0affffffff0f"), metadata=md)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError):
            await h.query.GetHistory(qpb.GetHistoryRequest(channel_id="nope"), metadata=other)
        await h.query.GetHistory(REQ, metadata=md)  # good calls are always logged
        clock.now = 10.5  # the next interval: one line again, with the count left out
        with pytest.raises(grpc.aio.AioRpcError):
            await h.query.GetHistory(qpb.GetHistoryRequest(channel_id="nope"), metadata=md)
        lines = await _logged(caplog, 4)
    assert [line.split(" code=")[1].split(" ")[0] for line in lines] == [
        "INVALID_ARGUMENT", "INVALID_ARGUMENT", "OK", "INVALID_ARGUMENT"
    ]  # fmt: skip
    assert "user=mallory" in lines[0] and "user=alice" in lines[1]
    assert "suppressed=" not in lines[0] and " suppressed=99 " in lines[3]
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING] == []


async def test_internal_errors_log_one_traceback_per_client_per_interval(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()  # frozen: all 30 calls fall in one interval however slow the machine
    h = await serve([AccessLog("query", throttle=Throttle(10, clock=clock)),
                     ErrorMapper(throttle=Throttle(10, clock=clock))])  # fmt: skip

    async def broken(request: Any, context: Any) -> Any:
        raise ZeroDivisionError("a bug the client can trigger")

    h.script.unary = broken
    with caplog.at_level(logging.INFO):
        for _ in range(30):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await h.query.GetHistory(REQ)
            assert info.value.code() == grpc.StatusCode.INTERNAL  # every client still told
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and "internal error id=" in tracebacks[0].getMessage()
    assert len(_access_lines(caplog)) == 1
