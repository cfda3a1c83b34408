"""chatmesh errors <-> gRPC statuses, both directions, in one module.

Server side: :func:`to_status` turns a :class:`~mesh.core.errors.ChatmeshError`
into a ``google.rpc.Status`` carrying ``ErrorInfo{reason, domain: "chatmesh.dev",
metadata}``, ``BadRequest`` (one violation per field, for
:class:`~mesh.core.errors.InvalidArgument`) and ``RetryInfo`` (when the error has a
``retry_delay``); :func:`trailing_metadata` is that status as the
``grpc-status-details-bin`` trailer, and :func:`mask_internal` turns any other
exception into a masked :class:`~mesh.core.errors.Internal` after logging it in
full under a fresh id. The error interceptor (:mod:`mesh.rpc.interceptors.errors`)
and the edge call these; nothing else builds a status.

Client side: :func:`from_rpc_error` (or :func:`from_status` given the parts)
turns a received status back into the matching ``ChatmeshError`` subclass, with
its reason, metadata, violations and retry delay; :func:`parse_details` reads
the trailer alone. A status without chatmesh details (a proxy's own UNAVAILABLE,
say) still maps by code, with reason ``UNSPECIFIED``.

Example:
    >>> from mesh.core.errors import NotFound
    >>> err = NotFound("CHANNEL_NOT_FOUND", "no such channel", channel_id="ch_x")
    >>> status = to_status(err)
    >>> back = from_status(grpc.StatusCode.NOT_FOUND, err.message, status.SerializeToString())
    >>> type(back).__name__, back.reason, back.metadata
    ('NotFound', 'CHANNEL_NOT_FOUND', {'channel_id': 'ch_x'})
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from mesh.core.errors import (
    DOMAIN,
    REASONS,
    Aborted,
    AlreadyExists,
    Cancelled,
    ChatmeshError,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    Reason,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)

__all__ = [
    "DETAILS_KEY",
    "ERROR_CLASSES",
    "StatusDetails",
    "from_rpc_error",
    "from_status",
    "grpc_code",
    "mask_internal",
    "parse_details",
    "to_status",
    "trailing_metadata",
]

logger = logging.getLogger(__name__)

DETAILS_KEY = "grpc-status-details-bin"
"""The trailing-metadata key of the serialized ``google.rpc.Status``."""

ERROR_CLASSES: dict[grpc.StatusCode, type[ChatmeshError]] = {
    grpc.StatusCode[cls.code]: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}
"""The error class of every gRPC status code but OK."""

_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}
_REASON_BY_NAME: dict[str, Reason] = {reason: reason for reason in REASONS}


# -- server side: error -> status ---------------------------------------------------


def grpc_code(err: ChatmeshError) -> grpc.StatusCode:
    """The gRPC status code of a domain error."""
    return grpc.StatusCode[err.code]


def to_status(err: ChatmeshError) -> status_pb2.Status:
    """The ``google.rpc.Status`` of a domain error: ErrorInfo, and BadRequest/RetryInfo if any."""
    status = status_pb2.Status(code=grpc_code(err).value[0], message=err.message)
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=err.metadata)
    status.details.add().Pack(info)
    if isinstance(err, InvalidArgument):
        bad = error_details_pb2.BadRequest()
        for v in err.violations:
            bad.field_violations.add(
                field=v.field, description=f"{v.description} [{v.rule_id}]", reason=v.rule_id
            )
        status.details.add().Pack(bad)
    if err.retry_delay is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(max(0.0, err.retry_delay) * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status


def trailing_metadata(err: ChatmeshError) -> tuple[tuple[str, bytes], ...]:
    """The ``grpc-status-details-bin`` trailer carrying :func:`to_status` of ``err``."""
    return ((DETAILS_KEY, to_status(err).SerializeToString()),)


def mask_internal(exc: BaseException, method: str, *, log: bool = True) -> Internal:
    """What a client sees for an unexpected exception: a masked INTERNAL with a fresh id.

    The exception is logged here, in full, with the same id, so the two can be matched.

    Args:
        exc: What escaped the handler.
        method: The RPC it escaped from, for the log line.
        log: False when the caller throttles these logs and this one is left out.
    """
    error_id = uuid.uuid4().hex[:12]
    if log:
        logger.error("internal error id=%s in %s", error_id, method, exc_info=exc)
    return Internal(f"internal error (id={error_id})")


# -- client side: status -> error ---------------------------------------------------


@dataclass(frozen=True)
class StatusDetails:
    """What a ``google.rpc.Status``'s details say, in chatmesh's terms."""

    reason: Reason = "UNSPECIFIED"
    """``ErrorInfo.reason`` if chatmesh's domain and a known reason, else ``UNSPECIFIED``."""
    raw_reason: str = ""
    """``ErrorInfo.reason`` as received (may be a reason newer than this code)."""
    domain: str = ""
    """``ErrorInfo.domain`` (``chatmesh.dev``); empty without ErrorInfo."""
    metadata: dict[str, str] = field(default_factory=dict)
    """``ErrorInfo.metadata``."""
    violations: list[FieldViolation] = field(default_factory=list)
    """``BadRequest.field_violations`` (rule id from ``reason``, the text without its ``[rule]``)."""
    retry_delay: float | None = None
    """``RetryInfo.retry_delay`` in seconds; None without RetryInfo."""


