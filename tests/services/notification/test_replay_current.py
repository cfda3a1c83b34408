"""Replay, gap fills and sweeps send each message in its current state (issue 13, finding 1).

``Subscribe{resume_from: {ch: 0}}`` used to replay the original ``message_created``
events, so any member — one who joined after the deletion too — received deleted
and pre-edit text. Now every history read of the Hub goes through
``mesh.stores.current.CurrentHistory``: a deleted message is a tombstone without
text, an edited one carries only its latest text, and the events keep their seqs.
Embedded SQLite history and metadata, in-memory bus; nothing else is started.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatmesh.v1 import events_pb2
from mesh.core.events import new_event
from mesh.stores import HistoryStore, open_history, open_metadata
from mesh.stores.current import current_events
from services.notification.hub import Hub
from tests.bus.fakes import FakeBus
from tests.services.notification.test_subscriber import FakePresence

CH = "ch_a"


def created(seq: int, text: str, key: str = "") -> events_pb2.Event:
    event = new_event(CH, seq=seq, origin_region="us-east", actor="alice")
    m = event.message_created.message
    m.message_id, m.channel_id, m.seq, m.sender_user_id = f"msg_{seq}", CH, seq, "alice"
    m.text, m.client_msg_id = text, key
    return event


def edited(seq: int, of: events_pb2.Event, text: str) -> events_pb2.Event:
    event = new_event(CH, seq=seq, origin_region="us-east", actor="alice")
    m = event.message_edited.message
    m.CopyFrom(of.message_created.message)
    m.text, m.client_msg_id = text, ""
    m.edited_at.CopyFrom(event.occurred_at)
    return event


def deleted(seq: int, of: events_pb2.Event) -> events_pb2.Event:
    event = new_event(CH, seq=seq, origin_region="us-east", actor="alice")
    event.message_deleted.message_id = of.message_created.message.message_id
    event.message_deleted.message_seq = of.seq
    return event


def joined(seq: int, user: str) -> events_pb2.Event:
    event = new_event(CH, seq=seq, origin_region="us-east", actor=user)
    event.member_joined.user_id = user
    return event


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[HistoryStore, Hub]]:
    history = await open_history(f"sqlite:///{tmp_path}/history.db")
    metadata = await open_metadata(f"sqlite:///{tmp_path}/metadata.db")
    bus = FakeBus()
    channel = new_event(CH, seq=1, origin_region="us-east", actor="alice")
    channel.channel_created.channel.channel_id = CH
    channel.channel_created.channel.member_user_ids.extend(["alice", "bob"])
    first = created(2, "regretted secret", key="k-secret")
    kept = created(3, "first draft")
    log = [channel, first, kept, created(4, "plain"), edited(5, kept, "second draft"),
           deleted(6, first), edited(7, kept, "final words"), joined(8, "newbie")]  # fmt: skip
    for event in log:
        await metadata.apply(event)
    await history.apply(log, stream_seq=len(log))
    hub = Hub(
        bus=bus, history=history, metadata=metadata, presence=FakePresence(),  # type: ignore[arg-type]
        region="eu", instance_id="n1", route_heartbeat=3600, buffer_size=50, replay_page=2,
        catchup_timeout=5,
    )  # fmt: skip
    await hub.start()
    yield history, hub
    await hub.stop()
    await metadata.close()
    await history.close()
    await bus.close()


def texts(events: list[events_pb2.Event]) -> list[tuple[int, str, str, bool]]:
    out = []
    for e in events:
        kind = e.WhichOneof("payload") or ""
        m = getattr(e, kind).message if kind in ("message_created", "message_edited") else None
        out.append((e.seq, kind, m.text if m else "", m.deleted if m else False))
    return out


EXPECTED = [
    (1, "channel_created", "", False),
    (2, "message_created", "", True),  # the tombstone: no text
    (3, "message_created", "final words", False),
    (4, "message_created", "plain", False),
    (5, "message_edited", "final words", False),
    (6, "message_deleted", "", False),
    (7, "message_edited", "final words", False),
    (8, "member_joined", "", False),
]


async def test_a_new_member_replaying_from_zero_sees_a_tombstone_and_only_latest_text(
    stores: tuple[HistoryStore, Hub],
) -> None:
    _, hub = stores
    got: list[events_pb2.Event] = []
    async for item in hub.subscribe("newbie", {CH: 0}):
        if item.HasField("replay_complete"):
            break
        got.append(item.event)
    assert texts(got) == EXPECTED  # seqs and kinds unchanged, texts current (pages of 2)
    raw = b"".join(e.SerializeToString() for e in got)
    assert b"regretted secret" not in raw and b"draft" not in raw
    # Only the sender sees their client_msg_id; the newcomer sees none.
    assert all(e.message_created.message.client_msg_id == "" for e in got)


async def test_the_sender_keeps_their_key_and_gap_reads_are_current_too(
    stores: tuple[HistoryStore, Hub],
) -> None:
    history, hub = stores
    page = await hub.history.events_after(CH, 1, 500)  # what gap fills and sweeps read
    assert texts(page) == EXPECTED[1:]
    assert page[0].message_created.message.client_msg_id == "k-secret"
    assert hub.visible(page[0], "alice") is page[0]
    # The store itself is untouched: the wrapper changes what is shown, not what is kept.
    [original] = await history.events_after(CH, 1, 1)
    assert original.message_created.message.text == "regretted secret"


async def test_events_without_messages_are_returned_as_they_are(
    stores: tuple[HistoryStore, Hub],
) -> None:
    history, _ = stores
    events = await history.events_after(CH, 0, 1) + await history.events_after(CH, 7, 1)
    assert await current_events(history, CH, events) is events


def test_the_terminal_chat_shows_a_replayed_tombstone_as_deleted() -> None:
    from mesh.cli.chat import describe

    tomb = created(2, "")
    tomb.message_created.message.deleted = True
    assert describe(tomb, "bob") == "[2] alice@: (deleted)"
    assert describe(created(3, "hi"), "bob") == "[3] alice@: hi"
