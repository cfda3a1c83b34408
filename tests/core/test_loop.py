"""Every service runs its loop through ``mesh.core.loop.run``: uvloop unless told otherwise."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import grpc
import uvloop

from chatmesh.v1 import notification_service_pb2 as pb, notification_service_pb2_grpc as g
from mesh.core import loop


def _run_in_child(env_loop: str | None) -> str:
    # A child process: pytest's own event loop must not be in the way of a new one.
    code = (
        "import asyncio\n"
        "from mesh.core import loop\n"
        "async def kind():\n"
        "    return type(asyncio.get_running_loop()).__module__\n"
        "print(loop.run(kind()))\n"
    )
    env = {"CHATMESH_EVENT_LOOP": env_loop} if env_loop else {}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**_base_env(), **env},
    )
    return out.stdout.strip()


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "CHATMESH_EVENT_LOOP"}


def test_services_run_on_uvloop_and_can_fall_back_to_asyncio() -> None:
    assert _run_in_child(None).startswith("uvloop")
    assert _run_in_child("asyncio").startswith("asyncio")


def test_run_returns_the_result_and_grpc_aio_runs_on_it() -> None:
    class Servicer(g.NotificationServiceServicer):
        async def Subscribe(
            self, request: object, context: object
        ) -> AsyncIterator[pb.SubscribeResponse]:
            for i in range(3):
                yield pb.SubscribeResponse(replay_complete=pb.ReplayComplete(replayed_events=i))

    async def main() -> tuple[bool, list[int]]:
        server = grpc.aio.server()
        g.add_NotificationServiceServicer_to_server(Servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = g.NotificationServiceStub(channel)
                got = [
                    r.replay_complete.replayed_events
                    async for r in stub.Subscribe(pb.SubscribeRequest())
                ]
        finally:
            await server.stop(None)
        return isinstance(asyncio.get_running_loop(), uvloop.Loop), got

    assert loop.run(main()) == (True, [0, 1, 2])
