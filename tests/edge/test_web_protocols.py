"""gRPC-Web and Connect through the Envoy edge: streams, deadlines, tokens, CORS, rich errors (issues 6, 11)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid

import grpc
import httpx
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pyqwest import Client as PyqwestClient, HTTPTransport, HTTPVersion

from chatmesh.v1 import (
    command_service_pb2 as cpb,
    command_service_pb2_grpc as cgrpc,
    fanout_service_pb2 as fpb,
    fanout_service_pb2_grpc as fgrpc,
    notification_service_pb2 as npb,
    notification_service_pb2_grpc as ngrpc,
    query_service_pb2 as qpb,
)
from chatmesh.v1.command_service_connect import CommandServiceClient
from chatmesh.v1.notification_service_connect import NotificationServiceClient
from chatmesh.v1.query_service_connect import QueryServiceClient
from mesh.core.auth import KeyDirectory, mint
from mesh.harness.identity import internal_channel
from mesh.harness.supervisor import Mesh
from mesh.rpc.status import from_rpc_error
from tests.edge.conftest import (
    Edge,
    GrpcWebReader,
    create_channel,
    grpc_web_frame,
    grpc_web_headers,
    grpc_web_status,
)
from tests.helpers import Auth, eventually

pytestmark = pytest.mark.services

ALLOWED_ORIGIN = "http://localhost:5173"


def _reason(status: status_pb2.Status | None) -> str:
    assert status is not None, "no grpc-status-details-bin"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


async def _grpc_web_unary(
    http: httpx.AsyncClient, edge: Edge, method: str, request: object, headers: dict[str, str]
) -> tuple[httpx.Response, list[bytes], dict[str, str] | None]:
    resp = await http.post(f"{edge.http}{method}", content=grpc_web_frame(request), headers=headers)
    reader = GrpcWebReader()
    reader.feed(resp.content)
    return resp, list(reader.messages), reader.trailers


# -- unary and server streaming on both browser protocols ---------------------------


async def test_grpc_web_unary_over_http1(
    http: httpx.AsyncClient, eu_edge: Edge, auth: Auth
) -> None:
    token = mint(auth.keys, "web-ana")
    resp, messages, trailers = await _grpc_web_unary(
        http,
        eu_edge,
        "/chatmesh.v1.CommandService/CreateChannel",
        cpb.CreateChannelRequest(name="grpc-web", member_user_ids=["web-ben"]),
        grpc_web_headers(token),
    )
    assert resp.http_version == "HTTP/1.1"
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/grpc-web")
    assert grpc_web_status(resp.headers, trailers)[0] == 0
    created = cpb.CreateChannelResponse.FromString(messages[0])
    assert list(created.channel.member_user_ids) == ["web-ana", "web-ben"]


async def test_grpc_web_server_stream_relays_live_events(
    http: httpx.AsyncClient, eu_edge: Edge, eu_command: cgrpc.CommandServiceStub, auth: Auth
) -> None:
    channel = await create_channel(eu_command, auth, "web-cy", "grpc-web-stream")
    request = npb.SubscribeRequest(resume_from={channel: 0})
    async with http.stream(
        "POST",
        f"{eu_edge.http}/chatmesh.v1.NotificationService/Subscribe",
        content=grpc_web_frame(request),
        headers=grpc_web_headers(mint(auth.keys, "web-cy")),
    ) as resp:
        assert resp.status_code == 200
        reader = GrpcWebReader()
        chunks = resp.aiter_raw()

        async def next_item() -> npb.SubscribeResponse:
            return npb.SubscribeResponse.FromString(await reader.next_message(chunks))

        while not (await next_item()).HasField("replay_complete"):
            pass
        await eu_command.SendMessage(
            cpb.SendMessageRequest(
                channel_id=channel, text="to the browser", client_msg_id=uuid.uuid4().hex
            ),
            metadata=auth.md("web-cy"),
            timeout=10,
        )
        while True:
            item = await next_item()
            if item.HasField("event") and item.event.WhichOneof("payload") == "message_created":
                break
        assert item.event.message_created.message.text == "to the browser"


async def test_connect_unary_and_stream(
    eu_edge: Edge, eu_command: cgrpc.CommandServiceStub, auth: Auth
) -> None:
    channel = await create_channel(eu_command, auth, "con-dee", "connect")
    headers = {"authorization": f"Bearer {mint(auth.keys, 'con-dee')}"}
    async with (
        CommandServiceClient(eu_edge.http, protocol=ProtocolType.CONNECT) as commands,
        NotificationServiceClient(eu_edge.http, protocol=ProtocolType.CONNECT) as notifications,
    ):
        await _connect_round_trip(commands, notifications, channel, headers)


async def _connect_round_trip(
    commands: CommandServiceClient,
    notifications: NotificationServiceClient,
    channel: str,
    headers: dict[str, str],
) -> None:
    sent = await commands.send_message(
        cpb.SendMessageRequest(
            channel_id=channel, text="over connect", client_msg_id=uuid.uuid4().hex
        ),
        headers=headers,
    )
    assert sent.message.text == "over connect"
    items: list[npb.SubscribeResponse] = []

    async def read() -> None:
        async for item in notifications.subscribe(
            npb.SubscribeRequest(resume_from={channel: 0}), headers=headers
        ):
            items.append(item)
            if (
                item.HasField("event")
                and item.event.message_created.message.text == "live over connect"
            ):
                return

    reader = asyncio.create_task(read())
    try:
        await eventually(lambda: _replayed(items), timeout=15, what="replay over Connect")
        await commands.send_message(
            cpb.SendMessageRequest(
                channel_id=channel, text="live over connect", client_msg_id=uuid.uuid4().hex
            ),
            headers=headers,
        )
        await asyncio.wait_for(reader, 15)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    texts = [
        i.event.message_created.message.text
        for i in items
        if i.HasField("event") and i.event.WhichOneof("payload") == "message_created"
    ]
    assert texts == ["over connect", "live over connect"]


async def _replayed(items: list[npb.SubscribeResponse]) -> bool:
    return any(i.HasField("replay_complete") for i in items)


async def test_one_port_speaks_grpc_grpc_web_and_connect(eu_edge: Edge, auth: Auth) -> None:
    """grpcio (prior-knowledge h2c), connectrpc's gRPC over HTTP/2, gRPC-Web and Connect over HTTP/1.1."""
    async with grpc.aio.insecure_channel(eu_edge.grpc) as channel:
        resp = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    headers = {"authorization": f"Bearer {mint(auth.keys, 'port-eve')}"}
    h2 = PyqwestClient(HTTPTransport(http_version=HTTPVersion.HTTP2))
    async with (
        QueryServiceClient(eu_edge.http, protocol=ProtocolType.GRPC, http_client=h2) as over_h2,
        QueryServiceClient(eu_edge.http, protocol=ProtocolType.GRPC_WEB) as over_h1,
        QueryServiceClient(eu_edge.http, protocol=ProtocolType.CONNECT) as connect,
    ):
        for client in (over_h2, over_h1, connect):
            listed = await client.list_channels(qpb.ListChannelsRequest(), headers=headers)
            assert list(listed.channels) == []
    async with httpx.AsyncClient(http1=False, http2=True) as prior_knowledge:
        resp = await prior_knowledge.post(
            f"{eu_edge.http}/grpc.health.v1.Health/Check",
            content=health_pb2.HealthCheckRequest().SerializeToString(),
            headers={"connect-protocol-version": "1", "content-type": "application/proto"},
        )
        assert resp.http_version == "HTTP/2"
        assert resp.status_code == 200
        assert health_pb2.HealthCheckResponse.FromString(resp.content).status == (
            health_pb2.HealthCheckResponse.SERVING
        )


