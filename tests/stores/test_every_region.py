"""The SQLite stores in the every-region write mode (ADR-026): same events, same answers.

Every region applies every region's events in whatever order they reach it, so
a store's answers must be a function of the *set* of a channel's events. These
tests apply one scenario (a retried send through a second region, concurrent
edits, an edit after a delete, a leave concurrent with a re-join, a re-join
that saw the leave) in many orders, each into its own channel of the same real
SQLite files, and compare every answer, and check each against the rules of
``mesh/core/convergence.py`` worked out by hand.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chatmesh.v1 import events_pb2
from mesh.core.convergence import Stamp, order_key
from mesh.stores import HistoryStore, MetadataStore, check_write_mode, open_history, open_metadata
from mesh.stores.current import CurrentHistory
from tests.stores.origin_events import Origin


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[HistoryStore, MetadataStore]]:
    history = await open_history(f"sqlite:///{tmp_path}/history.db")
    metadata = await open_metadata(f"sqlite:///{tmp_path}/metadata.db")
    yield history, metadata
    await history.close()
    await metadata.close()


def scenario(channel_id: str) -> list[events_pb2.Event]:
    """Fifteen events of one channel from three regions (see the expectations below)."""
    eu, us, asia = Origin("eu", channel_id), Origin("us", channel_id), Origin("asia", channel_id)
    m1, m2, m3 = (f"msg_{channel_id}_{n}" for n in (1, 2, 3))
    return [
        eu.create_channel(100, ["alice", "bob", "carol"]),  # eu 1
        eu.send(110, m1, "hello", "alice"),  # eu 2
        us.send(110, m2, "hi", "bob"),  # us 1: same hlc as m1, sorts after (us > eu)
        asia.send(120, m1, "hello", "alice"),  # asia 1: alice's retry through asia: dropped
        us.edit(130, m2, "v2", "bob"),  # us 2: the last edit by order key
        eu.edit(125, m2, "v3", "bob"),  # eu 3: concurrent and older: loses
        asia.send(140, m3, "secret", "carol"),  # asia 2: a retry...
        us.send(135, m3, "secret", "carol"),  # us 3: ...whose other copy sorts first: kept
        eu.delete(145, m3, "carol"),  # eu 4
        asia.edit(160, m3, "back?", "carol"),  # asia 3: after the delete: stays deleted
        us.leave(170, "bob", {"eu": 1, "us": 3}),  # us 4
        eu.join(172, "bob", {"eu": 4}),  # eu 5: had not seen us 4: the leave wins
        asia.leave(171, "carol", {"eu": 1, "asia": 3}),  # asia 4
        asia.join(180, "carol", {"eu": 1, "asia": 4}),  # asia 5: saw her leave: back in
        eu.join(175, "dave", {"eu": 5}),  # eu 6
    ]


async def everything(history: HistoryStore, channel_id: str, page: int = 2) -> list[Any]:
    """The channel's whole history, read newest page first by ``before`` keys."""
    pages: list[list[Any]] = []
    before = None
    while True:
        p = await history.ordered_history(channel_id, before=before, limit=page)
        pages.insert(0, p.messages)
        if not p.has_more:
            break
        before = p.oldest
    return [m for ms in pages for m in ms]


def shown(messages: list[Any], channel_id: str) -> list[tuple[Any, ...]]:
    """What a user sees of each message, with the channel's name taken out (to compare channels)."""
    return [
        (m.message_id.replace(channel_id, "ch"), m.text, m.deleted, m.hlc, m.origin_region,
         m.origin_seq, m.edited_at.ToMilliseconds() if m.HasField("edited_at") else None)
        for m in messages
    ]  # fmt: skip


async def state(history: HistoryStore, metadata: MetadataStore, channel_id: str) -> dict[str, Any]:
    clock = await metadata.channel_clock(channel_id)
    channel = await metadata.channel(channel_id)
    known = {}
    for n in (1, 2, 3):
        record = await metadata.known_message(f"msg_{channel_id}_{n}")
        known[n] = None if record is None else (record.sender_user_id, record.deleted)
    return {
        "history": shown(await everything(history, channel_id), channel_id),
        "history_one_page": shown(await everything(history, channel_id, page=50), channel_id),
        "positions": await history.last_origin_seqs(channel_id),
        "members": await metadata.members(channel_id),
        "channel": None if channel is None else (channel.name, list(channel.member_user_ids)),
        "clock": (clock.seen, clock.max_hlc),
        "known": known,
    }


EXPECTED = {
    "history": [
        ("msg_ch_1", "hello", False, 110, "eu", 2, None),
        ("msg_ch_2", "v2", False, 110, "us", 1, 1_700_000_000_130),
        ("msg_ch_3", "", True, 135, "us", 3, None),
    ],
    "positions": {"eu": 6, "us": 4, "asia": 5},
    "members": (["alice", "carol", "dave"], 0),
    "channel": ("room", ["alice", "carol", "dave"]),
    "clock": ({"eu": 6, "us": 4, "asia": 5}, 180),
    "known": {1: ("alice", False), 2: ("bob", False), 3: ("carol", True)},
}


async def test_every_arrival_order_gives_the_same_history_and_members(
    stores: tuple[HistoryStore, MetadataStore],
) -> None:
    history, metadata = stores
    rng = random.Random(26)
    n = len(scenario("ch_probe"))
    orders = [list(range(n)), list(reversed(range(n)))]
    orders += [rng.sample(range(n), n) for _ in range(40)]
    results = []
    for i, order in enumerate(orders):
        channel_id = f"ch_p{i:03d}"
        events = scenario(channel_id)
        arriving = [events[j] for j in order]
        # Redelivery: some events come twice, some in batches of several.
        arriving += [events[j] for j in rng.sample(range(n), 3)]
        k = 0
        while k < len(arriving):
            batch = arriving[k : k + rng.randint(1, 4)]
            await history.apply(batch)
            for event in batch:
                await metadata.apply(event)
            k += len(batch)
        results.append(await state(history, metadata, channel_id))
    first = results[0]
    assert first["history_one_page"] == first["history"]
    for key, value in EXPECTED.items():
        assert first[key] == value, key
    for order, result in zip(orders, results, strict=True):
        assert result == first, order


