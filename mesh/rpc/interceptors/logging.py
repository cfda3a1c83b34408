"""Access log: exactly one line per RPC.

``rpc /chatmesh.v1.CommandService/SendMessage user=alice code=OK 1.8ms peer=ipv4:…``
(streams add ``items=N``). The only place RPCs are logged.

The peer is read when the call starts, never when it ends: ``context.peer()`` calls
into gRPC core on the call itself, and after a client cancels a stream that call can
already be gone. Reading it in the ``finally`` of a cancelled ``Subscribe`` crashed
grpcio 1.85 with a NULL dereference in ``cygrpc`` (SIGSEGV, found through the
harness's faulthandler output); ``code()`` and the identity are plain Python state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from mesh.rpc.interceptors._base import Interceptor, NextStream, NextUnary, status_code_of
from mesh.rpc.interceptors.auth import _identity

__all__ = ["AccessLog"]

logger = logging.getLogger("chatmesh.access")


def _peer(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's address, read while the call is alive (``-`` if it already ended)."""
    if context.cancelled() or context.done():
        return "-"
    return str(context.peer())


class AccessLog(Interceptor):
    """Logs method, caller, status, duration and peer of each call."""

    def __init__(self, service: str) -> None:
        """Args: service names the server in each line."""
        self._service = service

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
        logger.log(
            level,
            "rpc %s service=%s user=%s code=%s %.1fms%s peer=%s",
            method,
            self._service,
            identity.user_id if identity else "-",
            code.name,
            (time.perf_counter() - started) * 1000,
            "" if items is None else f" items={items}",
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
    ) -> AsyncIterator[Any]:
        started = time.perf_counter()
        peer = _peer(context)
        items = 0
        exc: BaseException | None = None
        try:
            async for item in call_next(request, context):
                items += 1
                yield item
        except BaseException as e:
            exc = e
            raise
        finally:
            self._log(method, context, peer, started, exc, items)
