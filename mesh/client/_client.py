"""ChatClient: one connection to a regional edge, every public RPC as a method."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from chatmesh.v1 import (
    channel_pb2,
    command_service_pb2 as cpb,
    command_service_pb2_grpc as cgrpc,
    notification_service_pb2 as npb,
    notification_service_pb2_grpc as ngrpc,
    query_service_pb2 as qpb,
    query_service_pb2_grpc as qgrpc,
)
from mesh.client._retry import Budget, RetryPolicy, retryable
from mesh.client._subscription import Subscription
from mesh.core.headers import AUTHORIZATION
from mesh.rpc.status import from_rpc_error

__all__ = ["DEFAULT_RETRY", "STREAM_RETRY", "ChatClient", "Metadata", "Token", "TokenProvider"]

logger = logging.getLogger("mesh.client")

TokenProvider = Callable[[], str | Awaitable[str]]
"""Returns the current bearer token (sync or async); called for every attempt, so it may refresh."""
Token = str | TokenProvider | None
"""A fixed token, a provider, or None (no ``authorization`` metadata)."""
Metadata = Sequence[tuple[str, str | bytes]]
"""Extra call metadata."""

DEFAULT_RETRY = RetryPolicy()
"""Unary calls: 5 attempts within 30 s, 10 s per attempt, jittered waits from 0.1 s up to 5 s."""
STREAM_RETRY = RetryPolicy(max_attempts=None, budget=60.0, attempt_timeout=None)
"""Subscribe reconnects: as many as fit in 60 s of consecutive failures (reset by a working stream)."""

_PRIVATE = channel_pb2.CHANNEL_VISIBILITY_PRIVATE


def new_key() -> str:
    """A fresh idempotency key (``client_msg_id`` / ``client_request_id``)."""
    return uuid.uuid4().hex


def _channel(
    target: str,
    *,
    tls: bool,
    ca_file: str | Path | None,
    server_name: str | None,
    options: Sequence[tuple[str, Any]],
    interceptors: Sequence[grpc.aio.ClientInterceptor],
) -> grpc.aio.Channel:
    opts = list(options)
    icpts = list(interceptors) or None
    if not tls:
        return grpc.aio.insecure_channel(target, options=opts, interceptors=icpts)
    roots = Path(ca_file).read_bytes() if ca_file else None
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.aio.secure_channel(target, credentials, options=opts, interceptors=icpts)


class _Stubs:
    """The generated stubs on one channel (the ``_pb2_grpc`` modules are untyped)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        command: Any = cgrpc.CommandServiceStub
        query: Any = qgrpc.QueryServiceStub
        notification: Any = ngrpc.NotificationServiceStub
        self.command: Any = command(channel)
        self.query: Any = query(channel)
        self.notification: Any = notification(channel)


