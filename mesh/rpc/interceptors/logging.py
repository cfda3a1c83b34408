"""Access log: one line per RPC, and bad requests throttled per client.

``rpc /chatmesh.v1.CommandService/SendMessage user=alice code=OK 1.8ms peer=ipv4:…``
(streams add ``items=N``). The only place RPCs are logged. ``user=`` names the
verified caller on every call that got past authentication, unary ones included.

A call refused as the client's fault (INVALID_ARGUMENT, UNAUTHENTICATED, NOT_FOUND …)
or failing inside (INTERNAL, UNKNOWN) is logged once per client and status per
interval (10 s); the next line logged for that pair says ``suppressed=N``, how
many were left out. One client sending garbage thus costs a line per interval,
not a line (or a traceback) per request.

The peer is read when the call starts, never when it ends: ``context.peer()`` calls
into gRPC core on the call itself, and after a client cancels a stream that call can
already be gone. Reading it in the ``finally`` of a cancelled ``Subscribe`` crashed
grpcio 1.85 with a NULL dereference in ``cygrpc`` (SIGSEGV, found through the
harness's faulthandler output); ``code()`` and the identity are plain Python state.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc

from mesh.rpc.interceptors._base import (
    Interceptor,
    NextStream,
    NextUnary,
    count_stream_items,
    status_code_of,
)
from mesh.rpc.interceptors._throttle import Throttle, client_of
from mesh.rpc.interceptors.auth import _identity

__all__ = ["AccessLog"]

logger = logging.getLogger("chatmesh.access")

THROTTLED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)
"""Statuses a client can cause at will; their lines are throttled per client."""


def _peer(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's address, read while the call is alive (``-`` if it already ended)."""
    if context.cancelled() or context.done():
        return "-"
    return str(context.peer())


class AccessLog(Interceptor):
    """Logs method, caller, status, duration and peer of each call."""

    def __init__(self, service: str, *, throttle: Throttle | None = None) -> None:
        """Args: service names the server in each line; throttle limits bad-request lines."""
        self._service = service
        self._throttle = throttle or Throttle()

    def _log(self, method: str, context: grpc.aio.ServicerContext[Any, Any], peer: str,
             started: float, exc: BaseException | None, items: int | None = None) -> None:  # fmt: skip
        code = status_code_of(context, exc)
        level = (
            logging.WARNING
            if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
            else logging.INFO
        )
        if not logger.isEnabledFor(level):
            return
        identity = _identity.get()
        user = identity.user_id if identity else None
        suppressed = 0
        if code in THROTTLED:
            admitted = self._throttle.admit((client_of(user, context, peer), code))
            if admitted is None:
                return
            suppressed = admitted
        logger.log(
            level,
            "rpc %s service=%s user=%s code=%s %.1fms%s%s peer=%s",
            method,
            self._service,
            user or "-",
            code.name,
            (time.perf_counter() - started) * 1000,
            "" if items is None else f" items={items}",
            f" suppressed={suppressed}" if suppressed else "",
            peer,
        )

    async def unary(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        call_next: NextUnary,
    ) -> Any:
        started = time.perf_counter()
        peer = _peer(context)
        exc: BaseException | None = None
        try:
            return await call_next(request, context)
        except BaseException as e:
            exc = e
            raise
        finally:
            self._log(method, context, peer, started, exc)

    async def stream(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        call_next: NextStream,
    ) -> None:
        started = time.perf_counter()
        peer = _peer(context)
        items = count_stream_items()  # items are counted where they are written
        exc: BaseException | None = None
        try:
            await call_next(request, context)
        except BaseException as e:
            exc = e
            raise
        finally:
            self._log(method, context, peer, started, exc, items[0])
