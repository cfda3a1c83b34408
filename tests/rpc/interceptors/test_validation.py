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


CORRUPT = bytes.fromhex("0affffffff0f")  # field 1, length 2^32-1: truncated beyond repair


async def test_corrupt_protobuf_bytes_are_invalid_argument_without_a_traceback(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13, finding 4: such bytes got UNKNOWN with the Python exception text (and a
    traceback in the log per request) from grpc's own deserializer."""
    h = await serve([ErrorMapper(), Validator()])
    raw_unary = h.channel.unary_unary("/chatmesh.v1.QueryService/GetHistory")
    raw_stream = h.channel.unary_stream("/chatmesh.v1.NotificationService/Subscribe")
    with caplog.at_level("DEBUG"):
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await raw_unary(CORRUPT)
        with pytest.raises(grpc.aio.AioRpcError) as stream:
            async for _ in raw_stream(CORRUPT):
                pass
    for info in (unary, stream):
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = info.value.details() or ""
        assert details.startswith("malformed request") and len(details) < 120, details
        assert "Error" not in details and "Traceback" not in details
        err = from_rpc_error(info.value)
        assert isinstance(err, InvalidArgument) and err.reason == "INVALID_FIELD"
    assert h.script.seen == []
    assert [r for r in caplog.records if r.exc_info] == []


async def test_a_rule_that_cannot_be_evaluated_is_invalid_argument_naming_the_field(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """protovalidate's EvaluationError (e.g. integer overflow in a CEL rule) was INTERNAL."""
    import protovalidate

    from mesh.rpc import validation

    class Overflowing:  # the contract's rule no longer overflows; any other rule still could
        def collect_violations(self, message: Any) -> Any:
            raise protovalidate.EvaluationError(
                "error evaluating history.bounds_order: integer overflow"
            )

    monkeypatch.setattr(validation, "_validator", Overflowing())
    h = await serve([ErrorMapper(), Validator()])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.query.GetHistory(
            qpb.GetHistoryRequest(channel_id="ch_" + "a" * 26, after_seq=2**63 - 1, before_seq=9)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = from_rpc_error(info.value)
    assert isinstance(err, InvalidArgument)
    assert sorted((v.field, v.rule_id) for v in err.violations) == [
        ("after_seq", "history.bounds_order"),
        ("before_seq", "history.bounds_order"),
    ]
