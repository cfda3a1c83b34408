"""The real grpcurl binary against the eu edge: reflection, a command, a live stream (issue 6)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import grpc
import pytest

from chatmesh.v1 import command_service_pb2 as cpb, command_service_pb2_grpc as cgrpc
from mesh.core.auth import mint
from tests.edge.conftest import Edge, create_channel
from tests.helpers import Auth

pytestmark = pytest.mark.services


async def _grpcurl(binary: str, *args: str, timeout: float = 20.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        binary, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_list_shows_the_public_services(grpcurl: str, eu_edge: Edge) -> None:
    rc, out, err = await _grpcurl(grpcurl, "-plaintext", eu_edge.grpc, "list")
    assert rc == 0, err
    services = out.split()
    for name in (
        "chatmesh.v1.CommandService",
        "chatmesh.v1.QueryService",
        "chatmesh.v1.NotificationService",
        "grpc.health.v1.Health",
    ):
        assert name in services
    # Internal services are not reachable through the public entry.
    assert "chatmesh.v1.FanoutService" not in services


async def test_describe_command_service(grpcurl: str, eu_edge: Edge) -> None:
    rc, out, err = await _grpcurl(
        grpcurl, "-plaintext", eu_edge.grpc, "describe", "chatmesh.v1.CommandService"
    )
    assert rc == 0, err
    assert "chatmesh.v1.CommandService is a service:" in out
    assert (
        "rpc SendMessage ( .chatmesh.v1.SendMessageRequest ) returns ( .chatmesh.v1.SendMessageResponse );"
        in out
    )
    # Message types resolve too (dependencies travel with the file).
    rc, out, err = await _grpcurl(
        grpcurl, "-plaintext", eu_edge.grpc, "describe", "chatmesh.v1.SendMessageRequest"
    )
    assert rc == 0, err
    assert "string client_msg_id = 3" in out


async def test_send_message_with_json_and_token(
    grpcurl: str, eu_edge: Edge, eu_command: cgrpc.CommandServiceStub, auth: Auth
) -> None:
    channel = await create_channel(eu_command, auth, "curl-ann", "grpcurl-send")
    token = mint(auth.keys, "curl-ann")
    request = json.dumps(
        {"channel_id": channel, "text": "hello from grpcurl", "client_msg_id": uuid.uuid4().hex}
    )
    rc, out, err = await _grpcurl(
        grpcurl,
        "-plaintext",
        "-H",
        f"authorization: Bearer {token}",
        "-d",
        request,
        eu_edge.grpc,
        "chatmesh.v1.CommandService/SendMessage",
    )
    assert rc == 0, err
    message = json.loads(out)["message"]
    assert message["text"] == "hello from grpcurl"
    assert message["senderUserId"] == "curl-ann"
    assert message["originRegion"] == "eu"
    # Without a token the edge itself refuses, with the rich status grpcurl can print.
    rc, out, err = await _grpcurl(
        grpcurl, "-plaintext", "-d", request, eu_edge.grpc, "chatmesh.v1.CommandService/SendMessage"
    )
    assert rc != 0
    assert "Code: Unauthenticated" in err
    assert '"reason":"TOKEN_MISSING"' in err.replace(" ", "")


async def test_subscribe_stream_receives_a_live_event(
    grpcurl: str, eu_edge: Edge, eu_command: cgrpc.CommandServiceStub, auth: Auth
) -> None:
    channel = await create_channel(eu_command, auth, "curl-bo", "grpcurl-live")
    token = mint(auth.keys, "curl-bo")
    proc = await asyncio.create_subprocess_exec(
        grpcurl,
        "-plaintext",
        "-H",
        f"authorization: Bearer {token}",
        "-d",
        json.dumps({"resume_from": {channel: 0}}),
        eu_edge.grpc,
        "chatmesh.v1.NotificationService/Subscribe",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    decoder = json.JSONDecoder()
    text = ""

    async def next_item(timeout: float = 15.0) -> dict[str, object]:
        # grpcurl prints each stream item as one pretty-printed JSON object.
        nonlocal text
        while True:
            stripped = text.lstrip()
            if stripped:
                with contextlib.suppress(json.JSONDecodeError):
                    item, end = decoder.raw_decode(stripped)
                    text = stripped[end:]
                    return dict(item)
            line = await asyncio.wait_for(proc.stdout.readline(), timeout)  # type: ignore[union-attr]
            assert line, "grpcurl ended the stream early"
            text += line.decode()

    try:
        while "replayComplete" not in await next_item():
            pass
        sent = await eu_command.SendMessage(
            cpb.SendMessageRequest(
                channel_id=channel, text="live via grpcurl", client_msg_id=uuid.uuid4().hex
            ),
            metadata=auth.md("curl-bo"),
            timeout=10,
        )
        while True:
            item = await next_item()
            event = item.get("event")
            if isinstance(event, dict) and "messageCreated" in event:
                break
        assert event["messageCreated"]["message"]["text"] == "live via grpcurl"
        assert event["messageCreated"]["message"]["seq"] == str(sent.message.seq)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def test_health_check_needs_no_token(grpcurl: str, eu_edge: Edge) -> None:
    rc, out, err = await _grpcurl(
        grpcurl,
        "-plaintext",
        "-d",
        '{"service": "chatmesh.v1.CommandService"}',
        eu_edge.grpc,
        "grpc.health.v1.Health/Check",
    )
    assert rc == 0, err
    assert json.loads(out) == {"status": "SERVING"}
    async with grpc.aio.insecure_channel(eu_edge.grpc) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )(b"\n\x0fno.such.Service", timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
