"""Error mapping: the one place domain errors become gRPC statuses.

A :class:`~mesh.core.errors.ChatmeshError` becomes its status code with the message,
plus ``grpc-status-details-bin`` trailing metadata holding a ``google.rpc.Status``
with ``ErrorInfo{reason, domain: "chatmesh.dev", metadata}`` and, for invalid
input, ``BadRequest`` with one violation per field. Any other exception is an
internal error: logged in full with a fresh id, and masked for the client as
``INTERNAL: internal error (id=…)`` so the two can be matched.

Example:
    >>> from mesh.core.errors import NotFound
    >>> status = rich_status(NotFound("CHANNEL_NOT_FOUND", "no such channel"))
    >>> status.code
    5
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2

from mesh.core.errors import DOMAIN, ChatmeshError, InvalidArgument
from mesh.rpc.interceptors._base import Interceptor, NextStream, NextUnary

__all__ = ["ErrorMapper", "grpc_code", "rich_status"]

logger = logging.getLogger(__name__)


def grpc_code(err: ChatmeshError) -> grpc.StatusCode:
    """The gRPC status code of a domain error."""
    return grpc.StatusCode[err.code]


def rich_status(err: ChatmeshError) -> status_pb2.Status:
    """The ``google.rpc.Status`` (with ErrorInfo and, if any, BadRequest) of a domain error."""
    status = status_pb2.Status(code=getattr(code_pb2, err.code), message=err.message)
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=err.metadata)
    status.details.add().Pack(info)
    if isinstance(err, InvalidArgument):
        bad = error_details_pb2.BadRequest()
        for v in err.violations:
            bad.field_violations.add(
                field=v.field, description=f"{v.description} [{v.rule_id}]", reason=v.rule_id
            )
        status.details.add().Pack(bad)
    return status


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, method: str
) -> NoReturn:
    if isinstance(exc, ChatmeshError):
        status = rich_status(exc)
        await context.abort(
            grpc_code(exc),
            exc.message,
            trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
        )
    error_id = uuid.uuid4().hex[:12]
    logger.error("internal error id=%s in %s", error_id, method, exc_info=exc)
    internal = ChatmeshError("INTERNAL", f"internal error (id={error_id})")
    internal.code = "INTERNAL"
    await context.abort(
        grpc.StatusCode.INTERNAL,
        internal.message,
        trailing_metadata=(("grpc-status-details-bin", rich_status(internal).SerializeToString()),),
    )
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