def _description(text: str, rule_id: str) -> str:
    suffix = f" [{rule_id}]"
    return text[: -len(suffix)] if rule_id and text.endswith(suffix) else text


def parse_details(status: status_pb2.Status | bytes | None) -> StatusDetails:
    """Reads ErrorInfo, BadRequest and RetryInfo from a status (or its serialized bytes).

    Unparsable bytes and unknown detail types are ignored: they must not hide the status code.
    """
    if status is None:
        return StatusDetails()
    if isinstance(status, bytes):
        try:
            parsed = status_pb2.Status.FromString(status)
        except Exception:  # noqa: BLE001 - a corrupt trailer leaves the code and message
            logger.warning("unparsable %s trailer (%d bytes)", DETAILS_KEY, len(status))
            return StatusDetails()
    else:
        parsed = status
    reason: Reason = "UNSPECIFIED"
    raw_reason = domain = ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_delay: float | None = None
    for detail in parsed.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            raw_reason, domain, metadata = str(info.reason), str(info.domain), dict(info.metadata)
            if domain == DOMAIN:
                reason = _REASON_BY_NAME.get(raw_reason, "UNSPECIFIED")
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [
                FieldViolation(v.field, v.reason, _description(v.description, v.reason))
                for v in bad.field_violations
            ]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_delay = retry.retry_delay.ToNanoseconds() / 1e9
    return StatusDetails(reason, raw_reason, domain, metadata, violations, retry_delay)


def from_status(
    code: grpc.StatusCode | int,
    message: str,
    details: status_pb2.Status | bytes | None = None,
) -> ChatmeshError:
    """The domain error a client raises for a status.

    Args:
        code: The status code (enum or number); OK is not an error and maps to Unknown.
        message: The status message (``details()`` of a gRPC error).
        details: The ``grpc-status-details-bin`` trailer (bytes or parsed), if any.

    Returns:
        An instance of the code's class (:data:`ERROR_CLASSES`) with ``reason``,
        ``metadata``, ``retry_delay`` and, for INVALID_ARGUMENT, ``violations``.
    """
    if isinstance(code, int):
        code = _BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    cls = ERROR_CLASSES.get(code, Unknown)
    parsed = parse_details(details)
    err: ChatmeshError
    if cls is InvalidArgument:
        err = InvalidArgument(parsed.violations, message)
        err.reason = parsed.reason
    elif cls is Internal:
        err = Internal(message, parsed.reason)
    else:
        err = cls(parsed.reason, message)
    # Assigned, not passed as keywords: a metadata key may be any string.
    err.metadata = parsed.metadata
    err.retry_delay = parsed.retry_delay
    return err


def _details_trailer(metadata: Iterable[Any] | None) -> bytes | None:
    for item in metadata or ():
        key, value = item[0], item[1]
        if key == DETAILS_KEY and isinstance(value, bytes):
            return value
    return None


def from_rpc_error(err: grpc.RpcError) -> ChatmeshError:
    """The domain error for a failed call (``grpc.aio.AioRpcError`` or a sync ``grpc.RpcError``).

    Raise it ``from err`` so the transport error stays attached.
    """
    code_of = getattr(err, "code", None)
    details_of = getattr(err, "details", None)
    trailers_of = getattr(err, "trailing_metadata", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    message = (details_of() if callable(details_of) else None) or ""
    trailer = _details_trailer(trailers_of() if callable(trailers_of) else None)
    return from_status(code or grpc.StatusCode.UNKNOWN, message, trailer)