async def test_connect_json_is_refused_clearly(
    http: httpx.AsyncClient, eu_edge: Edge, auth: Auth
) -> None:
    """The services speak protobuf only and Envoy's bridge does not transcode: JSON stops at the edge."""
    for path, body in (
        ("/chatmesh.v1.QueryService/ListChannels", {}),
        ("/grpc.health.v1.Health/Check", {}),
    ):
        resp = await http.post(
            f"{eu_edge.http}{path}",
            json=body,
            headers={
                "connect-protocol-version": "1",
                "authorization": f"Bearer {mint(auth.keys, 'json-jo')}",
            },
        )
        assert resp.status_code == 501, path
        assert resp.json()["code"] == "unimplemented"
        assert "binary codec" in resp.json()["message"]


# -- deadlines ----------------------------------------------------------------------


async def test_tiny_deadline_is_deadline_exceeded(
    http: httpx.AsyncClient, eu_edge: Edge, auth: Auth
) -> None:
    token = mint(auth.keys, "dl-fay")
    request = cpb.CreateChannelRequest(name="never")
    resp, _, trailers = await _grpc_web_unary(
        http,
        eu_edge,
        "/chatmesh.v1.CommandService/CreateChannel",
        request,
        grpc_web_headers(token, grpc_timeout="1m"),
    )
    assert grpc_web_status(resp.headers, trailers)[0] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    # Connect (binary codec): the edge answers in Connect's own error format.
    resp = await http.post(
        f"{eu_edge.http}/chatmesh.v1.CommandService/CreateChannel",
        content=request.SerializeToString(),
        headers={
            "authorization": f"Bearer {token}",
            "content-type": "application/proto",
            "connect-protocol-version": "1",
            "connect-timeout-ms": "1",
        },
    )
    # The code is what Connect clients read. Envoy's bridge maps deadline_exceeded
    # to HTTP 408 when the service reports it, the edge's own reply uses 504.
    assert resp.status_code in (408, 504)
    assert resp.json()["code"] == "deadline_exceeded"