async def test_positions_stop_below_a_hole_until_it_is_filled(
    stores: tuple[HistoryStore, MetadataStore],
) -> None:
    history, metadata = stores
    eu = Origin("eu", "ch_hole")
    events = [eu.create_channel(1, ["alice"])] + [
        eu.send(10 + i, f"msg_h{i}", f"t{i}", "alice") for i in range(4)
    ]
    for event in [events[0], events[1], events[3], events[4]]:  # eu 3 is missing
        await history.apply([event])
        await metadata.apply(event)
    assert await history.last_origin_seqs("ch_hole") == {"eu": 2}
    assert (await metadata.channel_clock("ch_hole")).seen == {"eu": 2}
    after = await history.origin_events_after("ch_hole", "eu", 1)
    assert [e.origin_seq for e in after] == [2, 4, 5]  # holes are not filled here
    await history.apply([events[2]])
    await metadata.apply(events[2])
    assert await history.last_origin_seqs("ch_hole") == {"eu": 5}
    assert (await metadata.channel_clock("ch_hole")).seen == {"eu": 5}
    assert [e.origin_seq for e in await history.origin_events_after("ch_hole", "eu", 2, 2)] == [
        3,
        4,
    ]
    assert await history.origin_events_after("ch_hole", "us", 0) == []
    assert await history.last_origin_seqs("ch_unknown") == {}


async def test_pages_keep_every_message_of_one_hlc(
    stores: tuple[HistoryStore, MetadataStore],
) -> None:
    """Eleven messages, nine of them at one hlc from three regions: no page loses or repeats one."""
    history, _ = stores
    origins = {r: Origin(r, "ch_tie") for r in ("eu", "us-east", "asia")}
    events = [origins["eu"].send(5, "msg_t_early", "early", "alice")]
    for i in range(9):
        region = ("eu", "us-east", "asia")[i % 3]
        events.append(origins[region].send(500, f"msg_t{i}", f"tie {i}", "alice"))
    events.append(origins["asia"].send(900, "msg_t_late", "late", "alice"))
    await history.apply(list(reversed(events)))
    expected = [
        e.message_created.message.message_id
        for e in sorted(events, key=lambda e: order_key(Stamp(e.hlc, e.origin_region, e.event_id)))
    ]
    for size in (1, 2, 3, 4, 11, 50):
        assert [m.message_id for m in await everything(history, "ch_tie", size)] == expected, size


async def test_replay_through_current_history_shows_current_state(
    stores: tuple[HistoryStore, MetadataStore],
) -> None:
    """A replayed creation carries the edited text, or no text once deleted (ADR-016)."""
    history, _ = stores
    eu, us = Origin("eu", "ch_cur"), Origin("us", "ch_cur")
    await history.apply(
        [
            eu.send(10, "msg_c1", "first", "alice"),
            eu.send(11, "msg_c2", "private", "alice"),
            us.edit(20, "msg_c1", "first, edited", "alice"),
            us.delete(21, "msg_c2", "alice"),
        ]
    )
    replay = await CurrentHistory(history).origin_events_after("ch_cur", "eu", 0)
    assert [
        (e.message_created.message.text, e.message_created.message.deleted) for e in replay
    ] == [
        ("first, edited", False),
        ("", True),
    ]
    assert replay[0].origin_seq == 1 and replay[0].hlc == 10  # the stamps stay the event's
    raw = await history.origin_events_after("ch_cur", "eu", 0)
    assert raw[1].message_created.message.text == "private"  # the store keeps what was published


async def test_primary_events_and_origin_events_do_not_mix(
    stores: tuple[HistoryStore, MetadataStore],
) -> None:
    """A primary-mode event (seq > 0) is applied as today; it is not an origin event."""
    history, _ = stores
    eu = Origin("eu", "ch_mix")
    primary = events_pb2.Event(event_id="evt_p", channel_id="ch_mix", seq=1, origin_region="eu")
    primary.message_created.message.message_id = "msg_p"
    primary.message_created.message.seq = 1
    primary.message_created.message.channel_id = "ch_mix"
    assert await history.apply([primary, eu.send(7, "msg_o", "o", "alice")]) == 2
    assert [m.message_id for m in (await history.history("ch_mix")).messages] == ["msg_p"]
    assert [m.message_id for m in (await history.ordered_history("ch_mix")).messages] == ["msg_o"]


def test_the_every_region_mode_refuses_stores_that_do_not_implement_it() -> None:
    check_write_mode("every-region", history_store="sqlite:///h.db", metadata_store="")
    check_write_mode("primary", history_store="cassandra://127.0.0.1:9042/chatmesh?dc=eu")
    with pytest.raises(ValueError, match=r"history_store.*ADR-026"):
        check_write_mode("every-region", history_store="cassandra://127.0.0.1:9042/chatmesh?dc=eu")
    with pytest.raises(ValueError, match=r"metadata_store.*ADR-026"):
        check_write_mode("every-region", metadata_store="mongodb://127.0.0.1:27017/chatmesh")
    with pytest.raises(ValueError, match="expected 'primary' or 'every-region'"):
        check_write_mode("everywhere")
