"""The one exception hierarchy of chatmesh's domain code.

Services raise these; exactly one place (:mod:`mesh.rpc.interceptors.errors`, and the
edge) turns them into a gRPC status with ``google.rpc.ErrorInfo`` (``reason``,
domain ``chatmesh.dev``) and, for bad input, ``google.rpc.BadRequest``. Domain
code never imports grpc. Anything else that escapes a handler is an internal
error: logged in full with an id, and masked for the client.

Example:
    >>> err = NotFound("CHANNEL_NOT_FOUND", "channel ch_x does not exist")
    >>> err.code, err.reason
    ('NOT_FOUND', 'CHANNEL_NOT_FOUND')
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DOMAIN",
    "AlreadyExists",
    "ChatmeshError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
]

DOMAIN = "chatmesh.dev"
"""``ErrorInfo.domain`` of every chatmesh error."""


class ChatmeshError(Exception):
    """Base of all domain errors.

    Attributes:
        code: gRPC status code name (``NOT_FOUND`` ...).
        reason: ``chatmesh.v1.ErrorReason`` name without its prefix (``CHANNEL_NOT_FOUND``).
        message: Human-readable, safe to show to the caller.
        metadata: Extra ``ErrorInfo.metadata`` (e.g. the channel id).
    """

    code = "UNKNOWN"

    def __init__(self, reason: str, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = metadata


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
