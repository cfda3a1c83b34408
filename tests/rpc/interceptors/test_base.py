"""Interceptor (the base): the chain is built once per method, and still runs on every call."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from chatmesh.v1 import query_service_pb2 as qpb
from mesh.rpc.interceptors import ErrorMapper, Validator
from mesh.rpc.interceptors._base import Interceptor, NextUnary


class _Counting(Interceptor):
    """Counts how often grpc asked it for a handler and how often a call went through it."""

    def __init__(self) -> None:
        self.built = 0
        self.calls: list[str] = []

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        self.built += 1
        return await super().intercept_service(continuation, handler_call_details)

    async def unary(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        call_next: NextUnary,
    ) -> Any:
        self.calls.append(method)
        return await call_next(request, context)


async def test_each_call_runs_the_whole_chain_built_once_per_method(serve: Any) -> None:
    inner = _Counting()
    h = await serve([_Counting(), ErrorMapper(), inner, Validator()])
    good = qpb.GetHistoryRequest(channel_id="ch_" + "a" * 26, limit=10)
    for _ in range(3):
        assert (await h.query.GetHistory(good)).last_seq == 7
    # A bad request after the handler was kept is still refused before the servicer.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.query.GetHistory(qpb.GetHistoryRequest(channel_id="nope", limit=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    assert inner.calls == ["/chatmesh.v1.QueryService/GetHistory"] * 4
    assert inner.built == 1  # the outer interceptors hand out the handler they built first
    assert len(h.script.seen) == 3


async def test_an_unknown_method_is_unimplemented_and_not_kept(serve: Any) -> None:
    outer = _Counting()
    h = await serve([outer, ErrorMapper()])
    for _ in range(2):
        call = h.channel.unary_unary("/chatmesh.v1.QueryService/NoSuchMethod")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"")
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert outer.built == 2 and outer._handlers == {}
