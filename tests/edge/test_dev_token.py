"""``/dev/token`` through the real edge: only this machine's own page, on the loopback listener (issue 13.7)."""

from __future__ import annotations

import httpx
import pytest

from mesh.core.auth import TokenVerifier
from mesh.harness.supervisor import Mesh
from tests.edge.conftest import Edge
from tests.helpers import Auth

pytestmark = pytest.mark.services


def _port(edge: Edge) -> str:
    return edge.grpc.rpartition(":")[2]


async def test_the_page_gets_a_token_from_its_own_edge(
    http: httpx.AsyncClient, eu_edge: Edge, auth: Auth
) -> None:
    for host in (f"127.0.0.1:{_port(eu_edge)}", f"localhost:{_port(eu_edge)}"):
        resp = await http.get(
            f"{eu_edge.http}/dev/token",
            params={"user": "dev-ann"},
            headers={"host": host, "origin": f"http://{host}"},
        )
        assert resp.status_code == 200, resp.text
        token = resp.json()["token"]
        assert TokenVerifier(auth.keys.public_key_pem()).verify(token).user_id == "dev-ann"


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        # DNS rebinding: evil.example resolves to 127.0.0.1, the browser sends its own name.
        ({"host": "evil.example:{port}"}, "not this edge"),
        ({"host": "evil.example"}, "not this edge"),
        # Another local port's name (another edge, another local server).
        ({"host": "127.0.0.1:1"}, "not this edge"),
        # A page of another origin (even a CORS-allowed one, even another region's edge).
        ({"origin": "http://localhost:5173"}, "own page"),
        ({"origin": "{other}"}, "own page"),
        # A client cannot pretend to have come in on the listener: the edge overwrites it.
        ({"host": "evil.example", "x-chatmesh-edge-listener": "127.0.0.1:{port}"}, "not this edge"),
    ],
)
async def test_refusals_at_the_edge(
    http: httpx.AsyncClient, eu_edge: Edge, us_edge: Edge, headers: dict[str, str], why: str
) -> None:
    filled = {k: v.format(port=_port(eu_edge), other=us_edge.http) for k, v in headers.items()}
    resp = await http.get(f"{eu_edge.http}/dev/token", params={"user": "dev-bo"}, headers=filled)
    assert resp.status_code == 403
    assert why in resp.text
    assert "token" not in resp.headers.get("content-type", "")


async def test_the_web_service_refuses_requests_that_bypass_the_edge(
    http: httpx.AsyncClient, dev_mesh: Mesh, eu_edge: Edge
) -> None:
    """Straight to the web service's own port: no listener header from Envoy, or a forged one."""
    web = dev_mesh.services["web-eu"].info["http"]
    host = f"127.0.0.1:{_port(eu_edge)}"
    for extra in ({}, {"x-chatmesh-edge-listener": "127.0.0.1:1"}):
        resp = await http.get(
            f"{web}/dev/token", params={"user": "dev-cy"}, headers={"host": host, **extra}
        )
        assert resp.status_code == 403
        assert "loopback listener" in resp.text
