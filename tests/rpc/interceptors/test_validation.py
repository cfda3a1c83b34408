"""Validator: requests breaking contract rules are rejected before any handler runs."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from chatmesh.v1 import notification_service_pb2 as npb, query_service_pb2 as qpb
from mesh.core.errors import InvalidArgument
from mesh.rpc.interceptors import ErrorMapper, Validator
from mesh.rpc.status import from_rpc_error


async def test_invalid_request_names_field_and_rule(serve: Any) -> None:
    h = await serve([ErrorMapper(), Validator()])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.query.GetHistory(qpb.GetHistoryRequest(channel_id="nope", limit=500))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = from_rpc_error(info.value)
    assert isinstance(err, InvalidArgument) and err.reason == "INVALID_FIELD"
    fields = [(v.field, v.rule_id) for v in err.violations]
    assert ("channel_id", "string.pattern") in fields and ("limit", "int32.gte_lte") in fields
    assert h.script.seen == []


async def test_streams_are_validated_too(serve: Any) -> None:
    h = await serve([ErrorMapper(), Validator()])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in h.notification.Subscribe(npb.SubscribeRequest(resume_from={"bad": -1})):
            pass
    fields = [(v.field, v.rule_id) for v in from_rpc_error(info.value).violations]
    assert ('resume_from["bad"]', "string.pattern") in fields and (
        'resume_from["bad"]',
        "int64.gte",
    ) in fields


async def test_valid_request_passes(serve: Any) -> None:
    h = await serve([ErrorMapper(), Validator()])
    resp = await h.query.GetHistory(qpb.GetHistoryRequest(channel_id="ch_" + "a" * 26, limit=10))
    assert resp.last_seq == 7 and len(h.script.seen) == 1
