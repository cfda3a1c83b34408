"""A real grpc.aio server with a scriptable servicer, for the client's own behaviour.

The servicer is the test's (it decides which attempt fails how); the server, the
error interceptor that turns its exceptions into statuses, the channel and the
client are the real thing. The client against the real mesh is tested in
tests/services/.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chatmesh.v1 import (
    command_service_pb2 as cpb,
    command_service_pb2_grpc as cgrpc,
    message_pb2,
    notification_service_pb2 as npb,
    notification_service_pb2_grpc as ngrpc,
    query_service_pb2 as qpb,
    query_service_pb2_grpc as qgrpc,
)
from mesh.rpc.interceptors import ErrorMapper

HANG = "hang"
"""A script step: the attempt never answers (the client's attempt timeout ends it)."""


@dataclass
class Call:
    method: str
    request: Any
    metadata: dict[str, str]


@dataclass
class Connection:
    """What one Subscribe call does: yield ``items``, then end with ``end``."""

    items: list[npb.SubscribeResponse]
    end: Exception | str | None = None
    """An exception to raise, HANG to stay open silently, or None to end cleanly."""


@dataclass
class Script:
    """The scripted server's plan: failures per attempt, streams per connection."""

    failures: list[Exception | str] = field(default_factory=list)
    """Raised (or HANG) by the next unary calls, in order; then calls succeed."""
    connections: list[Connection] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)

    def record(self, method: str, request: Any, context: Any) -> None:
        md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.calls.append(Call(method, request, md))

    async def outcome(self) -> None:
        if self.failures:
            step = self.failures.pop(0)
            if step == HANG:
                await asyncio.Event().wait()
            assert isinstance(step, Exception)
            raise step

    def of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]


class _Command(cgrpc.CommandServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    async def SendMessage(self, request: Any, context: Any) -> Any:
        self.script.record("SendMessage", request, context)
        await self.script.outcome()
        message = message_pb2.Message(channel_id=request.channel_id, text=request.text, seq=7)
        return cpb.SendMessageResponse(message=message)

    async def JoinChannel(self, request: Any, context: Any) -> Any:
        self.script.record("JoinChannel", request, context)
        await self.script.outcome()
        return cpb.JoinChannelResponse()

    async def CreateChannel(self, request: Any, context: Any) -> Any:
        self.script.record("CreateChannel", request, context)
        await self.script.outcome()
        return cpb.CreateChannelResponse()


class _Query(qgrpc.QueryServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    async def GetHistory(self, request: Any, context: Any) -> Any:
        self.script.record("GetHistory", request, context)
        await self.script.outcome()
        return qpb.GetHistoryResponse(last_seq=42)


class _Notification(ngrpc.NotificationServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    async def Subscribe(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.script.record("Subscribe", request, context)
        if not self.script.connections:
            await asyncio.Event().wait()  # nothing more scripted: stay open, silent
        conn = self.script.connections.pop(0)
        for item in conn.items:
            yield item
        if conn.end == HANG:
            await asyncio.Event().wait()
        if isinstance(conn.end, Exception):
            raise conn.end


@dataclass
class Server:
    script: Script
    target: str


def event(channel_id: str, seq: int, text: str = "") -> npb.SubscribeResponse:
    from chatmesh.v1 import events_pb2

    msg = message_pb2.Message(channel_id=channel_id, seq=seq, text=text or f"m{seq}")
    return npb.SubscribeResponse(
        event=events_pb2.Event(
            channel_id=channel_id, seq=seq, message_created=events_pb2.MessageCreated(message=msg)
        )
    )


def replay_complete(replayed: int = 0) -> npb.SubscribeResponse:
    return npb.SubscribeResponse(replay_complete=npb.ReplayComplete(replayed_events=replayed))


def heartbeat(timeout_ms: int) -> npb.SubscribeResponse:
    return npb.SubscribeResponse(heartbeat=npb.Heartbeat(timeout_ms=timeout_ms))


@dataclass(frozen=True)
class Tls:
    ca_file: Path
    key_pem: bytes
    cert_pem: bytes


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A self-signed CA-less certificate for 127.0.0.1 (the client trusts it as its CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chatmesh-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    ca_file = Path(tmp_path_factory.mktemp("tls")) / "ca.pem"
    ca_file.write_bytes(cert_pem)
    return Tls(ca_file, key_pem, cert_pem)


@pytest.fixture
async def serve(tls: Tls) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """Starts scripted servers (``secure=True``: TLS with the ``tls`` certificate)."""
    servers: list[grpc.aio.Server] = []

    async def start(*, secure: bool = False) -> Server:
        script = Script()
        server = grpc.aio.server(interceptors=[ErrorMapper()])
        cgrpc.add_CommandServiceServicer_to_server(_Command(script), server)
        qgrpc.add_QueryServiceServicer_to_server(_Query(script), server)
        ngrpc.add_NotificationServiceServicer_to_server(_Notification(script), server)
        if secure:
            creds = grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)])
            port = server.add_secure_port("127.0.0.1:0", creds)
        else:
            port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return Server(script, f"127.0.0.1:{port}")

    yield start
    for server in servers:
        await server.stop(None)
