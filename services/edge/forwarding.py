"""Forwarding: every public RPC is relayed to the service that owns it.

The edge's domain logic, independent of the protocol the client spoke
(gRPC, gRPC-Web, Connect) — it takes request messages and returns response
messages. For each call it

1. authenticates the caller (``authorization: Bearer <JWT>``) first: only an
   authenticated :class:`Caller` can be forwarded, so a request without a
   valid token never crosses the WAN;
2. picks the backend: CommandService goes to the primary region's Command
   Service (through the WAN link outside the primary), QueryService to the
   region's Query Service, NotificationService to the least busy of the
   region's Notification instances;
3. calls it over a pooled grpc.aio channel with the caller's token, the
   edge's region in ``x-chatmesh-origin-region`` (a client's own value is
   dropped: only the edge may say where a command entered) and the time left
   of the caller's deadline;
4. relays the backend's answer; a non-OK status becomes :class:`BackendError`
   carrying the code, message and ``grpc-status-details-bin`` unchanged.

Server streams are relayed item by item: the next item is read from the
backend only after the previous one was handed to the client, so a slow
client slows the backend's stream down (gRPC flow control) instead of
filling the edge's memory; the backend call is cancelled when the client
goes away.

Example:
    >>> async def demo(verifier: TokenVerifier) -> None:  # doctest: +SKIP
    ...     fwd = Forwarder(region="eu", verifier=verifier, backends={
    ...         "command": ["127.0.0.1:7001"], "query": ["127.0.0.1:7002"], "notification": ["127.0.0.1:7003"]})
    ...     caller = fwd.authenticate("Bearer eyJ...")  # raises Unauthenticated
    ...     reply = await fwd.unary("/chatmesh.v1.QueryService/ListChannels", request,
    ...                             ListChannelsResponse, caller=caller, timeout=2.0)
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from mesh.core.auth import Identity, TokenVerifier
from mesh.core.errors import DeadlineExceeded, NotFound, Unavailable
from mesh.core.headers import ORIGIN_REGION as ORIGIN_HEADER

__all__ = ["ROUTES", "BackendError", "Caller", "ChannelPool", "Forwarder"]

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

ROUTES: Mapping[str, str] = {
    "chatmesh.v1.CommandService": "command",
    "chatmesh.v1.QueryService": "query",
    "chatmesh.v1.NotificationService": "notification",
}
"""Public gRPC service -> kind of backend that serves it. Nothing else is forwarded
(the Fan-Out Service is internal)."""

_DETAILS_KEY = "grpc-status-details-bin"


class BackendError(Exception):
    """The backend ended the call with a non-OK status, relayed unchanged to the client.

    Attributes:
        code: The gRPC status code.
        message: The status message.
        details: The serialized ``google.rpc.Status`` of ``grpc-status-details-bin``, if any.
    """

    def __init__(self, code: grpc.StatusCode, message: str, details: bytes | None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.details = details

    @classmethod
    def from_rpc_error(cls, err: grpc.aio.AioRpcError) -> BackendError:
        """The error of a failed backend call."""
        details = None
        trailing: Any = err.trailing_metadata() or ()
        for key, value in trailing:
            if key == _DETAILS_KEY and isinstance(value, bytes):
                details = value
        return cls(err.code(), err.details() or "", details)


@dataclass(frozen=True)
class Caller:
    """An authenticated caller.

    Only :meth:`Forwarder.authenticate` makes one, so nothing can be forwarded
    without a verified token.
    """

    identity: Identity
    """Who is calling."""
    authorization: str
    """The verified ``authorization`` header, passed on to the backend."""


def _client_options() -> list[tuple[str, Any]]:
    return [
        # Separate connections per channel: grpc-core would otherwise share one
        # subchannel between channels with equal arguments, defeating the pool.
        ("grpc.use_local_subchannel_pool", 1),
        # Notice a dead backend (or WAN link) on idle streams; within what the
        # services allow (mesh.rpc.server: min ping interval 5 s).
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ]


class ChannelPool:
    """A few grpc.aio channels per backend address, used in turn."""

    def __init__(self, size: int = 2) -> None:
        """Args: size is the number of channels (TCP connections) per address."""
        if size < 1:
            raise ValueError("channel pool size must be at least 1")
        self._size = size
        self._channels: dict[str, list[grpc.aio.Channel]] = {}
        self._turn: dict[str, itertools.count[int]] = {}

    def get(self, address: str) -> grpc.aio.Channel:
        """A channel to ``address`` (created on first use, inside the running loop)."""
        channels = self._channels.get(address)
        if channels is None:
            channels = [
                grpc.aio.insecure_channel(address, options=_client_options())
                for _ in range(self._size)
            ]
            self._channels[address] = channels
            self._turn[address] = itertools.count()
        return channels[next(self._turn[address]) % self._size]

    async def close(self) -> None:
        """Closes every channel (in-flight calls are cancelled)."""
        channels = [c for group in self._channels.values() for c in group]
        self._channels.clear()
        await asyncio.gather(*(c.close(None) for c in channels), return_exceptions=True)


@dataclass
class _Backend:
    """The instances of one kind of backend, with the streams each carries."""

    addresses: Sequence[str]
    active: dict[str, int] = field(default_factory=dict)
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def acquire(self) -> str:
        """The least busy instance (ties taken in turn), counted busy until :meth:`release`."""
        start = next(self._turn)
        n = len(self.addresses)
        candidates = [self.addresses[(start + i) % n] for i in range(n)]
        address = min(candidates, key=lambda a: self.active.get(a, 0))
        self.active[address] = self.active.get(address, 0) + 1
        return address

    def release(self, address: str) -> None:
        """Marks one call to ``address`` finished."""
        self.active[address] = max(0, self.active.get(address, 0) - 1)


class Forwarder:
    """Authenticates and relays calls to the region's backends."""

    def __init__(
        self,
        *,
        region: str,
        verifier: TokenVerifier,
        backends: Mapping[str, Sequence[str]],
        channels_per_backend: int = 2,
        default_timeout: float = 10.0,
    ) -> None:
        """Prepares the forwarder; channels are opened on first use.

        Args:
            region: The edge's region, sent to backends as the call's origin.
            verifier: Checks client tokens.
            backends: Addresses per backend kind (``command``, ``query``, ``notification``).
            channels_per_backend: Size of each address's channel pool.
            default_timeout: Deadline of unary calls whose client set none (or a longer one).

        Raises:
            ValueError: A routed kind has no address.
        """
        missing = sorted(set(ROUTES.values()) - {k for k, v in backends.items() if v})
        if missing:
            raise ValueError(f"no backend address for {missing}")
        self.region = region
        self._verifier = verifier
        self._backends = {kind: _Backend(list(addresses)) for kind, addresses in backends.items()}
        self._pool = ChannelPool(channels_per_backend)
        self._default_timeout = default_timeout
        self._streams: set[grpc.aio.Call] = set()
        self._draining = False

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller of a request with this ``authorization`` header.

        Raises:
            Unauthenticated: Missing, malformed, forged or expired token.
        """
        identity = self._verifier.verify_header(authorization)
        assert authorization is not None  # verify_header rejects a missing header
        return Caller(identity, authorization.strip())

    def _route(self, method: str) -> _Backend:
        service = method.split("/")[1] if method.count("/") == 2 else ""
        kind = ROUTES.get(service)
        if kind is None:
            raise NotFound("METHOD_NOT_FOUND", f"{method} is not served by this edge")
        return self._backends[kind]

    def _metadata(self, caller: Caller) -> tuple[tuple[str, str], ...]:
        # Built from scratch: nothing the client sent besides its token reaches
        # the backend, in particular not its own origin-region claim.
        return (("authorization", caller.authorization), (ORIGIN_HEADER, self.region))

    def _unary_budget(self, timeout: float | None) -> float:
        budget = self._default_timeout if timeout is None else min(timeout, self._default_timeout)
        if budget <= 0:
            raise DeadlineExceeded(
                "DEADLINE_EXCEEDED", "the call's deadline passed before it was forwarded"
            )
        return budget

    async def unary(
        self,
        method: str,
        request: Message,
        response_class: type[M],
        *,
        caller: Caller,
        timeout: float | None,
    ) -> M:
        """Relays one unary call.

        Args:
            method: ``/package.Service/Method``.
            request: The decoded request.
            response_class: The method's response message class.
            caller: The authenticated caller (:meth:`authenticate`).
            timeout: Seconds left of the client's deadline (None: none given).

        Raises:
            DeadlineExceeded: The deadline passed before the call could be made.
            BackendError: The backend's status (including DEADLINE_EXCEEDED, UNAVAILABLE).
        """
        budget = self._unary_budget(timeout)
        backend = self._route(method)
        address = backend.acquire()
        try:
            call = self._pool.get(address).unary_unary(
                method,
                request_serializer=_serialize,
                response_deserializer=response_class.FromString,
            )
            response: M = await call(request, metadata=self._metadata(caller), timeout=budget)
            return response
        except grpc.aio.AioRpcError as err:
            raise BackendError.from_rpc_error(err) from None
        finally:
            backend.release(address)

    async def stream(
        self,
        method: str,
        request: Message,
        response_class: type[M],
        *,
        caller: Caller,
        timeout: float | None,
    ) -> AsyncGenerator[M, None]:
        """Relays a server-streaming call item by item (see the module docstring).

        Closing the returned iterator early (the client went away) cancels the
        backend call.

        Raises:
            DeadlineExceeded: The deadline passed before the call could be made.
            Unavailable: The edge is shutting down (reason SHUTTING_DOWN).
            BackendError: The backend ended the stream with an error.
        """
        if self._draining:
            raise Unavailable("SHUTTING_DOWN", "the edge is shutting down; reconnect")
        if timeout is not None and timeout <= 0:
            raise DeadlineExceeded(
                "DEADLINE_EXCEEDED", "the call's deadline passed before it was forwarded"
            )
        backend = self._route(method)
        address = backend.acquire()
        multicallable = self._pool.get(address).unary_stream(
            method, request_serializer=_serialize, response_deserializer=response_class.FromString
        )
        call = multicallable(request, metadata=self._metadata(caller), timeout=timeout)
        self._streams.add(call)
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as err:
            raise BackendError.from_rpc_error(err) from None
        except asyncio.CancelledError:
            # drain() cancelled the backend call: end with a retryable status
            # rather than a bare cancellation (unless this task is being
            # cancelled itself: the client left).
            if self.draining and call.cancelled() and not _task_cancelling():
                raise Unavailable("SHUTTING_DOWN", "the edge is shutting down; reconnect") from None
            raise
        finally:
            # No-op if the stream ended; otherwise the client left (or the edge
            # drains) and the backend must stop producing for it.
            call.cancel()
            self._streams.discard(call)
            backend.release(address)

    @property
    def draining(self) -> bool:
        """Whether :meth:`drain` was called."""
        return self._draining

    @property
    def active_streams(self) -> int:
        """Streams being relayed right now."""
        return len(self._streams)

    def drain(self) -> None:
        """Ends every relayed stream with UNAVAILABLE (SHUTTING_DOWN) and refuses new ones."""
        self._draining = True
        for call in list(self._streams):
            call.cancel()

    async def close(self) -> None:
        """Closes the backend channels."""
        await self._pool.close()


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
