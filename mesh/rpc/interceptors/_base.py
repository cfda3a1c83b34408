"""The shape all chatmesh interceptors share.

grpc.aio interceptors get a handler and must return one; to act around the
call they wrap the handler's behaviour. :class:`Interceptor` does that wrapping
once, so each concrete interceptor only writes :meth:`Interceptor.unary` and
:meth:`Interceptor.stream` (chatmesh has no client-streaming RPCs; those pass
through untouched).

Streams stay off the chain item by item: a server-streaming call runs as one
coroutine per interceptor around the whole stream (grpc.aio's reader/writer
form), and only the innermost step touches items: it iterates the servicer's
async generator and writes each item with ``context.write``. Interceptors see
the call start and end (and its exception) exactly as before; the access log's
item count comes from :func:`count_stream_items`. With one async generator per
interceptor, every item used to pass through seven generator frames.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

__all__ = ["Interceptor", "NextStream", "NextUnary", "count_stream_items", "status_code_of"]

NextUnary = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
NextStream = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]
"""Runs the rest of a server-streaming call to its end, writing its items to the client."""

_items: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "chatmesh_stream_items", default=None
)


def count_stream_items() -> list[int]:
    """Starts counting the items the current streaming call writes; returns the counter.

    ``counter[0]`` is the number written so far. Each RPC runs in its own task
    (its own context), so counters never mix between calls.
    """
    counter = [0]
    _items.set(counter)
    return counter


def _writer(
    produce: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncGenerator[Any, None]],
) -> NextStream:
    """The innermost step of a stream: the servicer's items, written one by one."""

    async def write_all(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        counter = _items.get()
        # aclosing: a stream that ends early (client gone, write failed) runs the
        # servicer's finally blocks now, in this task, not when the GC gets to it.
        async with contextlib.aclosing(produce(request, context)) as items:
            async for item in items:
                await context.write(item)
                if counter is not None:
                    counter[0] += 1

    return write_all


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
        # One wrapped handler per method, built on its first call: the wrapping
        # depends only on the method and the inner handler (the same object on
        # every call once the inner layers cache too), and a fresh set of closures
        # per call is kept alive by every live stream (~2 KiB a stream, ADR-025).
        # The cache holds the inner handler it was built from, so a different one
        # is wrapped anew; only methods with a handler are cached (a fixed set).
        cache: dict[str, tuple[Any, Any]] | None = self.__dict__.get("_wrapped")
        if cache is None:
            cache = self.__dict__["_wrapped"] = {}
        hit = cache.get(method)
        if hit is not None and hit[0] is handler:
            return hit[1]  # type: ignore[no-any-return]
        wrapped = self._wrap(method, handler)
        cache[method] = (handler, wrapped)
        return wrapped

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """``handler`` with this interceptor around it (built once per method)."""
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
            inner: Any = handler.unary_stream
            if inspect.iscoroutinefunction(inner):
                inner_stream: NextStream = inner  # the next interceptor, or a writer-style servicer
            elif inspect.isasyncgenfunction(inner):
                inner_stream = _writer(inner)
            else:
                raise TypeError(f"{method}: a streaming handler must be async ({inner!r})")

            # grpc.aio tells the writer form by the behaviour being a coroutine
            # *function* (an async generator function would be the yielding form).
            async def stream_behavior(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> None:
                await self.stream(method, request, context, inner_stream)

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
    ) -> None:
        """Runs around a whole server-streaming call; the default just calls through.

        ``call_next`` returns when the stream has ended (its items written) and
        raises what ended it otherwise; items do not pass through here.
        """
        await call_next(request, context)
