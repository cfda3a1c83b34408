"""Commands entering a secondary region's edge are executed by the primary, across the WAN (issue 6)."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest

from chatmesh.v1 import (
    command_service_pb2 as cpb,
    command_service_pb2_grpc as cgrpc,
    query_service_pb2 as qpb,
    query_service_pb2_grpc as qgrpc,
)
from mesh.harness.supervisor import Mesh
from tests.edge.conftest import Edge, create_channel
from tests.helpers import Auth, eventually

pytestmark = pytest.mark.services

SPOOF = "x-chatmesh-origin-region"


async def _send_times(
    stub: cgrpc.CommandServiceStub, auth: Auth, user: str, channel: str, n: int
) -> list[float]:
    times = []
    for i in range(n):
        started = time.perf_counter()
        await stub.SendMessage(
            cpb.SendMessageRequest(
                channel_id=channel, text=f"timed {i}", client_msg_id=uuid.uuid4().hex
            ),
            metadata=auth.md(user),
            timeout=10,
        )
        times.append((time.perf_counter() - started) * 1000)
    return times


async def test_eu_edge_commands_pay_the_wan_round_trip(
    dev_mesh: Mesh, eu_edge: Edge, us_edge: Edge, auth: Auth
) -> None:
    rtt_ms = 2 * dev_mesh.topology.latency_ms("eu", "us-east")
    assert rtt_ms >= 70
    async with (
        grpc.aio.insecure_channel(eu_edge.grpc) as eu,
        grpc.aio.insecure_channel(us_edge.grpc) as us,
    ):
        eu_stub, us_stub = cgrpc.CommandServiceStub(eu), cgrpc.CommandServiceStub(us)
        channel = await create_channel(eu_stub, auth, "wan-kim", "wan")
        # Warm both paths (connections to the edge and from the edge to its backend).
        await _send_times(eu_stub, auth, "wan-kim", channel, 1)
        await _send_times(us_stub, auth, "wan-kim", channel, 1)
        eu_ms = await _send_times(eu_stub, auth, "wan-kim", channel, 5)
        us_ms = await _send_times(us_stub, auth, "wan-kim", channel, 5)
    print(
        f"SendMessage via eu edge: min {min(eu_ms):.1f} ms; via us-east edge: min {min(us_ms):.1f} ms"
    )
    # Every command from eu crossed the link both ways ...
    assert min(eu_ms) >= rtt_ms
    # ... and the same command entering in the primary did not.
    assert min(us_ms) < rtt_ms


async def test_origin_region_is_set_by_the_edge_not_the_client(dev_mesh: Mesh, eu_edge: Edge, us_edge: Edge,
                                                               auth: Auth) -> None:  # fmt: skip
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
            metadata=(*auth.md("org-lou"), (SPOOF, "us-east")),
            timeout=10,
        )
        assert spoofed.message.origin_region == "eu"
        other = await us_stub.SendMessage(
            cpb.SendMessageRequest(
                channel_id=channel, text="from us-east", client_msg_id=uuid.uuid4().hex
            ),
            metadata=(*auth.md("org-lou"), (SPOOF, "eu")),
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


async def test_endpoints_are_recorded(dev_mesh: Mesh, eu_edge: Edge) -> None:
    state = dev_mesh.state()
    for region in dev_mesh.topology.region_names:
        edge = state["regions"][region]["edge"]
        # Native gRPC and the HTTP listener (gRPC-Web, Connect, h2c gRPC) are two ports.
        assert edge["grpc"].startswith("127.") and edge["http"].startswith("http://127.")
        assert edge["http"] != f"http://{edge['grpc']}"
    assert "edge-eu" in {p["name"] for p in state["processes"]}
