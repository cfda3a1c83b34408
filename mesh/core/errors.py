"""The one exception hierarchy of chatmesh: raised by services, re-raised by clients.

Services raise these; exactly one module (:mod:`mesh.rpc.status`) turns them into
a gRPC status with ``google.rpc.ErrorInfo`` (``reason``, domain ``chatmesh.dev``)
and, for bad input, ``google.rpc.BadRequest`` (and ``RetryInfo`` when the error
carries a retry delay), and turns a status received by a client back into the
matching subclass here. Domain code never imports grpc. Anything else that
escapes a handler is an internal error: logged in full with an id, and masked
for the client as :class:`Internal`.

``reason`` is typed as :data:`Reason`, the names of ``chatmesh.v1.ErrorReason``
without their ``ERROR_REASON_`` prefix, so mypy rejects a reason the contract
does not define (a unit test keeps the two lists equal).

Example:
    >>> err = NotFound("CHANNEL_NOT_FOUND", "channel ch_x does not exist", channel_id="ch_x")
    >>> err.code, err.reason, err.metadata
    ('NOT_FOUND', 'CHANNEL_NOT_FOUND', {'channel_id': 'ch_x'})
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

__all__ = [
    "DOMAIN",
    "REASONS",
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "ChatmeshError",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "Reason",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
]

DOMAIN = "chatmesh.dev"
"""``ErrorInfo.domain`` of every chatmesh error."""

Reason = Literal[
    "UNSPECIFIED",
    "INVALID_FIELD",
    "TOKEN_MISSING",
    "TOKEN_INVALID",
    "TOKEN_EXPIRED",
    "NOT_A_MEMBER",
    "NOT_THE_AUTHOR",
    "CHANNEL_PRIVATE",
    "CHANNEL_NOT_FOUND",
    "MESSAGE_NOT_FOUND",
    "ALREADY_MEMBER",
    "MESSAGE_DELETED",
    "IDEMPOTENCY_KEY_REUSED",
    "SLOW_CONSUMER",
    "RATE_LIMITED",
    "BACKEND_UNAVAILABLE",
    "INTERNAL",
    "SHUTTING_DOWN",
    "DEADLINE_EXCEEDED",
    "METHOD_NOT_FOUND",
    "SERVICE_NOT_FOUND",
    "STREAM_GAP",
    "PEER_NOT_ALLOWED",
]
"""``chatmesh.v1.ErrorReason`` names without the ``ERROR_REASON_`` prefix, in enum order.

``UNSPECIFIED`` is what a client reports for a status that carried no chatmesh
``ErrorInfo`` (a proxy's own UNAVAILABLE, a reason newer than this code)."""

REASONS: tuple[Reason, ...] = get_args(Reason)
"""Every :data:`Reason`, in enum order."""


class ChatmeshError(Exception):
    """Base of all domain errors.

    Attributes:
        code: gRPC status code name (``NOT_FOUND`` ...), fixed per subclass.
        reason: ``chatmesh.v1.ErrorReason`` name without its prefix (``CHANNEL_NOT_FOUND``).
        message: Human-readable, safe to show to the caller.
        metadata: Extra ``ErrorInfo.metadata`` (e.g. the channel id).
        retry_delay: Seconds the caller should wait before retrying (``google.rpc.RetryInfo``);
            None when the server gave no advice.
    """

    code: ClassVar[str] = "UNKNOWN"

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        retry_delay: float | None = None,
        **metadata: str,
    ) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message
        self.metadata = metadata
        self.retry_delay = retry_delay

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, {self.message!r})"


@dataclass(frozen=True)
class FieldViolation:
    """One broken validation rule."""

    field: str
    """Path of the field (``text``, ``resume_from["ch_x"]``); empty for message-level rules."""
    rule_id: str
    """The protovalidate rule id (``string.max_len``, ``text.not_blank``)."""
    description: str
    """What is wrong."""


class InvalidArgument(ChatmeshError):
    """The request broke validation rules; ``violations`` names each field and rule."""

    code = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation], message: str | None = None) -> None:
        self.violations = violations
        summary = "; ".join(
            f"{v.field or '(request)'}: {v.description} [{v.rule_id}]" for v in violations
        )
        super().__init__("INVALID_FIELD", message or f"invalid request: {summary}")


class Unauthenticated(ChatmeshError):
    """No valid bearer token."""

    code = "UNAUTHENTICATED"


class PermissionDenied(ChatmeshError):
    """Authenticated, but not allowed."""

    code = "PERMISSION_DENIED"


class NotFound(ChatmeshError):
    """The named channel or message does not exist."""

    code = "NOT_FOUND"


class AlreadyExists(ChatmeshError):
    """The thing to create exists already."""

    code = "ALREADY_EXISTS"


class FailedPrecondition(ChatmeshError):
    """The target is in a state that forbids the operation."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(ChatmeshError):
    """A limit was hit (slow consumer, rate limit)."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(ChatmeshError):
    """A dependency did not answer; the call may be retried."""

    code = "UNAVAILABLE"


class DeadlineExceeded(ChatmeshError):
    """The call's deadline passed."""

    code = "DEADLINE_EXCEEDED"


class Internal(ChatmeshError):
    """An unexpected failure; the message carries an id to quote to operators."""

    code = "INTERNAL"

    def __init__(self, message: str, reason: Reason = "INTERNAL", **metadata: str) -> None:
        super().__init__(reason, message)
        self.metadata = metadata


# The remaining gRPC codes: chatmesh's services do not raise them, but a client
# can receive them (from gRPC itself or a proxy), and every code maps to a class.


class Cancelled(ChatmeshError):
    """The call was cancelled (usually by the caller)."""

    code = "CANCELLED"


class Unknown(ChatmeshError):
    """A status with code UNKNOWN (an error from outside chatmesh's mapping)."""

    code = "UNKNOWN"


class Aborted(ChatmeshError):
    """The operation was aborted (a concurrency conflict)."""

    code = "ABORTED"


class OutOfRange(ChatmeshError):
    """A value was past the valid range."""

    code = "OUT_OF_RANGE"


class Unimplemented(ChatmeshError):
    """The server does not implement the method."""

    code = "UNIMPLEMENTED"


class DataLoss(ChatmeshError):
    """Unrecoverable data loss or corruption."""

    code = "DATA_LOSS"
