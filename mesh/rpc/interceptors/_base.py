"""The shape all chatmesh interceptors share.

grpc.aio interceptors get a handler and must return one; to act around the
call they wrap the handler's behaviour. :class:`Interceptor` does that wrapping
once, so each concrete interceptor only writes :meth:`Interceptor.unary` and
:meth:`Interceptor.stream` (chatmesh has no client-streaming RPCs; those pass
through untouched).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

__all__ = ["Interceptor", "NextStream", "NextUnary", "status_code_of"]

NextUnary = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
NextStream = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]

_PASS_THROUGH = ("/grpc.health.v1.", "/grpc.reflection.")


def status_code_of(
    context: grpc.aio.ServicerContext[Any, Any], exc: BaseException | None
) -> grpc.StatusCode:
    """The status a call ended with (OK if no exception and none was set)."""
    code: object = context.code()  # a StatusCode, or its int value, depending on how it was set
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        for candidate in grpc.StatusCode:
            if candidate.value[0] == code:
                return candidate
    if exc is None:
        return grpc.StatusCode.OK
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return (
        grpc.StatusCode.CANCELLED
        if isinstance(exc, BaseException) and not isinstance(exc, Exception)
        else grpc.StatusCode.UNKNOWN
    )


if TYPE_CHECKING:  # the stubs make these generic; the runtime classes are not subscriptable
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class Interceptor(_ServerInterceptor):
    """Base class: override :meth:`unary` and/or :meth:`stream`."""

    applies_to_infrastructure = False
    """Whether health/reflection calls go through this interceptor too."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or (
            not self.applies_to_infrastructure and method.startswith(_PASS_THROUGH)
        ):
            return handler
        deserializer = self.request_deserializer(handler.request_deserializer)
        if handler.unary_unary is not None:
            inner_unary: NextUnary = handler.unary_unary  # type: ignore[assignment]  # aio handlers are async

            async def unary_behavior(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> Any:
                return await self.unary(method, request, context, inner_unary)

            return grpc.unary_unary_rpc_method_handler(
                unary_behavior,
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream: NextStream = handler.unary_stream  # type: ignore[assignment]  # aio handlers are async

            # grpc.aio recognizes streaming behaviours by being async generator
            # *functions*, so this must be one (not a function returning one).
            async def stream_behavior(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                async for item in self.stream(method, request, context, inner_stream):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                stream_behavior,
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def request_deserializer(
        self, inner: Callable[[bytes], Any] | None
    ) -> Callable[[bytes], Any] | None:
        """The deserializer the wrapped handler uses; the default keeps the inner one."""
        return inner

    async def unary(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        call_next: NextUnary,
    ) -> Any:
        """Runs around a unary call; the default just calls through."""
        return await call_next(request, context)

    async def stream(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        call_next: NextStream,
    ) -> AsyncIterator[Any]:
        """Runs around a server-streaming call; the default just calls through."""
        async for item in call_next(request, context):
            yield item
