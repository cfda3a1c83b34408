"""``chatmesh chat``: two terminal users in two regions talk through their edges."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator

import pytest

from mesh.client import ChatClient
from mesh.core.auth import mint
from mesh.harness.supervisor import Mesh
from tests.helpers import Auth, eventually

pytestmark = pytest.mark.services


class Terminal:
    """A ``chatmesh chat`` process with its stdin and stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.output: list[str] = []

    async def expect(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Reads output lines until one matches ``pattern``."""
        assert self.proc.stdout is not None

        async def scan() -> re.Match[str]:
            while True:
                raw = await self.proc.stdout.readline()  # type: ignore[union-attr]
                if not raw:
                    raise AssertionError(f"chat exited; output so far: {self.output}")
                line = raw.decode().replace("\r", "").removeprefix("> ")
                self.output.append(line)
                if match := re.search(pattern, line):
                    return match

        return await asyncio.wait_for(scan(), timeout)

    async def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{line}\n".encode())
        await self.proc.stdin.drain()


@contextlib.asynccontextmanager
async def chat(mesh: Mesh, *args: str) -> AsyncIterator[Terminal]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mesh.cli.main",
        "chat",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "CHATMESH_RUN_DIR": str(mesh.run_dir)},
    )
    term = Terminal(proc)
    try:
        yield term
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_two_terminals_in_two_regions_talk(dev_mesh: Mesh, auth: Auth) -> None:
    async with chat(dev_mesh, "cli-amy", "--region", "eu", "--with", "cli-bo") as amy:
        channel = (await amy.expect(r"cli-amy in eu, channel (ch_[0-9a-z]{26})")).group(1)
        async with chat(dev_mesh, "cli-bo", "--region", "us-east", "--channel", channel) as bo:
            await bo.expect(r"cli-bo in us-east, channel " + channel)
            await amy.type("hello from eu")
            await bo.expect(r"\] cli-amy@eu: hello from eu$")
            await bo.type("hi amy")
            await amy.expect(r"\] cli-bo@us-east: hi amy$")
            await bo.type("/quit")
            assert await asyncio.wait_for(bo.proc.wait(), 30) == 0
        await amy.type("/quit")
        assert await asyncio.wait_for(amy.proc.wait(), 30) == 0
    async with ChatClient.from_edge(
        dev_mesh.endpoints["us-east"]["edge"], token=mint(auth.keys, "cli-bo")
    ) as bo_client:

        async def stored() -> list[tuple[str, str]]:
            page = await bo_client.get_history(channel)
            return [(m.sender_user_id, m.text) for m in page.messages if len(page.messages) >= 2]

        messages = await eventually(stored, timeout=20, what="both messages in history")
    assert messages == [("cli-amy", "hello from eu"), ("cli-bo", "hi amy")]


async def test_chat_refuses_an_unknown_region(dev_mesh: Mesh) -> None:
    async with chat(dev_mesh, "cli-amy", "--region", "mars") as term:
        assert await asyncio.wait_for(term.proc.wait(), 30) == 2
        await term.expect(r"unknown region 'mars'")
