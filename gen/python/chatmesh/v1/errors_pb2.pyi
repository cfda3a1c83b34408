from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_FIELD: _ClassVar[ErrorReason]
    ERROR_REASON_TOKEN_MISSING: _ClassVar[ErrorReason]
    ERROR_REASON_TOKEN_INVALID: _ClassVar[ErrorReason]
    ERROR_REASON_TOKEN_EXPIRED: _ClassVar[ErrorReason]
    ERROR_REASON_NOT_A_MEMBER: _ClassVar[ErrorReason]
    ERROR_REASON_NOT_THE_AUTHOR: _ClassVar[ErrorReason]
    ERROR_REASON_CHANNEL_PRIVATE: _ClassVar[ErrorReason]
    ERROR_REASON_CHANNEL_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_MESSAGE_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_ALREADY_MEMBER: _ClassVar[ErrorReason]
    ERROR_REASON_MESSAGE_DELETED: _ClassVar[ErrorReason]
    ERROR_REASON_IDEMPOTENCY_KEY_REUSED: _ClassVar[ErrorReason]
    ERROR_REASON_SLOW_CONSUMER: _ClassVar[ErrorReason]
    ERROR_REASON_RATE_LIMITED: _ClassVar[ErrorReason]
    ERROR_REASON_BACKEND_UNAVAILABLE: _ClassVar[ErrorReason]
    ERROR_REASON_INTERNAL: _ClassVar[ErrorReason]
    ERROR_REASON_SHUTTING_DOWN: _ClassVar[ErrorReason]
    ERROR_REASON_DEADLINE_EXCEEDED: _ClassVar[ErrorReason]
    ERROR_REASON_METHOD_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_SERVICE_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_STREAM_GAP: _ClassVar[ErrorReason]
    ERROR_REASON_PEER_NOT_ALLOWED: _ClassVar[ErrorReason]
ERROR_REASON_UNSPECIFIED: ErrorReason
ERROR_REASON_INVALID_FIELD: ErrorReason
ERROR_REASON_TOKEN_MISSING: ErrorReason
ERROR_REASON_TOKEN_INVALID: ErrorReason
ERROR_REASON_TOKEN_EXPIRED: ErrorReason
ERROR_REASON_NOT_A_MEMBER: ErrorReason
ERROR_REASON_NOT_THE_AUTHOR: ErrorReason
ERROR_REASON_CHANNEL_PRIVATE: ErrorReason
ERROR_REASON_CHANNEL_NOT_FOUND: ErrorReason
ERROR_REASON_MESSAGE_NOT_FOUND: ErrorReason
ERROR_REASON_ALREADY_MEMBER: ErrorReason
ERROR_REASON_MESSAGE_DELETED: ErrorReason
ERROR_REASON_IDEMPOTENCY_KEY_REUSED: ErrorReason
ERROR_REASON_SLOW_CONSUMER: ErrorReason
ERROR_REASON_RATE_LIMITED: ErrorReason
ERROR_REASON_BACKEND_UNAVAILABLE: ErrorReason
ERROR_REASON_INTERNAL: ErrorReason
ERROR_REASON_SHUTTING_DOWN: ErrorReason
ERROR_REASON_DEADLINE_EXCEEDED: ErrorReason
ERROR_REASON_METHOD_NOT_FOUND: ErrorReason
ERROR_REASON_SERVICE_NOT_FOUND: ErrorReason
ERROR_REASON_STREAM_GAP: ErrorReason
ERROR_REASON_PEER_NOT_ALLOWED: ErrorReason
