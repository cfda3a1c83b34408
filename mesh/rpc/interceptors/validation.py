"""Validation: every request is checked against its protovalidate rules first.

A bad request never reaches a handler, so it can leave no trace anywhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from mesh.rpc.interceptors._base import Interceptor, NextStream, NextUnary
from mesh.rpc.validation import validate

__all__ = ["Validator"]


class Validator(Interceptor):
    """Raises :class:`~mesh.core.errors.InvalidArgument` (mapped to INVALID_ARGUMENT) on bad input."""

    async def unary(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        call_next: NextUnary,
    ) -> Any:
        validate(request)
        return await call_next(request, context)

    async def stream(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        call_next: NextStream,
    ) -> AsyncIterator[Any]:
        validate(request)
        async for item in call_next(request, context):
            yield item