class ChatClient:
    """A user's connection to one regional edge (or any server of the public API).

    Every method raises the :mod:`mesh.core.errors` class of the status it got
    (``PermissionDenied`` with ``reason == "NOT_A_MEMBER"`` ...), after retrying
    what :func:`~mesh.client.retryable` allows within the :class:`RetryPolicy`.
    Commands keep one idempotency key across their retries: ``client_msg_id`` /
    ``client_request_id`` is generated once per logical call when the caller gives
    none. A method's ``timeout`` is the budget of the whole logical call.

    Each method takes either the request message or keyword arguments for its
    fields. A request's own fields are sent as they are, except that an empty
    idempotency key is filled in (a retry without one could apply a command twice).

    Example:
        >>> async def hello(edge: dict) -> None:  # doctest: +SKIP
        ...     async with ChatClient.from_edge(edge, token="eyJ...") as client:
        ...         channel = (await client.create_channel("hello", ["bob"])).channel
        ...         await client.send_message(channel.channel_id, "hi bob")
        ...         async for event in client.subscribe({channel.channel_id: 0}):
        ...             print(event.seq, event.WhichOneof("payload"))
    """

    def __init__(
        self,
        target: str,
        *,
        token: Token = None,
        tls: bool = False,
        ca_file: str | Path | None = None,
        server_name: str | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        stream_retry: RetryPolicy = STREAM_RETRY,
        connections: int = 1,
        options: Sequence[tuple[str, Any]] = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        """Opens (lazily: gRPC connects on the first call) ``connections`` channels to ``target``.

        Args:
            target: ``host:port`` of the edge's gRPC listener.
            token: The bearer token, a provider of it, or None.
            tls: Use TLS (plain h2c otherwise).
            ca_file: PEM file of the CA to trust (TLS only); None: the system roots.
            server_name: Name to verify the server's certificate against, if not the host.
            retry: Retries of unary calls.
            stream_retry: Reconnects of :meth:`subscribe` streams.
            connections: HTTP/2 connections to spread calls over (round robin). Load
                generators use a few; an interactive client needs one.
            options: Extra grpc channel arguments.
            interceptors: grpc.aio client interceptors on every connection (the chaos
                suite's recorder taps Subscribe streams with one, before the client's
                de-duplication).
        """
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self.target = target
        self.tls = tls
        self.retry = retry
        self.stream_retry = stream_retry
        if connections > 1:
            # A channel of its own per connection: grpc-core would otherwise share one
            # subchannel between channels with equal arguments.
            options = [*options, ("grpc.use_local_subchannel_pool", 1)]
        self._channels = [
            _channel(
                target,
                tls=tls,
                ca_file=ca_file,
                server_name=server_name,
                options=options,
                interceptors=interceptors,
            )
            for _ in range(connections)
        ]
        self._stubs = [_Stubs(ch) for ch in self._channels]
        self._turn = itertools.cycle(self._stubs)
        self._owner = True
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._set_token(token)

    @classmethod
    def from_edge(
        cls, edge: Mapping[str, Any], *, token: Token = None, **kwargs: Any
    ) -> ChatClient:
        """A client for an edge as the harness state describes it.

        Args:
            edge: ``{"grpc": "host:port", "tls": bool, "ca_file": path or None, ...}``
                (``state["regions"][region]["edge"]``; ``http``/``admin`` are ignored).
            token: As for the constructor.
            **kwargs: Other constructor arguments.
        """
        return cls(
            str(edge["grpc"]),
            token=token,
            tls=bool(edge.get("tls", False)),
            ca_file=edge.get("ca_file"),
            **kwargs,
        )

    def with_token(self, token: Token) -> ChatClient:
        """Another user's client on the same connections (closing it leaves them open)."""
        other = object.__new__(ChatClient)
        other.__dict__.update(self.__dict__)
        other._owner = False
        other._subscriptions = weakref.WeakSet()
        other._set_token(token)
        return other

    def _set_token(self, token: Token) -> None:
        self._token_provider: TokenProvider | None = None
        self._auth: tuple[tuple[str, str | bytes], ...] = ()
        if isinstance(token, str):
            self._auth = ((AUTHORIZATION, f"Bearer {token}"),)
        elif token is not None:
            self._token_provider = token

    async def _metadata(self, extra: Metadata) -> tuple[tuple[str, str | bytes], ...]:
        auth = self._auth
        if self._token_provider is not None:
            token = self._token_provider()
            if inspect.isawaitable(token):
                token = await token
            auth = ((AUTHORIZATION, f"Bearer {token}"),)
        return (*auth, *extra) if extra else auth

    # -- the retry loop ------------------------------------------------------------------

    async def _unary(
        self,
        service: str,
        method: str,
        request: Any,
        *,
        idempotent: bool,
        timeout: float | None,
        metadata: Metadata,
    ) -> Any:
        budget = Budget(self.retry, timeout)
        while True:
            budget.start_attempt()
            stub = getattr(next(self._turn), service)
            md = await self._metadata(metadata)
            try:
                return await getattr(stub, method)(
                    request, metadata=md, timeout=budget.attempt_timeout()
                )
            except grpc.aio.AioRpcError as exc:
                err = from_rpc_error(exc)
                wait = (
                    budget.next_wait(server_delay=err.retry_delay)
                    if retryable(err, idempotent=idempotent)
                    else None
                )
                if wait is None:
                    raise err from exc
            logger.debug(
                "%s attempt %d failed (%s %s); retrying in %.3fs",
                method,
                budget.attempts,
                err.code,
                err.reason,
                wait,
            )
            await asyncio.sleep(wait)

    # -- CommandService --------------------------------------------------------------------

    async def create_channel(
        self,
        name: str | cpb.CreateChannelRequest,
        member_user_ids: Iterable[str] = (),
        *,
        visibility: channel_pb2.ChannelVisibility = _PRIVATE,
        client_request_id: str | None = None,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> cpb.CreateChannelResponse:
        """CommandService.CreateChannel: the caller and ``member_user_ids`` as members."""
        if isinstance(name, cpb.CreateChannelRequest):
            request = _with_key(name, "client_request_id")
        else:
            request = cpb.CreateChannelRequest(
                name=name,
                member_user_ids=list(member_user_ids),
                visibility=visibility,
                client_request_id=new_key() if client_request_id is None else client_request_id,
            )
        response: cpb.CreateChannelResponse = await self._unary(
            "command", "CreateChannel", request, idempotent=True, timeout=timeout, metadata=metadata
        )
        return response

    async def join_channel(
        self,
        channel_id: str | cpb.JoinChannelRequest,
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> cpb.JoinChannelResponse:
        """CommandService.JoinChannel.

        Retried on UNAVAILABLE only; a retry after an attempt that took effect answers
        ALREADY_EXISTS (ALREADY_MEMBER), as the RPC has no idempotency key.
        """
        request = (
            channel_id
            if isinstance(channel_id, cpb.JoinChannelRequest)
            else cpb.JoinChannelRequest(channel_id=channel_id)
        )
        response: cpb.JoinChannelResponse = await self._unary(
            "command", "JoinChannel", request, idempotent=False, timeout=timeout, metadata=metadata
        )
        return response

    async def leave_channel(
        self,
        channel_id: str | cpb.LeaveChannelRequest,
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> cpb.LeaveChannelResponse:
        """CommandService.LeaveChannel (retried on UNAVAILABLE only, as JoinChannel)."""
        request = (
            channel_id
            if isinstance(channel_id, cpb.LeaveChannelRequest)
            else cpb.LeaveChannelRequest(channel_id=channel_id)
        )
        response: cpb.LeaveChannelResponse = await self._unary(
            "command", "LeaveChannel", request, idempotent=False, timeout=timeout, metadata=metadata
        )
        return response

    async def send_message(
        self,
        channel_id: str | cpb.SendMessageRequest,
        text: str = "",
        *,
        client_msg_id: str | None = None,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> cpb.SendMessageResponse:
        """CommandService.SendMessage; every retry carries the same ``client_msg_id``.

        Args:
            channel_id: The channel, or a whole request.
            text: The text.
            client_msg_id: The idempotency key; None: a fresh one for this call.
            timeout: Budget of the call, retries included.
            metadata: Extra call metadata.
        """
        if isinstance(channel_id, cpb.SendMessageRequest):
            request = _with_key(channel_id, "client_msg_id")
        else:
            request = cpb.SendMessageRequest(
                channel_id=channel_id,
                text=text,
                client_msg_id=new_key() if client_msg_id is None else client_msg_id,
            )
        response: cpb.SendMessageResponse = await self._unary(
            "command", "SendMessage", request, idempotent=True, timeout=timeout, metadata=metadata
        )
        return response

    async def edit_message(
        self,
        channel_id: str | cpb.EditMessageRequest,
        message_id: str = "",
        text: str = "",
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> cpb.EditMessageResponse:
        """CommandService.EditMessage (setting a text twice is the same as once)."""
        request = (
            channel_id
            if isinstance(channel_id, cpb.EditMessageRequest)
            else cpb.EditMessageRequest(channel_id=channel_id, message_id=message_id, text=text)
        )
        response: cpb.EditMessageResponse = await self._unary(
            "command", "EditMessage", request, idempotent=True, timeout=timeout, metadata=metadata
        )
        return response

    async def delete_message(
        self,
        channel_id: str | cpb.DeleteMessageRequest,
        message_id: str = "",
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> cpb.DeleteMessageResponse:
        """CommandService.DeleteMessage (deleting a deleted message succeeds)."""
        request = (
            channel_id
            if isinstance(channel_id, cpb.DeleteMessageRequest)
            else cpb.DeleteMessageRequest(channel_id=channel_id, message_id=message_id)
        )
        response: cpb.DeleteMessageResponse = await self._unary(
            "command", "DeleteMessage", request, idempotent=True, timeout=timeout, metadata=metadata
        )
        return response

    async def set_typing(
        self,
        channel_id: str | cpb.SetTypingRequest,
        typing: bool = True,
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> cpb.SetTypingResponse:
        """CommandService.SetTyping (ephemeral)."""
        request = (
            channel_id
            if isinstance(channel_id, cpb.SetTypingRequest)
            else cpb.SetTypingRequest(channel_id=channel_id, typing=typing)
        )
        response: cpb.SetTypingResponse = await self._unary(
            "command", "SetTyping", request, idempotent=True, timeout=timeout, metadata=metadata
        )
        return response

    async def mark_read(
        self,
        channel_id: str | cpb.MarkReadRequest,
        seq: int = 0,
        *,
        read_through_origins: Mapping[str, int] | None = None,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> cpb.MarkReadResponse:
        """CommandService.MarkRead (the marker only moves forward).

        Args:
            channel_id: The channel (or a whole request).
            seq: Primary write mode: the highest seq read.
            read_through_origins: Every-region write mode (ADR-026): origin region ->
                the highest ``origin_seq`` read, e.g. a :class:`Subscription`'s
                ``positions.origins(channel_id)`` or :meth:`origin_positions`. The
                response's ``last_read_origins`` is the merged marker.
            timeout: Deadline of the call.
            metadata: Extra call metadata.
        """
        request = (
            channel_id
            if isinstance(channel_id, cpb.MarkReadRequest)
            else cpb.MarkReadRequest(
                channel_id=channel_id, seq=seq, read_through_origins=read_through_origins or {}
            )
        )
        response: cpb.MarkReadResponse = await self._unary(
            "command", "MarkRead", request, idempotent=True, timeout=timeout, metadata=metadata
        )
        return response

    # -- QueryService ------------------------------------------------------------------------

    async def get_history(
        self,
        channel_id: str | qpb.GetHistoryRequest,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int | None = None,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> qpb.GetHistoryResponse:
        """QueryService.GetHistory: a page, ascending by seq (bounds as in the contract)."""
        if isinstance(channel_id, qpb.GetHistoryRequest):
            request = channel_id
        else:
            request = qpb.GetHistoryRequest(channel_id=channel_id)
            if before_seq is not None:
                request.before_seq = before_seq
            if after_seq is not None:
                request.after_seq = after_seq
            if limit is not None:
                request.limit = limit
        response: qpb.GetHistoryResponse = await self._unary(
            "query", "GetHistory", request, idempotent=True, timeout=timeout, metadata=metadata
        )
        return response

    async def get_channel(
        self,
        channel_id: str | qpb.GetChannelRequest,
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> qpb.GetChannelResponse:
        """QueryService.GetChannel."""
        request = (
            channel_id
            if isinstance(channel_id, qpb.GetChannelRequest)
            else qpb.GetChannelRequest(channel_id=channel_id)
        )
        response: qpb.GetChannelResponse = await self._unary(
            "query", "GetChannel", request, idempotent=True, timeout=timeout, metadata=metadata
        )
        return response

    async def list_channels(
        self,
        request: qpb.ListChannelsRequest | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> qpb.ListChannelsResponse:
        """QueryService.ListChannels: the caller's channels, most recently active first."""
        response: qpb.ListChannelsResponse = await self._unary(
            "query",
            "ListChannels",
            request or qpb.ListChannelsRequest(),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
        )
        return response

    async def get_presence(
        self,
        user_ids: Iterable[str] | qpb.GetPresenceRequest,
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
    ) -> qpb.GetPresenceResponse:
        """QueryService.GetPresence, in request order."""
        request = (
            user_ids
            if isinstance(user_ids, qpb.GetPresenceRequest)
            else qpb.GetPresenceRequest(user_ids=list(user_ids))
        )
        response: qpb.GetPresenceResponse = await self._unary(
            "query", "GetPresence", request, idempotent=True, timeout=timeout, metadata=metadata
        )
        return response

    async def channel_positions(self, *, timeout: float | None = None) -> dict[str, int]:
        """Each of the caller's channels with its newest seq known to this region.

        Pass it as ``subscribe(resume_from=...)`` to have every channel positioned from
        the start: a channel without a position is resumed only once an event of it
        arrived, so one silent before a disconnect would miss what was sent meanwhile.
        """
        listed = await self.list_channels(timeout=timeout)
        return {s.channel.channel_id: int(s.channel.last_seq) for s in listed.channels}

    async def origin_positions(
        self, channel_id: str, *, timeout: float | None = None
    ) -> dict[str, int]:
        """Every-region write mode: the channel's newest origin_seq per origin region here.

        Pass ``{channel_id: ...}`` as ``subscribe(resume_from_origins=...)`` after
        reading the channel's history, to go live exactly after what it held.
        """
        page = await self.get_history(channel_id, limit=1, timeout=timeout)
        return {origin: int(n) for origin, n in page.last_origin_seqs.items()}

    # -- NotificationService -----------------------------------------------------------------

    def subscribe(
        self,
        resume_from: Mapping[str, int] | None = None,
        *,
        resume_from_origins: Mapping[str, Mapping[str, int]] | None = None,
        reconnect: bool = True,
        heartbeat_watchdog: bool = True,
        retry: RetryPolicy | None = None,
        metadata: Metadata = (),
    ) -> Subscription:
        """NotificationService.Subscribe as a :class:`Subscription` (nothing is sent until iterated).

        Args:
            resume_from: Channel -> last seq the caller has; the server replays after it.
            resume_from_origins: Every-region write mode: channel -> origin region -> last
                origin_seq the caller has (e.g. :meth:`origin_positions`); the server
                replays each origin after it. A channel in neither map starts live.
            reconnect: Reconnect and resume when the stream ends transiently.
            heartbeat_watchdog: Treat a stream silent past its heartbeat timeout as dead.
            retry: Reconnect policy; None: the client's ``stream_retry``.
            metadata: Extra call metadata.
        """

        async def open_stream(positions: dict[str, int], origins: dict[str, dict[str, int]]) -> Any:
            md = await self._metadata(metadata)
            stub = next(self._turn).notification
            request = npb.SubscribeRequest(resume_from=positions)
            for channel_id, at in origins.items():
                request.resume_from_origins[channel_id].origin_seqs.update(at)
            return stub.Subscribe(request, metadata=md)

        async def last_origin_seqs(channel_id: str) -> dict[str, int]:
            return await self.origin_positions(channel_id, timeout=10.0)

        async def last_seq(channel_id: str, after_seq: int) -> int:
            page = await self.get_history(channel_id, after_seq=after_seq, limit=1, timeout=10.0)
            return int(page.last_seq)

        subscription = Subscription(
            open_stream,
            resume_from,
            retry=retry or self.stream_retry,
            reconnect=reconnect,
            heartbeat_watchdog=heartbeat_watchdog,
            last_seq=last_seq,
            resume_from_origins=resume_from_origins,
            last_origin_seqs=last_origin_seqs,
        )
        self._subscriptions.add(subscription)
        return subscription

    # -- lifetime ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Ends this client's subscriptions and, if it owns them, closes the connections."""
        for subscription in list(self._subscriptions):
            await subscription.close()
        if self._owner:
            for channel in self._channels:
                await channel.close(None)

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _with_key(request: Any, field: str) -> Any:
    """``request``, or a copy with a fresh idempotency key in ``field`` if it had none."""
    if getattr(request, field):
        return request
    copy = type(request)()
    copy.CopyFrom(request)
    setattr(copy, field, new_key())
    return copy
