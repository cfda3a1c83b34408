"""What the Envoy edge routes where, and what identity it lets through (issues 6, 11, 13).

Commands entering a secondary region's edge are executed by the primary,
through the WAN link; the edge sets the origin region and removes every
client-supplied internal header; exactly one ``authorization`` header reaches
the services.
"""

from __future__ import annotations

import uuid

import grpc
import httpx
import pytest

from chatmesh.v1 import (
    command_service_pb2 as cpb,
    command_service_pb2_grpc as cgrpc,
    query_service_pb2 as qpb,
    query_service_pb2_grpc as qgrpc,
)
from mesh.core.auth import MAX_TOKEN_LIFETIME, mint
from mesh.core.headers import ORIGIN_REGION
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


async def _cluster_hosts(admin: str, cluster: str) -> list[str]:
    async with httpx.AsyncClient(timeout=5) as http:
        data = (await http.get(f"{admin}/clusters", params={"format": "json"})).json()
    [status] = [c for c in data["cluster_statuses"] if c["name"] == cluster]
    return [
        f"{h['address']['socket_address']['address']}:{h['address']['socket_address']['port_value']}"
        for h in status["host_statuses"]
    ]


async def _send(stub: cgrpc.CommandServiceStub, auth: Auth, user: str, channel: str) -> str:
    resp = await stub.SendMessage(
        cpb.SendMessageRequest(channel_id=channel, text="hi", client_msg_id=uuid.uuid4().hex),
        metadata=auth.md(user),
        timeout=5,
    )
    return str(resp.message.origin_region)


async def test_secondary_edge_sends_commands_through_the_wan_link(
    dev_mesh: Mesh, eu_edge: Edge, us_edge: Edge, auth: Auth
) -> None:
    # The eu edge's command upstream is the eu -> us-east link proxy, not the service itself.
    link = next(p for p in dev_mesh.wan.proxies if p.name == "eu__us-east__command-grpc")
    eu_admin = dev_mesh.endpoints["eu"]["edge"]["admin"]
    assert await _cluster_hosts(eu_admin, "command-primary") == [link.address]
    us_admin = dev_mesh.endpoints["us-east"]["edge"]["admin"]
    assert await _cluster_hosts(us_admin, "command-us-east") == [
        dev_mesh.endpoints["us-east"]["grpc"]["command"]
    ]
    async with (
        grpc.aio.insecure_channel(eu_edge.grpc) as eu,
        grpc.aio.insecure_channel(us_edge.grpc) as us,
    ):
        eu_stub, us_stub = cgrpc.CommandServiceStub(eu), cgrpc.CommandServiceStub(us)
        channel = await create_channel(eu_stub, auth, "wan-kim", "wan")
        assert await _send(eu_stub, auth, "wan-kim", channel) == "eu"
        # Cut only that link: eu's commands fail, the primary's and eu's queries do not.
        await dev_mesh.toxiproxy.set_enabled(link.name, False)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await _send(eu_stub, auth, "wan-kim", channel)
            assert cut.value.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            assert await _send(us_stub, auth, "wan-kim", channel) == "us-east"
            listed = await qgrpc.QueryServiceStub(eu).ListChannels(
                qpb.ListChannelsRequest(), metadata=auth.md("wan-kim"), timeout=5
            )
            assert listed is not None
        finally:
            await dev_mesh.toxiproxy.set_enabled(link.name, True)

        async def eu_commands_again() -> bool:
            return await _send(eu_stub, auth, "wan-kim", channel) == "eu"

        await eventually(eu_commands_again, timeout=20, what="eu commands after the link healed")


async def test_origin_region_is_set_by_the_edge_not_the_client(
    dev_mesh: Mesh, eu_edge: Edge, us_edge: Edge, auth: Auth
) -> None:
    async with (
        grpc.aio.insecure_channel(eu_edge.grpc) as eu,
        grpc.aio.insecure_channel(us_edge.grpc) as us,
    ):
        eu_stub, us_stub = cgrpc.CommandServiceStub(eu), cgrpc.CommandServiceStub(us)
        channel = await create_channel(eu_stub, auth, "org-lou", "origins")
        spoofed = await eu_stub.SendMessage(
            cpb.SendMessageRequest(
                channel_id=channel, text="from eu", client_msg_id=uuid.uuid4().hex
            ),
            metadata=(*auth.md("org-lou"), (ORIGIN_REGION, "mars"), ("x-chatmesh-anything", "1")),
            timeout=10,
        )
        assert spoofed.message.origin_region == "eu"
        other = await us_stub.SendMessage(
            cpb.SendMessageRequest(
                channel_id=channel, text="from us-east", client_msg_id=uuid.uuid4().hex
            ),
            metadata=(*auth.md("org-lou"), (ORIGIN_REGION, "eu")),
            timeout=10,
        )
        assert other.message.origin_region == "us-east"
        # The stored messages say the same, read back in eu through the edge.
        query = qgrpc.QueryServiceStub(eu)

        async def stored() -> dict[str, str]:
            history = await query.GetHistory(
                qpb.GetHistoryRequest(channel_id=channel), metadata=auth.md("org-lou")
            )
            found = {m.text: m.origin_region for m in history.messages}
            return found if len(found) == 2 else {}

        assert await eventually(stored, timeout=10, what="both messages in eu's history") == {
            "from eu": "eu",
            "from us-east": "us-east",
        }


