"""A real grpc.aio server with one interceptor under test and a scriptable servicer.

The servicer is ours for the test (it is what the interceptor wraps); the
server, channel and interceptor are the real thing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from chatmesh.v1 import (
    notification_service_pb2 as npb,
    notification_service_pb2_grpc as ngrpc,
    query_service_pb2 as qpb,
    query_service_pb2_grpc as qgrpc,
)
from mesh.core.auth import KeyDirectory, TokenVerifier


@dataclass
class Script:
    """What the servicer does on the next call."""

    unary: Callable[[Any, Any], Awaitable[Any]] | None = None
    stream_items: int = 2
    stream_error: Exception | None = None
    stream_hold: bool = False
    """After the items, keep the stream open until the client cancels it."""
    seen: list[Any] = field(default_factory=list)


class _Query(qgrpc.QueryServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    async def GetHistory(self, request: Any, context: Any) -> Any:
        self.script.seen.append(request)
        if self.script.unary is not None:
            return await self.script.unary(request, context)
        return qpb.GetHistoryResponse(last_seq=7)


class _Notification(ngrpc.NotificationServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    async def Subscribe(self, request: Any, context: Any) -> AsyncIterator[Any]:
        for i in range(self.script.stream_items):
            yield npb.SubscribeResponse(replay_complete=npb.ReplayComplete(replayed_events=i))
        if self.script.stream_error is not None:
            raise self.script.stream_error
        if self.script.stream_hold:
            await asyncio.Event().wait()


@dataclass
class Harness:
    script: Script
    query: qgrpc.QueryServiceStub
    notification: ngrpc.NotificationServiceStub
    channel: grpc.aio.Channel
    """The stubs' channel (for calls with raw bytes)."""


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyDirectory:
    keys = KeyDirectory(Path(tmp_path_factory.mktemp("keys")))
    keys.ensure()
    return keys


@pytest.fixture(scope="session")
def verifier(keys: KeyDirectory) -> TokenVerifier:
    return TokenVerifier(keys.public_key_pem())


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[list[Any]], Awaitable[Harness]]]:
    """Starts servers with the given interceptors; stops them after the test."""
    servers: list[grpc.aio.Server] = []
    channels: list[grpc.aio.Channel] = []

    async def start(interceptors: list[Any]) -> Harness:
        script = Script()
        server = grpc.aio.server(interceptors=interceptors)
        qgrpc.add_QueryServiceServicer_to_server(_Query(script), server)
        ngrpc.add_NotificationServiceServicer_to_server(_Notification(script), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return Harness(
            script,
            qgrpc.QueryServiceStub(channel),
            ngrpc.NotificationServiceStub(channel),
            channel,
        )

    yield start
    for channel in channels:
        await channel.close()
    for server in servers:
        await server.stop(None)
