"""Prometheus metrics of every RPC: counts by status and latency histograms.

Exposed with the service's other metrics on its HTTP metrics port
(:func:`mesh.rpc.server.serve`).
"""

from __future__ import annotations

import time
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from mesh.rpc.interceptors._base import Interceptor, NextStream, NextUnary, status_code_of

__all__ = ["RATE_LIMITED_TOTAL", "RPC_DURATION", "RPC_TOTAL", "Metrics"]

RPC_TOTAL = Counter("chatmesh_rpc_requests_total", "RPCs handled", ["service", "method", "code"])
RATE_LIMITED_TOTAL = Counter(
    "chatmesh_rate_limited_total",
    "Requests and streams refused with RATE_LIMITED (mesh.core.ratelimit)",
    ["service", "action"],
)
RPC_DURATION = Histogram(
    "chatmesh_rpc_duration_seconds",
    "RPC latency (unary) or stream lifetime (server streaming)",
    ["service", "method"],
    buckets=(
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        60,
        600,
    ),
)


class Metrics(Interceptor):
    """Counts and times calls."""

    def __init__(self, service: str) -> None:
        """Args: service is the ``service`` label."""
        self._service = service

    def _observe(self, method: str, context: grpc.aio.ServicerContext[Any, Any], started: float,
                 exc: BaseException | None) -> None:  # fmt: skip
        code = status_code_of(context, exc)
        RPC_TOTAL.labels(self._service, method, code.name).inc()
        RPC_DURATION.labels(self._service, method).observe(time.perf_counter() - started)

    async def unary(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        call_next: NextUnary,
    ) -> Any:
        started = time.perf_counter()
        exc: BaseException | None = None
        try:
            return await call_next(request, context)
        except BaseException as e:
            exc = e
            raise
        finally:
            self._observe(method, context, started, exc)

    async def stream(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        call_next: NextStream,
    ) -> None:
        started = time.perf_counter()
        exc: BaseException | None = None
        try:
            await call_next(request, context)
        except BaseException as e:
            exc = e
            raise
        finally:
            self._observe(method, context, started, exc)
