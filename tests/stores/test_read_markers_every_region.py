"""Per-origin read markers and unread counts in the every-region mode (ADR-026), nothing started.

A read marker there is a map origin region -> highest ``origin_seq`` read, merged
per origin as the maximum (a CRDT): whatever order a user's marker updates,
written in different regions, reach a region, and however often, every region
ends with the same marker, and it never moves back. The unread count is by
position, not by hlc: a message from a region that was cut off counts as unread
even when its timestamp sorts it before what was read. Each test applies its
events in many orders into real SQLite files, one channel per order.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from chatmesh.v1 import events_pb2
from mesh.core.convergence import cap_read_marker, merge_read_markers
from mesh.stores import HistoryStore, MetadataStore, open_history, open_metadata
from mesh.stores.current import CurrentHistory
from tests.stores.origin_events import Origin


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[HistoryStore, MetadataStore]]:
    history = await open_history(f"sqlite:///{tmp_path}/history.db")
    metadata = await open_metadata(f"sqlite:///{tmp_path}/metadata.db")
    yield history, metadata
    await history.close()
    await metadata.close()


def marker_update(
    channel_id: str, region: str, user: str, origins: Mapping[str, int], n: int
) -> events_pb2.Event:
    """A ``read_marker_updated`` event as ``region``'s Command Service writes it."""
    event = events_pb2.Event(
        event_id=f"evt_rm_{region}_{n}",
        channel_id=channel_id,
        origin_region=region,
        actor_user_id=user,
    )
    event.read_marker_updated.user_id = user
    event.read_marker_updated.last_read_origins.update(origins)
    return event


def test_merge_is_a_per_origin_maximum_and_a_semilattice() -> None:
    a, b, c = {"eu": 4, "asia": 2}, {"eu": 3, "us-east": 7}, {"asia": 9, "eu": 0}
    assert merge_read_markers(a, b, c) == {"asia": 9, "eu": 4, "us-east": 7}
    for x, y in itertools.permutations([a, b, c], 2):
        assert merge_read_markers(x, y) == merge_read_markers(y, x)  # commutative
        assert merge_read_markers(x, x) == merge_read_markers(x)  # idempotent
    assert merge_read_markers(merge_read_markers(a, b), c) == merge_read_markers(
        a, merge_read_markers(b, c)
    )
    assert merge_read_markers({"eu": 0}) == {}


def test_a_marker_beyond_what_the_region_applied_is_capped() -> None:
    known = {"eu": 6, "asia": 3}
    assert cap_read_marker({"eu": 9, "asia": 2, "mars": 5}, known) == {"asia": 2, "eu": 6}
    assert cap_read_marker({"us-east": 4}, known) == {}  # nothing of it applied here


async def test_marker_updates_converge_in_any_order_and_never_move_back(
    stores: tuple[HistoryStore, MetadataStore],
) -> None:
    _, metadata = stores
    updates = [
        ("eu", {"eu": 3}),
        ("eu", {"eu": 5, "asia": 1}),
        ("asia", {"asia": 4}),  # written in asia during a cut: eu's 5 unseen there
        ("us-east", {"eu": 2, "us-east": 8}),  # an older view of eu from us-east
        ("asia", {"asia": 4, "eu": 1}),
        ("eu", {"eu": 5, "asia": 1}),  # repeated
    ]
    expected = {"asia": 4, "eu": 5, "us-east": 8}
    rng = random.Random(15)
    orders = [list(p) for p in itertools.permutations(range(len(updates)))]
    for n, order in enumerate(rng.sample(orders, 40)):
        channel_id = f"ch_{n:026d}"
        seen: dict[str, int] = {}
        for i in order:
            region, origins = updates[i]
            await metadata.apply(marker_update(channel_id, region, "bob", origins, i))
            marker = await metadata.origin_read_marker("bob", channel_id)
            assert all(marker.get(o, 0) >= s for o, s in seen.items()), (order, seen, marker)
            seen = marker
        assert seen == expected, order
    everyone = await metadata.origin_read_markers("bob")
    assert len(everyone) == 40 and all(m == expected for m in everyone.values())
    assert await metadata.origin_read_markers("alice") == {}
    # The primary mode's seq marker is another thing and stays as it was.
    assert await metadata.read_marker("bob", "ch_" + "0" * 26) == 0


