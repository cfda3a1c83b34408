"""Service identity on the internal ports (issue 13, finding 3), on the running ``dev`` mesh.

Every internal gRPC port (command, fan-out, query, notification, worker) speaks
mutual TLS with the run's internal CA only: a plaintext call, a TLS call without
a client certificate and one with a certificate of another CA never reach a
handler. The Fan-Out Service's operator RPCs need an ``operator`` identity; the
edge's ``edge`` identity and a service's do not pass. ``x-chatmesh-*`` headers
are believed only from an edge, so a direct caller with a valid user token
cannot choose the origin region a message is stored with.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatmesh.v1 import (
    command_service_pb2 as cpb,
    command_service_pb2_grpc as cgrpc,
    fanout_service_pb2 as fpb,
    fanout_service_pb2_grpc as fgrpc,
    query_service_pb2 as qpb,
    query_service_pb2_grpc as qgrpc,
)
from mesh.core.headers import ORIGIN_REGION
from mesh.core.identity import EDGE, SERVICE
from mesh.deploy.tls import DevTls
from mesh.harness.identity import identity_state, internal_channel, mesh_pki
from mesh.harness.supervisor import Mesh
from mesh.rpc.status import from_rpc_error
from tests.helpers import Auth, eventually

pytestmark = pytest.mark.services


def _internal_ports(mesh: Mesh) -> dict[str, str]:
    kinds = ("command", "fanout", "query", "notification", "worker")
    return {
        name: svc.address
        for name, svc in mesh.services.items()
        if name.split("-", 1)[0] in kinds and svc.address
    }


async def _health(channel: grpc.aio.Channel) -> Any:
    return await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=5
    )


def test_every_internal_port_is_a_mutual_tls_port(dev_mesh: Mesh) -> None:
    ports = _internal_ports(dev_mesh)
    # command, fanout, 2 workers, 2 queries, every notification instance.
    assert len(ports) == 4 + 2 + sum(r.notification_instances for r in dev_mesh.topology.regions)
    for name, svc in dev_mesh.services.items():
        if name in ports:
            assert svc.info.get("tls") is True, name


async def test_calls_without_a_service_identity_are_refused_on_every_internal_port(
    dev_mesh: Mesh, tmp_path: Path
) -> None:
    ports = _internal_ports(dev_mesh)
    ca = Path(dev_mesh.extra_state["service_tls"]["ca_file"]).read_bytes()  # noqa: ASYNC240
    # A certificate the public edge CA signed (the browser-facing kind), not the internal CA.
    foreign = DevTls(tmp_path / "foreign")
    foreign.ensure()
    refused: dict[str, list[str]] = {}
    for name, address in sorted(ports.items()):
        attempts = {
            "plaintext": grpc.aio.insecure_channel(address),
            "tls, no client certificate": grpc.aio.secure_channel(
                address, grpc.ssl_channel_credentials(root_certificates=ca)
            ),
            "another CA's certificate": grpc.aio.secure_channel(
                address,
                grpc.ssl_channel_credentials(
                    root_certificates=ca,
                    private_key=foreign.key_path.read_bytes(),
                    certificate_chain=foreign.cert_path.read_bytes(),
                ),
            ),
        }
        for what, channel in attempts.items():
            async with channel:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await _health(channel)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, (name, what)
            refused.setdefault(name, []).append(what)
        # The harness's operator identity is let in (the refusals are not "nothing answers").
        async with internal_channel(dev_mesh.extra_state["service_tls"], address) as channel:
            assert (await _health(channel)).status == health_pb2.HealthCheckResponse.SERVING
    assert set(refused) == set(ports)
    assert all(len(v) == 3 for v in refused.values())


async def test_get_route_needs_an_operator_identity(dev_mesh: Mesh) -> None:
    primary = dev_mesh.topology.primary
    address = dev_mesh.endpoints[primary]["grpc"]["fanout"]
    pki = mesh_pki(dev_mesh)
    for role, name in ((EDGE, "eu"), (SERVICE, f"command-{primary}")):
        async with internal_channel(identity_state(pki.issue(role, name)), address) as channel:
            stub = fgrpc.FanoutServiceStub(channel)
            for call in (
                stub.GetRoute(fpb.GetRouteRequest(user_id="alice"), timeout=5),
                stub.GetStats(fpb.GetStatsRequest(), timeout=5),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, role
                assert from_rpc_error(info.value).reason == "PEER_NOT_ALLOWED"
            # Health is open to every verified peer (Envoy's probes use the edge identity).
            assert (await _health(channel)).status == health_pb2.HealthCheckResponse.SERVING
    async with internal_channel(dev_mesh.extra_state["service_tls"], address) as channel:
        route = await fgrpc.FanoutServiceStub(channel).GetRoute(
            fpb.GetRouteRequest(user_id="nobody-here"), timeout=5
        )
    assert route.user_id == "nobody-here" and list(route.instances) == []


async def test_a_direct_caller_cannot_choose_the_origin_region(dev_mesh: Mesh, auth: Auth) -> None:
    primary = dev_mesh.topology.primary
    pki = mesh_pki(dev_mesh)
    # A sibling service's identity, a valid user token and a spoofed header, both
    # straight to the Command Service and through the eu command link.
    identity = identity_state(pki.issue(SERVICE, "query-eu"))
    targets = {
        "direct": dev_mesh.endpoints[primary]["grpc"]["command"],
        "eu link": dev_mesh.endpoints["eu"]["grpc"]["command"],
    }
    spoof = (*auth.md("spoof-sam"), (ORIGIN_REGION, "mars"))
    for what, address in targets.items():
        async with internal_channel(identity, address) as channel:
            stub = cgrpc.CommandServiceStub(channel)
            created = await stub.CreateChannel(
                cpb.CreateChannelRequest(name=f"spoof {what}", client_request_id=uuid.uuid4().hex),
                metadata=spoof,
                timeout=10,
            )
            channel_id = created.channel.channel_id
            sent = await stub.SendMessage(
                cpb.SendMessageRequest(
                    channel_id=channel_id, text="from mars?", client_msg_id=uuid.uuid4().hex
                ),
                metadata=spoof,
                timeout=10,
            )
        assert sent.message.origin_region == primary, what

        # What is stored (history, read through the primary's edge) says the same.
        async def stored(cid: str = channel_id) -> str | None:
            async with grpc.aio.insecure_channel(
                dev_mesh.endpoints[primary]["edge"]["grpc"]
            ) as edge:
                page = await qgrpc.QueryServiceStub(edge).GetHistory(
                    qpb.GetHistoryRequest(channel_id=cid), metadata=auth.md("spoof-sam"), timeout=5
                )
            return page.messages[0].origin_region if page.messages else None

        async def projected(cid: str = channel_id) -> bool:
            return await stored(cid) is not None

        await eventually(projected, timeout=15, what=f"history of the {what} message")
        assert await stored() == primary