async def test_deadline_bounds_the_forwarded_call(
    http: httpx.AsyncClient, eu_edge: Edge, eu_command: cgrpc.CommandServiceStub, auth: Auth
) -> None:
    """A deadline shorter than the WAN round trip (70 ms) ends the call with DEADLINE_EXCEEDED.

    Raw gRPC-Web requests do not enforce deadlines themselves, so the status
    comes from the edge; then the same call with time to spare goes through.
    """
    channel = await create_channel(eu_command, auth, "dl-gus", "deadline")
    request = cpb.SendMessageRequest(
        channel_id=channel, text="late", client_msg_id=uuid.uuid4().hex
    )
    resp, messages, trailers = await _grpc_web_unary(
        http,
        eu_edge,
        "/chatmesh.v1.CommandService/SendMessage",
        request,
        grpc_web_headers(mint(auth.keys, "dl-gus"), grpc_timeout="30m"),
    )
    assert resp.status_code == 200  # gRPC-Web clients read grpc-status only from a 200
    assert grpc_web_status(resp.headers, trailers)[0] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert messages == []
    # With time to spare, the same call goes through.
    resp, messages, trailers = await _grpc_web_unary(
        http,
        eu_edge,
        "/chatmesh.v1.CommandService/SendMessage",
        request,
        grpc_web_headers(mint(auth.keys, "dl-gus"), grpc_timeout="5S"),
    )
    assert grpc_web_status(resp.headers, trailers)[0] == 0
    assert cpb.SendMessageResponse.FromString(messages[0]).message.text == "late"


# -- authentication at the edge -----------------------------------------------------


