"""The end-to-end tests' user: one user in one region, entering through that region's edge.

A thin test wrapper over :class:`mesh.client.ChatClient` (the client applications
use): it adds a background reader per stream, so tests can wait for the next item
with a timeout, and holds every stream to the server's contract of no duplicate
and no out-of-order event (the client drops such events; the tests count them).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from chatmesh.v1 import (
    channel_pb2,
    command_service_pb2 as cpb,
    events_pb2,
    notification_service_pb2 as npb,
    query_service_pb2 as qpb,
)
from mesh.client import ChatClient, RetryPolicy, Subscription
from mesh.core.auth import mint
from mesh.core.errors import ChatmeshError
from mesh.harness.supervisor import Mesh
from tests.helpers import Auth


class Stream:
    """A Subscribe stream (auto-resuming) read in the background into a queue of items."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.items: asyncio.Queue[npb.SubscribeResponse] = asyncio.Queue()
        self.arrivals: list[tuple[float, events_pb2.Event]] = []
        self.error: ChatmeshError | None = None
        self.done = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for item in self.subscription.responses():
                if item.HasField("event"):
                    self.arrivals.append((time.perf_counter(), item.event))
                self.items.put_nowait(item)
        except ChatmeshError as exc:
            self.error = exc
        except asyncio.CancelledError:
            pass
        finally:
            self.done.set()

    async def next(self, timeout: float = 10.0) -> npb.SubscribeResponse:
        """The next item (event, heartbeat or replay_complete).

        Raises:
            ChatmeshError: The stream ended with an error it does not resume from
                (surfaced at once, not as a timeout).
            TimeoutError: Nothing arrived within ``timeout``.
        """
        get = asyncio.ensure_future(self.items.get())
        ended = asyncio.ensure_future(self.done.wait())
        finished, _ = await asyncio.wait(
            {get, ended}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        ended.cancel()
        assert self.subscription.duplicates == 0, "the server sent a duplicate or older event"
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
        """Ends the subscription and stops reading."""
        await self.subscription.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class User:
    """A user connected to one region's edge, as an application would be."""

    def __init__(self, mesh: Mesh, auth: Auth, user_id: str, region: str) -> None:
        self.user_id = user_id
        self.region = region
        self.auth = auth
        # Patient with RATE_LIMITED: some tests send faster than a user's bucket
        # (dev: 20 msg/s) and wait as the server's RetryInfo says, within the budget.
        self.client = ChatClient.from_edge(
            mesh.endpoints[region]["edge"],
            token=mint(auth.keys, user_id),
            retry=RetryPolicy(max_attempts=None),
        )
        self.streams: list[Stream] = []

    async def create_channel(self, name: str, *members: str, public: bool = False) -> str:
        visibility = (
            channel_pb2.CHANNEL_VISIBILITY_PUBLIC
            if public
            else channel_pb2.CHANNEL_VISIBILITY_PRIVATE
        )
        resp = await self.client.create_channel(name, members, visibility=visibility)
        return str(resp.channel.channel_id)

    async def send(
        self, channel_id: str, text: str, key: str | None = None
    ) -> cpb.SendMessageResponse:
        return await self.client.send_message(channel_id, text, client_msg_id=key)

    async def history(self, channel_id: str, **kw: Any) -> qpb.GetHistoryResponse:
        return await self.client.get_history(channel_id, **kw)

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
        self, resume_from: dict[str, int] | None = None, *, reconnect: bool = True
    ) -> Stream:
        stream = Stream(self.client.subscribe(resume_from, reconnect=reconnect))
        self.streams.append(stream)
        return stream

    async def close(self) -> None:
        for stream in self.streams:
            await stream.close()
        await self.client.close()
