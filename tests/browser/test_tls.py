"""A mesh whose edges terminate TLS (``chatmesh up --tls``): browser, grpcurl and the Node SDK over HTTPS.

The harness makes a development CA and a certificate for 127.0.0.1/localhost;
Envoy serves it on the one public listener (ALPN h2 and http/1.1). Clients
trust the CA file the state names (grpcurl ``-cacert``, grpcio root
certificates, the TS SDK in Node through connect-node's ``ca``); Chromium is
pinned to the certificate's key (``--ignore-certificate-errors-spki-list``),
which accepts that key only, not any certificate error.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from chatmesh.v1 import command_service_pb2 as cpb, command_service_pb2_grpc as cgrpc
from mesh.core.auth import KeyDirectory, mint
from mesh.harness.edges import EdgeSettings, edges_hook
from mesh.harness.services import services_hook
from mesh.harness.supervisor import Mesh
from mesh.topology import load
from tests.browser.test_web_chat import run_chat_scenario
from tests.conftest import TEST_SETTINGS, assert_no_unexpected_crashes
from tests.sdk.test_ts_client import _is, follow, sdk_bundle  # noqa: F401 - sdk_bundle is a fixture

pytestmark = [pytest.mark.browser, pytest.mark.services]


@pytest.fixture(scope="module")
async def tls_mesh(run_root: Path) -> AsyncIterator[Mesh]:
    """The dev topology with TLS on both edges."""
    mesh = Mesh(
        load("dev"),
        run_root / "dev-tls",
        hooks=[services_hook(TEST_SETTINGS), edges_hook(EdgeSettings(tls=True))],
    )
    async with mesh:
        yield mesh
        assert_no_unexpected_crashes(mesh)


async def _grpcurl(binary: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        binary, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_state_names_the_tls_edges_and_their_ca(tls_mesh: Mesh) -> None:
    state = tls_mesh.state()
    for region in tls_mesh.topology.region_names:
        edge = state["regions"][region]["edge"]
        assert edge["tls"] is True
        assert edge["http"] == f"https://{edge['grpc']}"
        assert Path(edge["ca_file"]).read_text().startswith("-----BEGIN CERTIFICATE-----")  # noqa: ASYNC240
        assert state["regions"][region]["web"].startswith("https://")
    assert len(state["edge_tls"]["spki_sha256"]) == 44


async def test_grpcurl_and_grpcio_over_tls(grpcurl: str, tls_mesh: Mesh) -> None:
    edge = tls_mesh.endpoints["eu"]["edge"]
    rc, out, err = await _grpcurl(grpcurl, "-cacert", edge["ca_file"], edge["grpc"], "list")
    assert rc == 0, err
    assert "chatmesh.v1.CommandService" in out.split()
    # Without the CA the server is not trusted; plaintext is not spoken at all.
    rc, _, err = await _grpcurl(grpcurl, edge["grpc"], "list")
    assert rc != 0 and "certificate" in err
    rc, _, _ = await _grpcurl(grpcurl, "-plaintext", edge["grpc"], "list")
    assert rc != 0
    keys = KeyDirectory(tls_mesh.run_dir / "keys")
    token = mint(keys, "tls-ann")
    rc, out, err = await _grpcurl(
        grpcurl, "-cacert", edge["ca_file"], "-H", f"authorization: Bearer {token}",
        "-d", json.dumps({"name": "over tls"}), edge["grpc"], "chatmesh.v1.CommandService/CreateChannel",
    )  # fmt: skip
    assert rc == 0, err
    channel = json.loads(out)["channel"]["channelId"]
    credentials = grpc.ssl_channel_credentials(Path(edge["ca_file"]).read_bytes())  # noqa: ASYNC240
    async with grpc.aio.secure_channel(edge["grpc"], credentials) as ch:
        sent = await cgrpc.CommandServiceStub(ch).SendMessage(
            cpb.SendMessageRequest(channel_id=channel, text="tls", client_msg_id=uuid.uuid4().hex),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )
    assert sent.message.origin_region == "eu"


async def test_the_ts_sdk_in_node_trusts_the_ca_file(tls_mesh: Mesh, sdk_bundle: Path) -> None:  # noqa: F811
    edge = tls_mesh.endpoints["eu"]["edge"]
    keys = KeyDirectory(tls_mesh.run_dir / "keys")
    async with follow(edge["http"], mint(keys, "tls-bo"), caFile=edge["ca_file"]) as bo:
        await bo.expect("live over TLS", _is("state", kind="live"))
        assert await bo.close() == 0
    # And without the CA file the same client cannot connect.
    async with follow(edge["http"], mint(keys, "tls-bo")) as anon:
        await anon.expect("retrying without the CA", _is("state", kind="retrying"))


async def test_browser_chat_over_tls(
    chromium: str, node: str, web_bundle: Path, tls_mesh: Mesh
) -> None:
    ca_file = tls_mesh.endpoints["eu"]["edge"]["ca_file"]
    await run_chat_scenario(
        chromium,
        node,
        tls_mesh,
        name="browser-tls",
        spki_pin=tls_mesh.state()["edge_tls"]["spki_sha256"],
        # The scenario's own Node fetch calls (a dev token, eu's history) trust the CA too.
        env={"NODE_EXTRA_CA_CERTS": ca_file},
    )
