"""A small gRPC test client: one user in one region, speaking the public API."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import grpc

from chatmesh.v1 import (
    command_service_pb2 as cpb,
    command_service_pb2_grpc as cgrpc,
    events_pb2,
    notification_service_pb2 as npb,
    notification_service_pb2_grpc as ngrpc,
    query_service_pb2 as qpb,
    query_service_pb2_grpc as qgrpc,
)
from mesh.harness.supervisor import Mesh
from tests.helpers import Auth


class Stream:
    """A Subscribe stream read in the background into a queue of items."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.items: asyncio.Queue[npb.SubscribeResponse] = asyncio.Queue()
        self.arrivals: list[tuple[float, events_pb2.Event]] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.done = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                item = await self.call.read()
                if item is grpc.aio.EOF:
                    return
                if item.HasField("event"):
                    self.arrivals.append((time.perf_counter(), item.event))
                self.items.put_nowait(item)
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        except asyncio.CancelledError:
            pass
        finally:
            self.done.set()

    async def next(self, timeout: float = 10.0) -> npb.SubscribeResponse:
        """The next item (event, heartbeat or replay_complete).

        Raises:
            grpc.aio.AioRpcError: The stream ended with an error (surfaced at once,
                not as a timeout).
            TimeoutError: Nothing arrived within ``timeout``.
        """
        get = asyncio.ensure_future(self.items.get())
        ended = asyncio.ensure_future(self.done.wait())
        finished, _ = await asyncio.wait(
            {get, ended}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        ended.cancel()
        if get in finished:
            return get.result()
        get.cancel()
        if self.done.is_set() and self.items.empty():
            if self.error is not None:
                raise self.error
            raise AssertionError("the stream ended")
        raise TimeoutError(f"no stream item within {timeout}s")

    async def next_event(
        self, timeout: float = 10.0, *, kinds: tuple[str, ...] | None = None
    ) -> events_pb2.Event:
        """The next event (skipping heartbeats/markers and, with ``kinds``, other event kinds)."""
        deadline = time.monotonic() + timeout
        while True:
            item = await self.next(max(0.01, deadline - time.monotonic()))
            if item.HasField("event") and (
                kinds is None or item.event.WhichOneof("payload") in kinds
            ):
                return item.event

    async def replayed(self, timeout: float = 10.0) -> list[events_pb2.Event]:
        """Events up to ReplayComplete."""
        events = []
        while True:
            item = await self.next(timeout)
            if item.HasField("replay_complete"):
                return events
            if item.HasField("event"):
                events.append(item.event)

    async def close(self) -> None:
        """Cancels the call and stops reading."""
        self.call.cancel()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class User:
    """A user connected to one region's endpoints."""

    def __init__(self, mesh: Mesh, auth: Auth, user_id: str, region: str) -> None:
        self.user_id = user_id
        self.region = region
        self.auth = auth
        eps = mesh.endpoints[region]["grpc"]
        self._channels = [
            grpc.aio.insecure_channel(eps["command"]),
            grpc.aio.insecure_channel(eps["query"]),
            grpc.aio.insecure_channel(eps["notification"][0]),
        ]
        self.command = cgrpc.CommandServiceStub(self._channels[0])
        self.query = qgrpc.QueryServiceStub(self._channels[1])
        self.notification = ngrpc.NotificationServiceStub(self._channels[2])
        self.streams: list[Stream] = []

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        """Call metadata with a fresh token."""
        return self.auth.md(self.user_id)

    async def create_channel(self, name: str, *members: str, public: bool = False) -> str:
        from chatmesh.v1 import channel_pb2

        visibility = (
            channel_pb2.CHANNEL_VISIBILITY_PUBLIC
            if public
            else channel_pb2.CHANNEL_VISIBILITY_PRIVATE
        )
        resp = await self.command.CreateChannel(
            cpb.CreateChannelRequest(
                name=name, member_user_ids=list(members), visibility=visibility
            ),
            metadata=self.md,
        )
        return str(resp.channel.channel_id)

    async def send(
        self, channel_id: str, text: str, key: str | None = None
    ) -> cpb.SendMessageResponse:
        return await self.command.SendMessage(
            cpb.SendMessageRequest(
                channel_id=channel_id, text=text, client_msg_id=key or uuid.uuid4().hex
            ),
            metadata=self.md,
        )

    async def history(self, channel_id: str, **kw: Any) -> qpb.GetHistoryResponse:
        return await self.query.GetHistory(
            qpb.GetHistoryRequest(channel_id=channel_id, **kw), metadata=self.md
        )

    async def all_history(
        self, channel_id: str, *, page: int = 50, forward: bool = False
    ) -> list[Any]:
        """Every message, paging with after_seq (forward) or before_seq (backward)."""
        messages: list[Any] = []
        if forward:
            after = 0
            while True:
                resp = await self.history(channel_id, after_seq=after, limit=page)
                messages += list(resp.messages)
                if not resp.has_more:
                    return messages
                after = resp.messages[-1].seq
        before = 0
        while True:
            resp = (
                await self.history(channel_id, before_seq=before, limit=page)
                if before
                else await self.history(channel_id, limit=page)
            )
            messages = list(resp.messages) + messages
            if not resp.has_more:
                return messages
            before = resp.messages[0].seq

    async def subscribe(
        self, resume_from: dict[str, int] | None = None, *, wait_replay: bool = True
    ) -> Stream:
        call = self.notification.Subscribe(
            npb.SubscribeRequest(resume_from=resume_from or {}), metadata=self.md
        )
        stream = Stream(call)
        self.streams.append(stream)
        return stream

    async def close(self) -> None:
        for stream in self.streams:
            await stream.close()
        for channel in self._channels:
            await channel.close()