async def _command_unauthenticated_count(http: httpx.AsyncClient, mesh: Mesh) -> float:
    """UNAUTHENTICATED SendMessage calls the primary's Command Service has seen."""
    metrics = mesh.services["command-us-east"].metrics
    text = (await http.get(metrics)).text
    for line in text.splitlines():
        if (
            line.startswith("chatmesh_rpc_requests_total{")
            and 'method="/chatmesh.v1.CommandService/SendMessage"' in line
            and 'code="UNAUTHENTICATED"' in line
            and 'service="command"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_missing_and_bad_tokens_stop_at_the_edge(
    http: httpx.AsyncClient,
    dev_mesh: Mesh,
    eu_edge: Edge,
    eu_command: cgrpc.CommandServiceStub,
    auth: Auth,
) -> None:
    channel = await create_channel(eu_command, auth, "tok-hal", "tokens")
    request = cpb.SendMessageRequest(
        channel_id=channel, text="sneaky", client_msg_id=uuid.uuid4().hex
    )
    other = KeyDirectory(dev_mesh.run_dir / "other-keys")
    other.ensure()
    before = await _command_unauthenticated_count(http, dev_mesh)
    cases = {
        "missing": (None, "TOKEN_MISSING"),
        "garbage": ("not-a-jwt", "TOKEN_INVALID"),
        "forged": (mint(other, "tok-hal"), "TOKEN_INVALID"),
        "expired": (
            mint(auth.keys, "tok-hal", ttl_seconds=1, now=time.time() - 3600),
            "TOKEN_EXPIRED",
        ),
    }
    for name, (token, reason) in cases.items():
        resp, messages, trailers = await _grpc_web_unary(
            http,
            eu_edge,
            "/chatmesh.v1.CommandService/SendMessage",
            request,
            grpc_web_headers(token),
        )
        code, _, details = grpc_web_status(resp.headers, trailers)
        assert code == grpc.StatusCode.UNAUTHENTICATED.value[0], name
        assert _reason(details) == reason, name
        assert messages == []
        # gRPC-Web clients ignore grpc-status on anything but HTTP 200.
        assert resp.status_code == 200, name
        # Connect reports the same, in its JSON error format.
        connect_headers = {"connect-protocol-version": "1", "content-type": "application/proto"}
        if token is not None:
            connect_headers["authorization"] = f"Bearer {token}"
        resp = await http.post(
            f"{eu_edge.http}/chatmesh.v1.CommandService/SendMessage",
            content=request.SerializeToString(),
            headers=connect_headers,
        )
        assert resp.status_code == 401, name
        error = resp.json()
        assert error["code"] == "unauthenticated"
        [detail] = error["details"]
        info = error_details_pb2.ErrorInfo.FromString(
            base64.b64decode(detail["value"] + "=" * (-len(detail["value"]) % 4))
        )
        assert (detail["type"], info.reason) == ("google.rpc.ErrorInfo", reason), name
        # Native gRPC too.
        async with grpc.aio.insecure_channel(eu_edge.grpc) as native:
            md = () if token is None else (("authorization", f"Bearer {token}"),)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await cgrpc.CommandServiceStub(native).SendMessage(request, metadata=md, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
        assert from_rpc_error(err.value).reason == reason, name
    # None of them reached the Command Service across the WAN.
    assert await _command_unauthenticated_count(http, dev_mesh) == before


# -- CORS ---------------------------------------------------------------------------


async def test_allowed_origin_preflight_and_exposed_headers(
    http: httpx.AsyncClient, eu_edge: Edge, auth: Auth
) -> None:
    resp = await http.options(
        f"{eu_edge.http}/chatmesh.v1.CommandService/SendMessage",
        headers={
            "origin": ALLOWED_ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type, x-grpc-web, x-user-agent, grpc-timeout",
        },
    )
    assert resp.is_success
    assert resp.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in resp.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in resp.headers["access-control-allow-headers"].split(",")}
    assert {
        "authorization",
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
    } <= allowed
    assert "x-chatmesh-origin-region" not in allowed
    assert int(resp.headers["access-control-max-age"]) > 0
    # The actual call: the browser may read the gRPC status headers.
    resp, _, trailers = await _grpc_web_unary(
        http,
        eu_edge,
        "/chatmesh.v1.QueryService/ListChannels",
        qpb.ListChannelsRequest(),
        grpc_web_headers(None, origin=ALLOWED_ORIGIN),
    )
    assert resp.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    exposed = {h.strip() for h in resp.headers["access-control-expose-headers"].split(",")}
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= exposed
    code, message, details = grpc_web_status(resp.headers, trailers)
    assert code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert "authorization" in message
    assert _reason(details) == "TOKEN_MISSING"


