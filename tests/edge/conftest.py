"""Fixtures for the regional edge tests: the dev mesh's edges and a few wire helpers."""

from __future__ import annotations

import asyncio
import base64
import struct
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import status_pb2

from chatmesh.v1 import command_service_pb2 as cpb, command_service_pb2_grpc as cgrpc
from mesh.harness.supervisor import Mesh
from tests.helpers import Auth


@dataclass(frozen=True)
class Edge:
    """One region's edge as a client sees it."""

    region: str
    grpc: str
    """host:port for native gRPC (h2c)."""
    http: str
    """Base URL for gRPC-Web and Connect."""


@pytest.fixture(scope="session")
def eu_edge(dev_mesh: Mesh) -> Edge:
    """The secondary region's edge (commands cross the WAN)."""
    ep = dev_mesh.endpoints["eu"]["edge"]
    return Edge("eu", ep["grpc"], ep["http"])


@pytest.fixture(scope="session")
def us_edge(dev_mesh: Mesh) -> Edge:
    """The primary region's edge."""
    ep = dev_mesh.endpoints["us-east"]["edge"]
    return Edge("us-east", ep["grpc"], ep["http"])


@pytest.fixture
async def eu_command(eu_edge: Edge) -> AsyncIterator[cgrpc.CommandServiceStub]:
    """A native gRPC CommandService stub on the eu edge."""
    async with grpc.aio.insecure_channel(eu_edge.grpc) as channel:
        yield cgrpc.CommandServiceStub(channel)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP/1.1 client, as a browser's fetch would be."""
    async with httpx.AsyncClient(timeout=15.0) as client:
        yield client


async def create_channel(
    stub: cgrpc.CommandServiceStub, auth: Auth, owner: str, name: str, *members: str
) -> str:
    """Creates a channel through ``stub`` and returns its id."""
    resp = await stub.CreateChannel(
        cpb.CreateChannelRequest(name=name, member_user_ids=list(members)),
        metadata=auth.md(owner),
        timeout=10,
    )
    return str(resp.channel.channel_id)


# -- gRPC-Web framing (what a browser's gRPC-Web client puts on the wire) ------------


def grpc_web_frame(message: Any) -> bytes:
    """One length-prefixed data frame."""
    body = message.SerializeToString()
    return struct.pack(">BI", 0, len(body)) + body


class GrpcWebReader:
    """Splits a gRPC-Web response body into data messages and the trailer frame."""

    def __init__(self) -> None:
        self._buffer = b""
        self.messages: deque[bytes] = deque()
        self.trailers: dict[str, str] | None = None

    def feed(self, chunk: bytes) -> None:
        """Adds bytes; complete data messages go to :attr:`messages`, the trailer frame to :attr:`trailers`."""
        self._buffer += chunk
        while len(self._buffer) >= 5:
            flags, length = struct.unpack(">BI", self._buffer[:5])
            if len(self._buffer) < 5 + length:
                break
            payload, self._buffer = self._buffer[5 : 5 + length], self._buffer[5 + length :]
            if flags & 0x80:
                self.trailers = {}
                for line in payload.decode().split("\r\n"):
                    if line:
                        key, _, value = line.partition(":")
                        self.trailers[key.strip().lower()] = value.strip()
            else:
                self.messages.append(payload)

    async def next_message(self, chunks: AsyncIterator[bytes], timeout: float = 15.0) -> bytes:
        """The next data message of a streaming body, reading more chunks as needed."""
        while not self.messages:
            assert self.trailers is None, f"the stream ended: {self.trailers}"
            self.feed(await asyncio.wait_for(anext(chunks), timeout))
        return self.messages.popleft()


def grpc_web_status(
    headers: httpx.Headers, trailers: dict[str, str] | None
) -> tuple[int, str, status_pb2.Status | None]:
    """``(grpc-status, grpc-message, details)`` of a gRPC-Web response (trailers-only or not)."""
    source: dict[str, str] = (
        dict(trailers) if trailers is not None else {k.lower(): v for k, v in headers.items()}
    )
    details = None
    if "grpc-status-details-bin" in source:
        raw = source["grpc-status-details-bin"]
        details = status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
    return int(source["grpc-status"]), urllib.parse.unquote(source.get("grpc-message", "")), details


def grpc_web_headers(token: str | None = None, **extra: str) -> dict[str, str]:
    """Request headers of a browser gRPC-Web call."""
    headers = {
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
        "x-user-agent": "grpc-web-javascript/0.1",
    }
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    headers.update({k.replace("_", "-"): v for k, v in extra.items()})
    return headers
