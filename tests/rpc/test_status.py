"""mesh.rpc.status: every domain error survives the trip to a status and back."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from mesh.core.errors import (
    DOMAIN,
    AlreadyExists,
    ChatmeshError,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from mesh.rpc.status import (
    DETAILS_KEY,
    ERROR_CLASSES,
    from_rpc_error,
    from_status,
    grpc_code,
    parse_details,
    to_status,
    trailing_metadata,
)

ERRORS: list[ChatmeshError] = [
    NotFound("CHANNEL_NOT_FOUND", "no channel ch_x", channel_id="ch_x"),
    PermissionDenied("NOT_A_MEMBER", "not yours", channel_id="ch_x", user_id="carol"),
    Unauthenticated("TOKEN_EXPIRED", "get a new token"),
    AlreadyExists("IDEMPOTENCY_KEY_REUSED", "key used for another text"),
    FailedPrecondition("MESSAGE_DELETED", "deleted"),
    Unavailable("SHUTTING_DOWN", "bye"),
    DeadlineExceeded("DEADLINE_EXCEEDED", "too slow"),
    ResourceExhausted("RATE_LIMITED", "slow down", retry_delay=2.25),
    Internal("internal error (id=0123456789ab)"),
    NotFound("METHOD_NOT_FOUND", "no such method"),
]


def _aio_error(err: ChatmeshError) -> grpc.aio.AioRpcError:
    """The error a grpc.aio client raises for a status carrying ``err``'s trailer."""
    return grpc.aio.AioRpcError(
        grpc_code(err),
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*trailing_metadata(err)),
        details=err.message,
    )


@pytest.mark.parametrize("err", ERRORS, ids=lambda e: f"{e.code}-{e.reason}")
def test_round_trip_keeps_class_reason_metadata_and_retry_delay(err: ChatmeshError) -> None:
    back = from_rpc_error(_aio_error(err))
    assert type(back) is type(err)
    assert (back.code, back.reason, back.message, back.metadata, back.retry_delay) == (
        err.code,
        err.reason,
        err.message,
        err.metadata,
        err.retry_delay,
    )


def test_status_carries_error_info_in_chatmesh_domain() -> None:
    status = to_status(PermissionDenied("NOT_A_MEMBER", "no", channel_id="ch_x"))
    assert status.code == grpc.StatusCode.PERMISSION_DENIED.value[0] and status.message == "no"
    [detail] = status.details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "NOT_A_MEMBER",
        DOMAIN,
        {"channel_id": "ch_x"},
    )


def test_invalid_argument_round_trips_every_violation() -> None:
    err = InvalidArgument(
        [
            FieldViolation("text", "string.max_len", "value length must be at most 4000"),
            FieldViolation("", "history.bounds_order", "before_seq must be greater"),
        ]
    )
    back = from_rpc_error(_aio_error(err))
    assert isinstance(back, InvalidArgument) and back.reason == "INVALID_FIELD"
    assert back.violations == err.violations
    assert back.message == err.message


def test_retry_info_only_when_the_error_has_a_delay() -> None:
    assert parse_details(to_status(Unavailable("BACKEND_UNAVAILABLE", "x"))).retry_delay is None
    delayed = parse_details(to_status(ResourceExhausted("RATE_LIMITED", "x", retry_delay=0.5)))
    assert delayed.retry_delay == 0.5


def test_every_code_but_ok_has_a_class() -> None:
    assert set(ERROR_CLASSES) == set(grpc.StatusCode) - {grpc.StatusCode.OK}
    assert all(grpc.StatusCode[cls.code] is code for code, cls in ERROR_CLASSES.items())


def test_status_without_details_maps_by_code_with_unspecified_reason() -> None:
    # What a proxy answers on its own (Envoy's "upstream connect error"): no trailer.
    back = from_rpc_error(
        grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "no upstream"
        )
    )
    assert isinstance(back, Unavailable)
    assert (back.reason, back.message, back.metadata) == ("UNSPECIFIED", "no upstream", {})


def test_foreign_or_unknown_reasons_are_unspecified_but_kept_raw() -> None:
    status = status_pb2.Status(code=5, message="m")
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason="CHANNEL_NOT_FOUND", domain="x"))
    details = parse_details(status.SerializeToString())
    assert (details.reason, details.raw_reason, details.domain) == (
        "UNSPECIFIED",
        "CHANNEL_NOT_FOUND",
        "x",
    )
    status = status_pb2.Status(code=5, message="m")
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason="FROM_THE_FUTURE", domain=DOMAIN))
    assert parse_details(status).reason == "UNSPECIFIED"
    assert parse_details(status).raw_reason == "FROM_THE_FUTURE"


def test_corrupt_trailer_leaves_code_and_message() -> None:
    back = from_status(grpc.StatusCode.NOT_FOUND, "gone", b"\xff\xff not a status")
    assert isinstance(back, NotFound) and (back.reason, back.message) == ("UNSPECIFIED", "gone")


def test_numeric_codes_and_unknown_numbers() -> None:
    assert isinstance(from_status(12, "nope"), Unimplemented)
    assert isinstance(from_status(99, "?"), Unknown)


def test_trailer_key_is_the_grpc_one() -> None:
    [(key, value)] = trailing_metadata(NotFound("CHANNEL_NOT_FOUND", "x"))
    assert key == DETAILS_KEY == "grpc-status-details-bin" and isinstance(value, bytes)


def test_a_request_breaking_hundreds_of_rules_gets_a_bounded_refusal() -> None:
    # 300 bad member ids: listing each in the trailers overflowed HTTP/2's header limit
    # and the server reset the stream (UNAVAILABLE) instead of INVALID_ARGUMENT.
    from chatmesh.v1 import command_service_pb2 as cpb
    from mesh.rpc.validation import MAX_VIOLATIONS, validate

    bad = cpb.CreateChannelRequest(name="x", member_user_ids=[f"!{i}" for i in range(300)])
    with pytest.raises(InvalidArgument) as info:
        validate(bad)
    assert len(info.value.violations) == MAX_VIOLATIONS
    assert info.value.message.endswith(f"and {300 - MAX_VIOLATIONS} more violations")
    assert len(to_status(info.value).SerializeToString()) < 8192


def test_a_huge_map_key_is_cut_in_the_field_path() -> None:
    from chatmesh.v1 import notification_service_pb2 as npb
    from mesh.rpc.validation import validate

    bad = npb.SubscribeRequest(resume_from={"\U0001f600" * 70_000: -1})
    with pytest.raises(InvalidArgument) as info:
        validate(bad)
    assert all(len(v.field) < 200 for v in info.value.violations)
    assert len(to_status(info.value).SerializeToString()) < 8192