async def test_the_edges_own_origin_is_allowed(http: httpx.AsyncClient, eu_edge: Edge) -> None:
    resp = await http.options(
        f"{eu_edge.http}/chatmesh.v1.QueryService/GetHistory",
        headers={"origin": eu_edge.http, "access-control-request-method": "POST"},
    )
    assert resp.is_success
    assert resp.headers["access-control-allow-origin"] == eu_edge.http


async def test_disallowed_origin_is_rejected(
    http: httpx.AsyncClient, dev_mesh: Mesh, eu_edge: Edge, auth: Auth
) -> None:
    for origin in ("https://evil.example", "http://localhost.evil.example:5173", "null"):
        resp = await http.options(
            f"{eu_edge.http}/chatmesh.v1.CommandService/SendMessage",
            headers={"origin": origin, "access-control-request-method": "POST"},
        )
        assert resp.status_code == 403, origin
        assert not [h for h in resp.headers if h.lower().startswith("access-control-")], origin
        assert "not allowed" in resp.text
    # The actual request is refused too, before anything is forwarded.
    before = await _command_unauthenticated_count(http, dev_mesh)
    resp = await http.post(
        f"{eu_edge.http}/chatmesh.v1.CommandService/SendMessage",
        content=grpc_web_frame(cpb.SendMessageRequest()),
        headers=grpc_web_headers(None, origin="https://evil.example"),
    )
    assert resp.status_code == 403
    assert "access-control-allow-origin" not in resp.headers
    assert await _command_unauthenticated_count(http, dev_mesh) == before


# -- errors keep their details ------------------------------------------------------