def unread_scenario(channel_id: str) -> list[events_pb2.Event]:
    """Messages to bob from three regions; asia was cut off and writes with older hlcs."""
    eu, us, asia = (Origin(r, channel_id) for r in ("eu", "us-east", "asia"))
    m = [f"msg_{channel_id}_{n}" for n in range(8)]
    return [
        eu.create_channel(100, ["alice", "bob", "carol"]),  # eu 1
        eu.send(200, m[0], "a", "alice"),  # eu 2: read
        us.send(210, m[1], "b", "carol"),  # us 1: read
        eu.send(300, m[2], "c", "alice"),  # eu 3: unread
        eu.send(310, m[3], "mine", "bob"),  # eu 4: his own: never unread
        us.send(320, m[4], "d", "carol"),  # us 2: unread, then deleted
        us.delete(330, m[4], "carol"),  # us 3
        asia.send(150, m[5], "late", "carol"),  # asia 1: older hlc than what he read: unread
        asia.send(160, m[6], "late too", "alice"),  # asia 2: unread
        eu.send(340, m[6], "late too", "alice"),  # eu 5: alice's retry of m6: one message
        us.send(350, m[7], "e", "carol"),  # us 4: unread
    ]


async def test_unread_counts_by_origin_position_in_any_arrival_order(
    stores: tuple[HistoryStore, MetadataStore],
) -> None:
    history, metadata = stores
    read_through = {"eu": 2, "us-east": 1}  # bob read eu 1-2 and us 1; nothing of asia
    rng = random.Random(26)
    for n in range(30):
        channel_id = f"ch_{n:026d}"
        events = unread_scenario(channel_id)
        rng.shuffle(events)
        for event in events:
            await history.apply([event])
            await metadata.apply(event)
        # m2 (eu 3), m5 (asia 1), m6 (kept at asia 2: its hlc sorts first), m7 (us 4).
        assert await history.origin_unread_count(channel_id, read_through, "bob") == 4
        assert await history.origin_unread_count(channel_id, {}, "bob") == 6
        assert await history.origin_unread_count(channel_id, {"eu": 5, "us-east": 4}, "bob") == 2
        everything = {"eu": 5, "us-east": 4, "asia": 2}
        assert await history.origin_unread_count(channel_id, everything, "bob") == 0
        assert await history.origin_unread_count(channel_id, {}, "bob", cap=3) == 3
        # Through the store the Query and Notification services read.
        current = CurrentHistory(history)
        assert await current.origin_unread_count(channel_id, read_through, "bob") == 4


async def test_a_late_message_from_a_cut_off_region_is_unread_though_older(
    stores: tuple[HistoryStore, MetadataStore],
) -> None:
    history, _ = stores
    channel_id = "ch_" + "1" * 26
    eu, asia = Origin("eu", channel_id), Origin("asia", channel_id)
    await history.apply(
        [eu.create_channel(100, ["alice", "bob"]), eu.send(500, "msg_new", "x", "alice")]
    )
    marker = {"eu": 2}
    assert await history.origin_unread_count(channel_id, marker, "bob") == 0
    # asia healed: its message was written at hlc 300, before the one bob read.
    await history.apply([asia.send(300, "msg_old", "from the cut", "alice")])
    assert await history.origin_unread_count(channel_id, marker, "bob") == 1
    page = await history.ordered_history(channel_id)
    assert [m.message_id for m in page.messages] == ["msg_old", "msg_new"]


async def test_unread_index_is_built_for_a_history_stored_before_it(tmp_path: Path) -> None:
    path = f"sqlite:///{tmp_path}/history.db"
    history = await open_history(path)
    channel_id = "ch_" + "2" * 26
    eu = Origin("eu", channel_id)
    await history.apply(
        [eu.create_channel(100, ["alice", "bob"]), eu.send(200, "msg_a", "x", "alice")]
    )
    conn = history.conn  # type: ignore[attr-defined]
    conn.execute("DELETE FROM origin_unread")  # as a file written before the index existed
    await history.close()
    history = await open_history(path)
    try:
        assert await history.origin_unread_count(channel_id, {}, "bob") == 1
    finally:
        await history.close()
