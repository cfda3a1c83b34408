"""Commands over the group-committing SQLite log (ADR-023): concurrent sends share
commits, yet each still gets its own seq, and nothing is acknowledged or published
before the commit that holds it.

Nothing is started: the bus is the in-memory fake, the stores are SQLite files. A
second connection holding the command log's write lock stands for a slow disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatmesh.v1 import command_service_pb2 as pb, events_pb2
from mesh.bus.subjects import Subjects
from mesh.stores import open_command, open_metadata
from services.command.service import Commands
from tests.bus.fakes import FakeBus

ORIGIN = "us-east"


@pytest.fixture
async def commands(tmp_path: Path) -> AsyncIterator[Commands]:
    bus = FakeBus()
    log = await open_command(f"sqlite:///{tmp_path}/command.db")
    metadata = await open_metadata(f"sqlite:///{tmp_path}/metadata.db", primary_reads=True)
    yield Commands(
        bus=bus, events=bus, jetstream=bus, command_store=log, metadata=metadata, region=ORIGIN
    )
    await log.close()
    await metadata.close()
    await bus.close()


def stream(commands: Commands, channel_id: str) -> list[tuple[int, str]]:
    bus = commands.events
    assert isinstance(bus, FakeBus)
    return [
        (e.seq, e.message_created.message.text)
        for e in (
            events_pb2.Event.FromString(m.data)
            for m in bus.stored(subject=Subjects.channel_events(channel_id))
        )
        if e.WhichOneof("payload") == "message_created"
    ]


async def channels(commands: Commands, n: int) -> list[str]:
    made = []
    for i in range(n):
        resp = await commands.create_channel(
            "alice",
            pb.CreateChannelRequest(
                name=f"c{i}", member_user_ids=["bob"], client_request_id=f"r{i}"
            ),
            ORIGIN,
        )
        made.append(resp.channel.channel_id)
    return made


def send(channel_id: str, key: str) -> pb.SendMessageRequest:
    return pb.SendMessageRequest(channel_id=channel_id, client_msg_id=key, text=key)


async def test_concurrent_sends_on_many_channels_each_get_their_own_seq_in_order(
    commands: Commands,
) -> None:
    chans = await channels(commands, 8)
    results = await asyncio.gather(
        *(
            commands.send_message("alice", send(ch, f"{ch}:{n}"), ORIGIN)
            for n in range(5)
            for ch in chans
        )
    )

    for ch in chans:
        mine = [r.message for r in results if r.message.channel_id == ch]
        assert sorted(m.seq for m in mine) == [2, 3, 4, 5, 6]  # seq 1 is the creation
        # The stream holds each channel's sends in seq order, each once, each as acked.
        assert stream(commands, ch) == sorted((m.seq, m.text) for m in mine)
    assert await commands.log.unpublished() == []
    # A retry after all that is still the same message.
    again = await commands.send_message("alice", send(chans[0], f"{chans[0]}:0"), ORIGIN)
    assert again.duplicate and again.message.seq == 2


async def test_no_send_is_acknowledged_or_published_before_its_commit(
    commands: Commands, tmp_path: Path
) -> None:
    chans = await channels(commands, 4)
    other = sqlite3.connect(str(tmp_path / "command.db"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the log cannot commit until this ends
    try:
        sends = [
            asyncio.create_task(commands.send_message("alice", send(ch, f"k{i}"), ORIGIN))
            for i, ch in enumerate(chans)
        ]
        for _ in range(5):
            await asyncio.sleep(0)
        assert not any(t.done() for t in sends)
        assert all(stream(commands, ch) == [] for ch in chans)
    finally:
        other.execute("ROLLBACK")
        other.close()
    acked = await asyncio.gather(*sends)
    assert [stream(commands, r.message.channel_id) for r in acked] == [
        [(2, f"k{i}")] for i in range(4)
    ]
