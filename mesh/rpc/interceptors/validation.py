"""Validation: every request is checked against its protovalidate rules first.

A bad request never reaches a handler, so it can leave no trace anywhere.
Bytes that are not a protobuf message of the request type at all are refused the
same way: gRPC would otherwise fail inside its own deserializer, answer UNKNOWN
with the Python exception text and log a traceback per request. This
interceptor's deserializer catches that and hands on a :class:`Malformed`
marker, which the interceptor turns into INVALID_ARGUMENT before anything
else looks at the request. Interceptors further out in the chain receive that
marker as the request: they must not read request fields (none does; one that
needs them belongs inside this one, or must check for :class:`Malformed`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from mesh.core.errors import FieldViolation, InvalidArgument
from mesh.rpc.interceptors._base import Interceptor, NextStream, NextUnary
from mesh.rpc.validation import validate

__all__ = ["Malformed", "Validator"]


@dataclass(frozen=True)
class Malformed:
    """Stands in for a request whose bytes did not parse."""

    size: int
    """How many bytes arrived."""


def _refuse(request: Any) -> None:
    if isinstance(request, Malformed):
        raise InvalidArgument(
            [
                FieldViolation(
                    "", "request.malformed", "the request is not a valid protobuf message"
                )
            ],
            f"malformed request: {request.size} bytes that are not a valid protobuf message",
        )
    validate(request)


class Validator(Interceptor):
    """Raises :class:`~mesh.core.errors.InvalidArgument` (mapped to INVALID_ARGUMENT) on bad input."""

    def request_deserializer(
        self, inner: Callable[[bytes], Any] | None
    ) -> Callable[[bytes], Any] | None:
        if inner is None:
            return None
        parse = inner

        def tolerant(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception:  # noqa: BLE001 - DecodeError, or a RecursionError on deep nesting
                return Malformed(len(data))

        return tolerant

    async def unary(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        call_next: NextUnary,
    ) -> Any:
        _refuse(request)
        return await call_next(request, context)

    async def stream(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        call_next: NextStream,
    ) -> None:
        _refuse(request)
        await call_next(request, context)
