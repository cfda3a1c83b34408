"""The error hierarchy: reasons are exactly the contract's ErrorReason enum."""

from __future__ import annotations

from chatmesh.v1 import errors_pb2
from mesh.core.errors import REASONS, Internal, NotFound

PREFIX = "ERROR_REASON_"


def test_reason_literal_is_the_proto_enum_in_order() -> None:
    # The Literal is what mypy checks every raise against; this keeps it from
    # drifting from proto/chatmesh/v1/errors.proto in either direction.
    enum = errors_pb2.ErrorReason
    names = sorted(enum.keys(), key=enum.Value)
    assert all(n.startswith(PREFIX) for n in names)
    assert list(REASONS) == [n.removeprefix(PREFIX) for n in names]
    assert [enum.Value(PREFIX + r) for r in REASONS] == list(range(len(REASONS)))


def test_internal_is_a_plain_error_class() -> None:
    err = Internal("internal error (id=abc)")
    assert (err.code, err.reason, err.message, err.metadata) == (
        "INTERNAL",
        "INTERNAL",
        "internal error (id=abc)",
        {},
    )
    assert err.retry_delay is None


def test_metadata_and_retry_delay_are_kept_apart() -> None:
    err = NotFound("CHANNEL_NOT_FOUND", "gone", retry_delay=1.5, channel_id="ch_x")
    assert err.metadata == {"channel_id": "ch_x"} and err.retry_delay == 1.5
    assert str(err) == "gone"
