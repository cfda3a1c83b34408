"""GetHistory, GetChannel and ListChannels in the every-region write mode (ADR-026).

The region's stores are real SQLite files holding events written in three
regions (applied as its worker would); nothing is started.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatmesh.v1 import events_pb2, query_service_pb2 as pb
from mesh.core.errors import InvalidArgument, PermissionDenied
from mesh.stores import open_history, open_metadata
from services.query.service import Queries, encode_page_token
from tests.stores.origin_events import Origin

CH = "ch_eu_0123456789abcdefghjkmnpqrs"


@pytest.fixture
async def queries(tmp_path: Path) -> AsyncIterator[Queries]:
    history = await open_history(f"sqlite:///{tmp_path}/history.db")
    metadata = await open_metadata(f"sqlite:///{tmp_path}/metadata.db")
    eu, us, asia = Origin("eu", CH), Origin("us-east", CH), Origin("asia", CH)
    events = [eu.create_channel(100, ["alice", "bob"])]
    # Twelve messages at one hlc from three regions, then three later ones.
    for i in range(12):
        region = (eu, us, asia)[i % 3]
        events.append(region.send(500, f"msg_tie{i:02d}", f"tie {i}", ("alice", "bob")[i % 2]))
    for i in range(3):
        events.append(us.send(600 + i, f"msg_late{i}", f"late {i}", "bob"))
    for event in reversed(events):  # any order will do
        await history.apply([event])
        await metadata.apply(event)
    yield Queries(history, metadata, None, writes="every-region")  # type: ignore[arg-type]
    await history.close()
    await metadata.close()


async def read_all(queries: Queries, limit: int) -> list[str]:
    """Every message id, reading pages newest first by next_page_token."""
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await queries.get_history(
            "alice", pb.GetHistoryRequest(channel_id=CH, limit=limit, page_token=token)
        )
        pages.insert(0, [m.message_id for m in page.messages])
        assert page.has_more == bool(page.next_page_token)
        if not page.next_page_token:
            return [i for p in pages for i in p]
        token = page.next_page_token


async def test_pages_by_token_lose_no_message_tied_at_one_hlc(queries: Queries) -> None:
    everything = await read_all(queries, 200)
    assert len(everything) == 15 and everything[-3:] == ["msg_late0", "msg_late1", "msg_late2"]
    # At hlc 500: asia's before eu's before us-east's, each region's in event-id order.
    assert everything[:4] == ["msg_tie02", "msg_tie05", "msg_tie08", "msg_tie11"]
    for limit in (1, 2, 3, 5, 7):
        assert await read_all(queries, limit) == everything, limit


async def test_history_reports_positions_per_origin_and_hides_others_keys(queries: Queries) -> None:
    page = await queries.get_history("alice", pb.GetHistoryRequest(channel_id=CH, limit=3))
    assert dict(page.last_origin_seqs) == {"eu": 5, "us-east": 7, "asia": 4}
    assert [m.text for m in page.messages] == ["late 0", "late 1", "late 2"]
    assert all(m.client_msg_id == "" for m in page.messages)  # bob's keys, alice reads
    own = await queries.get_history("bob", pb.GetHistoryRequest(channel_id=CH, limit=1))
    assert own.messages[0].client_msg_id == "k-msg_late2"
    with pytest.raises(PermissionDenied):
        await queries.get_history("mallory", pb.GetHistoryRequest(channel_id=CH))


@pytest.mark.parametrize(
    "token",
    [
        "not a token!",
        base64.urlsafe_b64encode(b"{}").decode(),
        base64.urlsafe_b64encode(b'["ch_x", "500", "eu", "evt"]').decode(),
        base64.urlsafe_b64encode(b'["ch_x", -1, "eu", "evt"]').decode(),
        encode_page_token("ch_eu_zzzzzzzzzzzzzzzzzzzzzzzzzz", (500, "eu", "evt_x")),
    ],
)
async def test_a_bad_page_token_is_invalid_argument(queries: Queries, token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await queries.get_history("alice", pb.GetHistoryRequest(channel_id=CH, page_token=token))
    assert [v.field for v in caught.value.violations] == ["page_token"]
    assert "page_token" in str(caught.value)


def test_a_token_fits_the_contract_for_the_longest_names() -> None:
    longest = "ch_" + "r" * 32 + "_" + "0" * 26
    assert len(encode_page_token(longest, (2**64 - 1, "r" * 32, "evt_" + "0" * 26))) <= 256


async def test_a_channel_created_in_another_region_is_shown(queries: Queries) -> None:
    got = await queries.get_channel("bob", pb.GetChannelRequest(channel_id=CH))
    assert got.channel.name == "room" and list(got.channel.member_user_ids) == ["alice", "bob"]
    listed = await queries.list_channels("alice", pb.ListChannelsRequest())
    assert [s.channel.channel_id for s in listed.channels] == [CH]


async def test_the_services_refuse_the_mode_with_stores_that_lack_it(tmp_path: Path) -> None:
    """Checked before any connection is made: the error names the setting and ADR-026."""
    from services.command.__main__ import main as command_main
    from services.command.config import CommandConfig
    from services.query.__main__ import main as query_main
    from services.query.config import QueryConfig
    from services.worker.__main__ import main as worker_main
    from services.worker.config import WorkerConfig

    cassandra, mongo = "cassandra://127.0.0.1:1/chatmesh?dc=eu", "mongodb://127.0.0.1:1/chatmesh"
    with pytest.raises(ValueError, match=r"history_store.*ADR-026"):
        await query_main(QueryConfig(writes="every-region", history_store=cassandra))
    with pytest.raises(ValueError, match=r"metadata_store.*ADR-026"):
        await command_main(CommandConfig(writes="every-region", metadata_store=mongo))
    with pytest.raises(ValueError, match=r"history_store.*ADR-026"):
        await worker_main(WorkerConfig(writes="every-region", history_store=cassandra))
    with pytest.raises(ValueError, match=r"needs metadata_store.*ADR-026"):
        await worker_main(
            WorkerConfig(writes="every-region", history_store=f"sqlite:///{tmp_path}/h.db")
        )


async def test_list_channels_counts_unread_by_the_per_origin_marker(queries: Queries) -> None:
    # Of alice's messages (bob reads them): tie 0, 2, 4, ... — six, from eu/asia/us-east.
    summary = (await queries.list_channels("bob", pb.ListChannelsRequest())).channels[0]
    assert (summary.unread_count, dict(summary.last_read_origins)) == (6, {})
    marker = events_pb2.Event(channel_id=CH, origin_region="eu", actor_user_id="bob")
    marker.read_marker_updated.user_id = "bob"
    # eu 1 is the creation; eu 2, 3, 4, 5 are ties 0, 3, 6, 9 (alice: 0 and 6).
    marker.read_marker_updated.last_read_origins.update({"eu": 5, "asia": 1})
    await queries.metadata.apply(marker)
    summary = (await queries.list_channels("bob", pb.ListChannelsRequest())).channels[0]
    assert dict(summary.last_read_origins) == {"eu": 5, "asia": 1}
    # Left: us-east's ties 4 and 10 (ties 1 and 7 are bob's), asia's tie 8 (asia 3).
    assert summary.unread_count == 3
    assert summary.last_read_seq == 0