async def test_a_browser_cannot_claim_an_origin_region_either(
    http: httpx.AsyncClient, eu_edge: Edge, eu_command: cgrpc.CommandServiceStub, auth: Auth
) -> None:
    channel = await create_channel(eu_command, auth, "org-max", "origins-web")
    request = cpb.SendMessageRequest(
        channel_id=channel, text="from a browser", client_msg_id=uuid.uuid4().hex
    )
    resp = await http.post(
        f"{eu_edge.http}/chatmesh.v1.CommandService/SendMessage",
        content=grpc_web_frame(request),
        headers=grpc_web_headers(mint(auth.keys, "org-max"), **{ORIGIN_REGION: "mars"}),
    )
    reader = GrpcWebReader()
    reader.feed(resp.content)
    assert grpc_web_status(resp.headers, reader.trailers)[0] == 0
    assert cpb.SendMessageResponse.FromString(reader.messages[0]).message.origin_region == "eu"


async def _unauthenticated_commands(http: httpx.AsyncClient, mesh: Mesh) -> float:
    metrics = mesh.services["command-us-east"].metrics
    total = 0.0
    for line in (await http.get(metrics)).text.splitlines():
        if line.startswith("chatmesh_rpc_requests_total{") and 'code="UNAUTHENTICATED"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_two_authorization_headers_are_refused_at_the_edge(
    http: httpx.AsyncClient, dev_mesh: Mesh, eu_edge: Edge, auth: Auth
) -> None:
    before = await _unauthenticated_commands(http, dev_mesh)
    async with grpc.aio.insecure_channel(eu_edge.grpc) as channel:
        stub = cgrpc.CommandServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as two:
            await stub.CreateChannel(
                cpb.CreateChannelRequest(name="two-tokens"),
                # Both valid, for different users: which one would a service believe?
                metadata=(*auth.md("dup-amy"), *auth.md("dup-bob")),
                timeout=10,
            )
    assert two.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "exactly one" in (two.value.details() or "")
    assert from_rpc_error(two.value).reason == "TOKEN_INVALID"
    # gRPC-Web over HTTP/1.1: the same refusal, in a gRPC-Web trailer.
    resp = await http.post(
        f"{eu_edge.http}/chatmesh.v1.CommandService/CreateChannel",
        content=grpc_web_frame(cpb.CreateChannelRequest(name="two-tokens")),
        headers=[
            *grpc_web_headers().items(),
            ("authorization", f"Bearer {mint(auth.keys, 'dup-amy')}"),
            ("authorization", f"Bearer {mint(auth.keys, 'dup-bob')}"),
        ],
    )
    reader = GrpcWebReader()
    reader.feed(resp.content)
    code, message, _ = grpc_web_status(resp.headers, reader.trailers)
    assert (resp.status_code, code) == (200, grpc.StatusCode.UNAUTHENTICATED.value[0])
    assert "exactly one" in message
    # Nothing reached the Command Service.
    assert await _unauthenticated_commands(http, dev_mesh) == before


async def test_a_token_living_longer_than_the_maximum_is_refused_at_the_edge(
    http: httpx.AsyncClient, dev_mesh: Mesh, eu_edge: Edge, auth: Auth
) -> None:
    """Issue 13, finding 6: a token whose exp - iat exceeds MAX_TOKEN_LIFETIME (although
    not expired, correctly signed, right issuer and audience) never reaches a service."""
    too_long = mint(auth.keys, "long-lou", ttl_seconds=MAX_TOKEN_LIFETIME + 3600)
    before = await _unauthenticated_commands(http, dev_mesh)
    async with grpc.aio.insecure_channel(eu_edge.grpc) as channel:
        stub = cgrpc.CommandServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateChannel(
                cpb.CreateChannelRequest(name="long-lived"),
                metadata=(("authorization", f"Bearer {too_long}"),),
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert from_rpc_error(refused.value).reason == "TOKEN_INVALID"
        # The same user with a token of exactly the maximum lifetime is served.
        at_most = mint(auth.keys, "long-lou", ttl_seconds=MAX_TOKEN_LIFETIME)
        await stub.CreateChannel(
            cpb.CreateChannelRequest(name="long-lived"),
            metadata=(("authorization", f"Bearer {at_most}"),),
            timeout=10,
        )
    # gRPC-Web over HTTP/1.1: the same refusal, in a gRPC-Web trailer.
    resp = await http.post(
        f"{eu_edge.http}/chatmesh.v1.CommandService/CreateChannel",
        content=grpc_web_frame(cpb.CreateChannelRequest(name="long-lived")),
        headers=grpc_web_headers(too_long),
    )
    reader = GrpcWebReader()
    reader.feed(resp.content)
    code, message, _ = grpc_web_status(resp.headers, reader.trailers)
    assert (resp.status_code, code) == (200, grpc.StatusCode.UNAUTHENTICATED.value[0])
    assert "invalid token" in message
    # The edge refused both: the Command Service never saw the token.
    assert await _unauthenticated_commands(http, dev_mesh) == before


async def test_endpoints_are_recorded(dev_mesh: Mesh) -> None:
    state = dev_mesh.state()
    for region in dev_mesh.topology.region_names:
        edge = state["regions"][region]["edge"]
        assert set(edge) == {"grpc", "http", "tls", "ca_file", "admin"}
        # One listener: native gRPC, gRPC-Web and Connect on the same port.
        assert edge["http"] == f"http://{edge['grpc']}"
        assert edge["tls"] is False and edge["ca_file"] is None
        assert edge["admin"].startswith("http://127.0.0.1:")
        assert state["regions"][region]["web"] == f"{edge['http']}/"
        assert dev_mesh.endpoints[region]["edge"] == edge
    names = {p["name"] for p in state["processes"]}
    assert {"envoy-eu", "envoy-us-east", "web-eu", "web-us-east"} <= names
    assert not [n for n in names if n.startswith("edge-")]
