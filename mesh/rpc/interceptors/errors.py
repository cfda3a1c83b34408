"""Error mapping: the interceptor where domain errors become gRPC statuses.

A :class:`~mesh.core.errors.ChatmeshError` becomes its status code with the message,
plus ``grpc-status-details-bin`` trailing metadata holding the ``google.rpc.Status``
that :func:`mesh.rpc.status.to_status` builds (ErrorInfo, BadRequest, RetryInfo).
Any other exception is an internal error (:func:`mesh.rpc.status.mask_internal`):
logged in full with a fresh id, and masked for the client as
``INTERNAL: internal error (id=…)`` so the two can be matched. The full log
(traceback included) is written once per client and exception type per interval:
a client that can trigger the same failure at will cannot flood the log with
tracebacks (the access log counts the calls).

Example:
    >>> server = grpc.aio.server(interceptors=[ErrorMapper()])  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

import grpc

from mesh.core.errors import ChatmeshError
from mesh.rpc.interceptors._base import Interceptor, NextStream, NextUnary
from mesh.rpc.interceptors._throttle import Throttle, client_of
from mesh.rpc.interceptors.auth import _identity
from mesh.rpc.status import grpc_code, mask_internal, trailing_metadata

__all__ = ["ErrorMapper"]


class ErrorMapper(Interceptor):
    """Maps exceptions escaping handlers to statuses."""

    def __init__(self, *, throttle: Throttle | None = None) -> None:
        """Args: throttle limits full internal-error logs per client (10 s interval by default)."""
        self._throttle = throttle or Throttle()

    async def _abort(
        self, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, method: str
    ) -> NoReturn:
        if isinstance(exc, ChatmeshError):
            err: ChatmeshError = exc
        else:
            identity = _identity.get()
            client = client_of(identity.user_id if identity else None, context)
            log = self._throttle.admit((client, type(exc).__qualname__)) is not None
            err = mask_internal(exc, method, log=log)
        await context.abort(grpc_code(err), err.message, trailing_metadata=trailing_metadata(err))
        raise AssertionError("unreachable")  # context.abort always raises

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
            await self._abort(context, exc, method)

    async def stream(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        call_next: NextStream,
    ) -> None:
        try:
            await call_next(request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001
            await self._abort(context, exc, method)
