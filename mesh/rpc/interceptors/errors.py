"""Error mapping: the interceptor where domain errors become gRPC statuses.

A :class:`~mesh.core.errors.ChatmeshError` becomes its status code with the message,
plus ``grpc-status-details-bin`` trailing metadata holding the ``google.rpc.Status``
that :func:`mesh.rpc.status.to_status` builds (ErrorInfo, BadRequest, RetryInfo).
Any other exception is an internal error (:func:`mesh.rpc.status.mask_internal`):
logged in full with a fresh id, and masked for the client as
``INTERNAL: internal error (id=…)`` so the two can be matched.

Example:
    >>> server = grpc.aio.server(interceptors=[ErrorMapper()])  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc

from mesh.core.errors import ChatmeshError
from mesh.rpc.interceptors._base import Interceptor, NextStream, NextUnary
from mesh.rpc.status import grpc_code, mask_internal, trailing_metadata

__all__ = ["ErrorMapper"]


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, method: str
) -> NoReturn:
    err = exc if isinstance(exc, ChatmeshError) else mask_internal(exc, method)
    await context.abort(grpc_code(err), err.message, trailing_metadata=trailing_metadata(err))
    raise AssertionError("unreachable")  # context.abort always raises


class ErrorMapper(Interceptor):
    """Maps exceptions escaping handlers to statuses."""

    async def unary(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        call_next: NextUnary,
    ) -> Any:
        try:
            return await call_next(request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - mapped (and logged if internal) here, nowhere else
            await _abort(context, exc, method)

    async def stream(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        call_next: NextStream,
    ) -> AsyncIterator[Any]:
        try:
            async for item in call_next(request, context):
                yield item
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001
            await _abort(context, exc, method)
