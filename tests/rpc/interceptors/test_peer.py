"""PeerIdentity: the verified client certificate names the peer; roles gate methods; only edges set headers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
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
from mesh.deploy.tls import IdentityFiles, ServicePki
from mesh.rpc.interceptors import ErrorMapper, PeerIdentity
from mesh.rpc.interceptors.peer import current_peer, trusts_internal_headers
from mesh.rpc.status import from_rpc_error
from tests.rpc.interceptors.conftest import Harness, Script, _Notification, _Query

CH = "ch_" + "b" * 26


def _credentials(files: IdentityFiles) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        files.ca.read_bytes(), files.key.read_bytes(), files.cert.read_bytes()
    )


@pytest.fixture
async def mtls(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    """A mutual-TLS server with PeerIdentity(rules); returns a client as (role, name)."""
    pki = ServicePki(tmp_path / "pki")
    server_files = pki.issue("service", "query-test")
    servers: list[grpc.aio.Server] = []
    channels: list[grpc.aio.Channel] = []
    script = Script()
    port = 0

    async def client(role: str, name: str, rules: dict[str, list[str]] | None = None) -> Harness:
        nonlocal port
        if not servers:
            server = grpc.aio.server(interceptors=[ErrorMapper(), PeerIdentity(rules or {})])

            qgrpc.add_QueryServiceServicer_to_server(_Query(script), server)
            ngrpc.add_NotificationServiceServicer_to_server(_Notification(script), server)
            creds = grpc.ssl_server_credentials(
                [(server_files.key.read_bytes(), server_files.cert.read_bytes())],
                root_certificates=server_files.ca.read_bytes(),
                require_client_auth=True,
            )
            port = server.add_secure_port("127.0.0.1:0", creds)
            await server.start()
            servers.append(server)

        channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", _credentials(pki.issue(role, name)))
        channels.append(channel)
        return Harness(
            script, qgrpc.QueryServiceStub(channel), ngrpc.NotificationServiceStub(channel), channel
        )

    yield client
    for channel in channels:
        await channel.close()
    for server in servers:
        await server.stop(None)


async def test_the_handler_sees_the_peer_and_only_an_edge_is_trusted_with_headers(
    mtls: Callable[..., Awaitable[Harness]],
) -> None:
    seen: list[tuple[Any, bool]] = []

    async def handler(request: Any, context: Any) -> qpb.GetHistoryResponse:
        seen.append((current_peer(), trusts_internal_headers()))
        return qpb.GetHistoryResponse()

    edge = await mtls("edge", "eu")
    edge.script.unary = handler
    await edge.query.GetHistory(qpb.GetHistoryRequest(channel_id=CH))
    service = await mtls("service", "notification-eu-1")
    await service.query.GetHistory(qpb.GetHistoryRequest(channel_id=CH))
    operator = await mtls("operator", "harness")
    await operator.query.GetHistory(qpb.GetHistoryRequest(channel_id=CH))
    assert seen == [
        (("edge", "eu"), True),
        (("service", "notification-eu-1"), False),
        (("operator", "harness"), False),
    ]


async def test_a_role_rule_refuses_other_roles_before_the_handler(
    mtls: Callable[..., Awaitable[Harness]],
) -> None:
    rules = {"/chatmesh.v1.QueryService/": ["operator"]}
    edge = await mtls("edge", "eu", rules)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await edge.query.GetHistory(qpb.GetHistoryRequest(channel_id=CH))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert from_rpc_error(info.value).reason == "PEER_NOT_ALLOWED"
    assert edge.script.seen == []
    # Methods no rule names stay open to every verified peer (streams too).
    items = [r async for r in edge.notification.Subscribe(npb.SubscribeRequest())]
    assert len(items) == 2
    operator = await mtls("operator", "harness", rules)
    assert (await operator.query.GetHistory(qpb.GetHistoryRequest(channel_id=CH))).last_seq == 7
