"""GetPresence answers only about people the caller shares a channel with (issue 13, finding 5).

Strangers must look exactly like users who were never seen, so the answer can
neither show a stranger's status nor tell an existing account from a made-up one.
Metadata is embedded SQLite; the presence store is a stand-in that knows everyone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatmesh.internal.v1 import presence_pb2 as internal_presence_pb2
from chatmesh.v1 import presence_pb2, query_service_pb2 as pb
from mesh.bus.subjects import WRITES_EVERY_REGION, Subjects
from mesh.core.events import new_event
from mesh.core.regional_presence import RegionalPresence
from mesh.stores import open_history, open_metadata
from services.query.service import Queries

ONLINE, OFFLINE = presence_pb2.PRESENCE_STATUS_ONLINE, presence_pb2.PRESENCE_STATUS_OFFLINE


class EveryoneKnown:
    """Valkey as it would answer: carol and erin online, dave seen yesterday, others never."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    async def get(self, user_ids: list[str]) -> list[presence_pb2.Presence]:
        self.asked.append(list(user_ids))
        out = []
        for user in user_ids:
            p = presence_pb2.Presence(user_id=user)
            if user in ("carol", "erin"):
                p.status, p.regions[:] = ONLINE, ["eu"]
                p.last_seen_at.FromMilliseconds(1_700_000_000_000)
            elif user == "dave":
                p.status = OFFLINE
                p.last_seen_at.FromMilliseconds(1_600_000_000_000)
            out.append(p)
        return out


@pytest.fixture
async def queries(tmp_path: Path) -> AsyncIterator[tuple[Queries, EveryoneKnown]]:
    metadata = await open_metadata(f"sqlite:///{tmp_path}/metadata.db")
    history = await open_history(f"sqlite:///{tmp_path}/history.db")
    created = new_event("ch_a", seq=1, origin_region="us-east", actor="alice")
    created.channel_created.channel.channel_id = "ch_a"
    created.channel_created.channel.member_user_ids.extend(["alice", "carol"])
    await metadata.apply(created)
    presence = EveryoneKnown()
    yield Queries(history, metadata, presence), presence  # type: ignore[arg-type]
    await metadata.close()
    await history.close()


async def test_presence_of_strangers_looks_like_never_seen(
    queries: tuple[Queries, EveryoneKnown],
) -> None:
    q, presence = queries
    resp = await q.get_presence(
        "alice", pb.GetPresenceRequest(user_ids=["carol", "dave", "erin", "nobody", "alice"])
    )
    by_user = {p.user_id: p for p in resp.presences}
    assert [p.user_id for p in resp.presences] == ["carol", "dave", "erin", "nobody", "alice"]
    assert by_user["carol"].status == ONLINE and list(by_user["carol"].regions) == ["eu"]
    # dave (offline, seen before), erin (online) and nobody (never seen): identical answers.
    for user in ("dave", "erin", "nobody"):
        assert by_user[user] == presence_pb2.Presence(user_id=user), by_user[user]
    # The strangers were not even looked up.
    assert presence.asked == [["carol", "alice"]]


async def test_a_user_with_no_channels_learns_nothing_about_anyone(
    queries: tuple[Queries, EveryoneKnown],
) -> None:
    q, presence = queries
    resp = await q.get_presence("mallory", pb.GetPresenceRequest(user_ids=["carol", "dave"]))
    assert list(resp.presences) == [
        presence_pb2.Presence(user_id="carol"),
        presence_pb2.Presence(user_id="dave"),
    ]
    assert presence.asked == []


class Heard:
    """A NATS message as the Query Service's subscription hands it over."""

    def __init__(self, subject: str, data: bytes) -> None:
        self.subject, self.data, self.reply = subject, data, ""


async def test_every_region_presence_merges_other_regions_for_acquaintances_only(
    queries: tuple[Queries, EveryoneKnown],
) -> None:
    """ADR-026: the other regions' snapshots add where users are online; strangers
    still look never seen, even when another region has them online."""
    q, _ = queries
    view = RegionalPresence("eu", timeout=6.0)
    merged = Queries(q.history, q.metadata, q.presence, writes=WRITES_EVERY_REGION,
                     remote_presence=view)  # fmt: skip
    snap = internal_presence_pb2.PresenceSnapshot(
        region="asia", epoch="fo_1", seq=1, taken_at_ms=1,
        users=[internal_presence_pb2.OnlineUser(user_id=u) for u in ("carol", "erin", "alice")],
    )  # fmt: skip
    await merged.on_presence_snapshot(
        Heard(Subjects.presence_snapshot("asia"), snap.SerializeToString())
    )  # type: ignore[arg-type]
    await merged.on_presence_snapshot(Heard("x", b"\xff not a snapshot"))  # type: ignore[arg-type]
    resp = await merged.get_presence(
        "alice", pb.GetPresenceRequest(user_ids=["carol", "erin", "alice", "nobody"])
    )
    by_user = {p.user_id: p for p in resp.presences}
    assert list(by_user["carol"].regions) == ["asia", "eu"] and by_user["carol"].status == ONLINE
    assert by_user["alice"].status == ONLINE and list(by_user["alice"].regions) == ["asia"]
    for user in ("erin", "nobody"):  # erin is online in asia and eu, but a stranger
        assert by_user[user] == presence_pb2.Presence(user_id=user), by_user[user]
