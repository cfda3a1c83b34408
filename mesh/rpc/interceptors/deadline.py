"""Deadlines: every unary call ends, and downstream calls know how long is left.

A unary call without a client deadline (or with a longer one) gets the server's
default; when it passes the call fails with DEADLINE_EXCEEDED. The deadline is
recorded in a context variable so code making further calls (NATS requests, the
edge forwarding to a service) can pass on :func:`remaining` rather than start
a fresh clock. Server streams have no default deadline: they live until the
client goes away.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import Any

import grpc

from mesh.core.errors import DeadlineExceeded
from mesh.rpc.interceptors._base import Interceptor, NextStream, NextUnary

__all__ = ["Deadlines", "remaining"]

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "chatmesh_deadline", default=None
)


def remaining(default: float = 10.0, *, floor: float = 0.001) -> float:
    """Seconds left before the current call's deadline (``default`` outside a call)."""
    deadline = _deadline.get()
    if deadline is None:
        return default
    return max(floor, deadline - time.monotonic())


class Deadlines(Interceptor):
    """Enforces a default deadline on unary calls and records deadlines for propagation."""

    def __init__(self, default_timeout: float = 10.0) -> None:
        """Args: default_timeout applies to unary calls without a (shorter) client deadline."""
        self._default = default_timeout

    async def unary(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        call_next: NextUnary,
    ) -> Any:
        client = context.time_remaining()
        budget = self._default if client is None else min(client, self._default)
        token = _deadline.set(time.monotonic() + budget)
        try:
            async with asyncio.timeout(budget):
                return await call_next(request, context)
        except TimeoutError:
            raise DeadlineExceeded(
                "DEADLINE_EXCEEDED",
                f"the call did not complete within its deadline ({budget:.2f}s)",
            ) from None
        finally:
            _deadline.reset(token)

    async def stream(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        call_next: NextStream,
    ) -> None:
        client = context.time_remaining()
        _deadline.set(None if client is None else time.monotonic() + client)
        await call_next(request, context)