async def test_error_details_survive_the_edge(
    http: httpx.AsyncClient,
    dev_mesh: Mesh,
    eu_edge: Edge,
    eu_command: cgrpc.CommandServiceStub,
    auth: Auth,
) -> None:
    channel = await create_channel(eu_command, auth, "err-ida", "private-ish")
    bad = cpb.SendMessageRequest(channel_id=channel, text="   ", client_msg_id="has space")
    # What the Command Service itself says (directly, in the primary).
    async with internal_channel(
        dev_mesh.extra_state["service_tls"], dev_mesh.endpoints["us-east"]["grpc"]["command"]
    ) as direct:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await cgrpc.CommandServiceStub(direct).SendMessage(
                bad, metadata=auth.md("err-ida"), timeout=10
            )
    md = dict(info.value.trailing_metadata() or ())
    backend_status = status_pb2.Status.FromString(md["grpc-status-details-bin"])
    assert backend_status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert len(backend_status.details) == 2  # ErrorInfo + BadRequest

    # Native gRPC through the edge.
    with pytest.raises(grpc.aio.AioRpcError) as via_grpc:
        await eu_command.SendMessage(bad, metadata=auth.md("err-ida"), timeout=10)
    assert via_grpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert via_grpc.value.details() == info.value.details()
    edge_md = dict(via_grpc.value.trailing_metadata() or ())
    assert status_pb2.Status.FromString(edge_md["grpc-status-details-bin"]) == backend_status

    # gRPC-Web through the edge.
    resp, _, trailers = await _grpc_web_unary(
        http,
        eu_edge,
        "/chatmesh.v1.CommandService/SendMessage",
        bad,
        grpc_web_headers(mint(auth.keys, "err-ida")),
    )
    code, message, details = grpc_web_status(resp.headers, trailers)
    assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], info.value.details())
    assert details == backend_status

    # Connect through the edge: the same details, as typed JSON.
    async with CommandServiceClient(eu_edge.http, protocol=ProtocolType.CONNECT) as commands:
        with pytest.raises(ConnectError) as via_connect:
            await commands.send_message(
                bad, headers={"authorization": f"Bearer {mint(auth.keys, 'err-ida')}"}
            )
    assert via_connect.value.code == Code.INVALID_ARGUMENT
    assert via_connect.value.message == info.value.details()
    # Envoy's bridge writes each detail's full type URL where the Connect
    # protocol has the bare type name; clients accept both.
    assert [
        (d.type_name.removeprefix("type.googleapis.com/"), d.message_bytes)
        for d in via_connect.value.details
    ] == [
        (d.type_url.removeprefix("type.googleapis.com/"), d.value) for d in backend_status.details
    ]
    # Connect's unary error body, read raw: the same details, base64 in JSON.
    raw = await http.post(
        f"{eu_edge.http}/chatmesh.v1.CommandService/SendMessage",
        content=bad.SerializeToString(),
        headers={
            "content-type": "application/proto",
            "connect-protocol-version": "1",
            "authorization": f"Bearer {mint(auth.keys, 'err-ida')}",
        },
    )
    body = raw.json()
    assert raw.status_code == 400
    assert [base64.b64decode(d["value"] + "==") for d in body["details"]] == [
        d.value for d in backend_status.details
    ]


# -- streams are cancelled upstream -------------------------------------------------


async def _routed(mesh: Mesh, user: str) -> list[str]:
    """Notification instances holding a live stream of ``user`` (the Fan-Out Service's routing table)."""
    async with internal_channel(
        mesh.extra_state["service_tls"], mesh.endpoints["us-east"]["grpc"]["fanout"]
    ) as channel:
        route = await fgrpc.FanoutServiceStub(channel).GetRoute(
            fpb.GetRouteRequest(user_id=user), timeout=5
        )
    return [i.instance_id for i in route.instances]


async def test_client_leaving_cancels_the_backend_stream(
    dev_mesh: Mesh, eu_edge: Edge, auth: Auth
) -> None:
    async def connected(user: str) -> bool:
        return await _routed(dev_mesh, user) == ["n-eu-1"]

    async def gone(user: str) -> bool:
        return await _routed(dev_mesh, user) == []

    # A browser's gRPC-Web stream over HTTP/1.1, then the tab closes (connection dropped).
    async with (
        httpx.AsyncClient(timeout=15) as browser,
        browser.stream(
            "POST",
            f"{eu_edge.http}/chatmesh.v1.NotificationService/Subscribe",
            content=grpc_web_frame(npb.SubscribeRequest()),
            headers=grpc_web_headers(mint(auth.keys, "gone-joe")),
        ) as resp,
    ):
        await asyncio.wait_for(anext(resp.aiter_raw()), 15)  # open end to end
        await eventually(lambda: connected("gone-joe"), timeout=10, what="backend stream open")
    await eventually(lambda: gone("gone-joe"), timeout=5, what="backend stream cancelled")

    # A native gRPC stream, cancelled by its client.
    async with grpc.aio.insecure_channel(eu_edge.grpc) as channel:
        call = ngrpc.NotificationServiceStub(channel).Subscribe(
            npb.SubscribeRequest(), metadata=auth.md("gone-kit")
        )
        await call.read()
        await eventually(
            lambda: connected("gone-kit"), timeout=10, what="backend stream open (gRPC)"
        )
        call.cancel()
        await eventually(
            lambda: gone("gone-kit"), timeout=5, what="backend stream cancelled (gRPC)"
        )
