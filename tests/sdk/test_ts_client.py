"""``@chatmesh/client`` (sdk/ts) in Node against the dev mesh's real eu edge.

``sdk/ts/test/follow.mjs`` subscribes with the TypeScript client and prints one
JSON line per callback. The tests restart the region's Notification Service
under it (the client must resubscribe by itself, resume from the last seq it
delivered, and deliver nothing twice), and check that refusals the client
cannot fix by retrying (PERMISSION_DENIED, UNAUTHENTICATED) stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from mesh.client import ChatClient
from mesh.core.auth import mint
from mesh.harness.paths import repo_root
from mesh.harness.supervisor import Mesh
from tests.helpers import Auth, eventually

pytestmark = [pytest.mark.services]

FOLLOW = repo_root() / "sdk" / "ts" / "test" / "follow.mjs"
Line = dict[str, Any]

# connect-es Code numbers (the gRPC status codes).
PERMISSION_DENIED = 7
UNAUTHENTICATED = 16


@pytest.fixture(scope="session")
async def sdk_bundle() -> Path:
    """Builds the Node bundle of the client (``build/sdk-ts/index.mjs``) with esbuild."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node/npm not found: install Node.js (>= 20)")
    if not (repo_root() / "node_modules" / ".bin" / "esbuild").exists():
        pytest.fail("npm packages missing: run `make node-deps` (npm ci)")
    proc = await asyncio.create_subprocess_exec(
        npm,
        "run",
        "--silent",
        "bundle:node",
        "--workspace",
        "@chatmesh/client",
        cwd=repo_root(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    if proc.returncode != 0:
        pytest.fail(f"bundling @chatmesh/client failed:\n{out.decode()}")
    return repo_root() / "build" / "sdk-ts" / "index.mjs"


class Follower:
    """A running follow.mjs: its JSON lines, read in the background."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[Line] = []
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(json.loads(raw))
            self._arrived.set()

    async def expect(
        self, what: str, match: Callable[[Line], bool], *, after: int = 0, timeout: float = 20.0
    ) -> int:
        """Waits for a line (at index >= ``after``) that ``match``es; returns its index."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(after, len(self.lines)):
                if match(self.lines[i]):
                    return i
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._reader.done():
                raise AssertionError(f"{what} not seen within {timeout}s; lines: {self.lines}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    async def exit_code(self, timeout: float = 15.0) -> int:
        """Waits for the process to exit on its own."""
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return code

    async def close(self) -> int:
        """Closes stdin (the script aborts its subscription) and waits for it to exit."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        return await self.exit_code()


@contextlib.asynccontextmanager
async def follow(base_url: str, token: str, **extra: Any) -> AsyncIterator[Follower]:
    """Runs follow.mjs for one user; kills it if the test fails first."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(FOLLOW),
        json.dumps({"baseUrl": base_url, "token": token, **extra}),
        cwd=repo_root(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    follower = Follower(proc)
    try:
        yield follower
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _is(line_type: str, **fields: Any) -> Callable[[Line], bool]:
    return lambda line: (
        line.get("type") == line_type and all(line.get(k) == v for k, v in fields.items())
    )


async def test_stream_resumes_after_the_notification_service_restarts(
    dev_mesh: Mesh, auth: Auth, sdk_bundle: Path
) -> None:
    eu = dev_mesh.endpoints["eu"]
    async with (
        ChatClient.from_edge(
            dev_mesh.endpoints["us-east"]["edge"], token=mint(auth.keys, "ts-ana")
        ) as ana,
        ChatClient.from_edge(eu["edge"], token=mint(auth.keys, "ts-ben")) as ben_reads,
    ):
        created = await ana.create_channel("ts-resume", ["ts-ben"], timeout=10)
        channel_id = created.channel.channel_id

        async def say(text: str) -> int:
            resp = await ana.send_message(channel_id, text, client_msg_id=text, timeout=10)
            return int(resp.message.seq)

        async with follow(eu["edge"]["http"], mint(auth.keys, "ts-ben")) as ben:
            await ben.expect("live", _is("state", kind="live"))
            await say("m1")
            await ben.expect("m1", _is("event", text="m1"))

            notification = dev_mesh.services["notification-eu-1"]
            await notification.stop()
            mark = await ben.expect("retrying", _is("state", kind="retrying"))
            await say("m2")
            last = await say("m3")

            async def eu_has_m3() -> bool:
                # Come back once eu's history holds m3: the replay reads it from there.
                resp = await ben_reads.get_history(channel_id, timeout=5)
                return int(resp.last_seq) >= last

            await eventually(eu_has_m3, timeout=20, what="eu history reaching m3")
            await notification.restart()
            await ben.expect("replay of m2, m3", _is("replay", replayed="2"), after=mark)
            await ben.expect("live again", _is("state", kind="live"), after=mark)
            await say("m4")
            await ben.expect("m4", _is("event", text="m4"))
            assert await ben.close() == 0

    events = [ln for ln in ben.lines if ln["type"] == "event" and ln["channelId"] == channel_id]
    seqs = [int(e["seq"]) for e in events]
    assert seqs == sorted(set(seqs)), f"duplicates or disorder: {seqs}"
    assert [e["text"] for e in events if e["kind"] == "messageCreated"] == ["m1", "m2", "m3", "m4"]
    done = ben.lines[-1]
    assert done["type"] == "done" and done["positions"] == {channel_id: str(seqs[-1])}


async def test_permission_denied_is_fatal(dev_mesh: Mesh, auth: Auth, sdk_bundle: Path) -> None:
    async with (
        ChatClient.from_edge(
            dev_mesh.endpoints["us-east"]["edge"], token=mint(auth.keys, "ts-ana")
        ) as ana,
        ChatClient.from_edge(
            dev_mesh.endpoints["eu"]["edge"], token=mint(auth.keys, "ts-cy")
        ) as cy,
    ):
        created = await ana.create_channel("ts-private", ["ts-cy"], timeout=10)
        channel_id = created.channel.channel_id

        async def eu_knows_channel() -> bool:
            # Until eu's metadata has the channel, eu would answer NOT_FOUND instead.
            resp = await cy.get_channel(channel_id, timeout=5)
            return resp.channel.channel_id == channel_id

        await eventually(eu_knows_channel, timeout=20, what="eu replicating the channel")
    # ts-dan resumes a channel he is not in: retrying cannot help, so the client stops.
    async with follow(
        dev_mesh.endpoints["eu"]["edge"]["http"],
        mint(auth.keys, "ts-dan"),
        resumeFrom={channel_id: "0"},
    ) as dan:
        assert await dan.exit_code() == 2
    assert dan.lines[-1] == {
        "type": "fatal",
        "code": PERMISSION_DENIED,
        "message": dan.lines[-1]["message"],
    }
    assert dan.lines[-2] == {"type": "state", "kind": "stopped", "code": PERMISSION_DENIED}
    # Transient failures before it (an edge reconnecting to a restarted backend) are retried;
    # the refusal itself never is.
    assert all(
        ln.get("code") != PERMISSION_DENIED for ln in dan.lines if ln.get("kind") == "retrying"
    )


async def test_a_bad_token_is_fatal(dev_mesh: Mesh, sdk_bundle: Path) -> None:
    async with follow(dev_mesh.endpoints["eu"]["edge"]["http"], "not-a-token") as anon:
        assert await anon.exit_code() == 2
    assert anon.lines[-1]["type"] == "fatal"
    assert anon.lines[-1]["code"] == UNAUTHENTICATED
