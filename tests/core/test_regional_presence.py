"""RegionalPresence: the other regions' online users from their snapshots (ADR-026)."""

from __future__ import annotations

from chatmesh.v1 import presence_pb2
from mesh.core.regional_presence import RegionalPresence

ONLINE = presence_pb2.PRESENCE_STATUS_ONLINE
OFFLINE = presence_pb2.PRESENCE_STATUS_OFFLINE
UNSPECIFIED = presence_pb2.PRESENCE_STATUS_UNSPECIFIED


def _local(user: str, *, online: bool = False, seen_ms: int | None = None) -> presence_pb2.Presence:
    p = presence_pb2.Presence(user_id=user)
    if online:
        p.status = ONLINE
        p.regions.append("us-east")
    elif seen_ms is not None:
        p.status = OFFLINE
        p.last_seen_at.FromMilliseconds(seen_ms)
    return p


def test_the_last_snapshot_replaces_the_region_and_stale_ones_change_nothing() -> None:
    view = RegionalPresence("us-east", timeout=6.0)
    view.apply("asia", "e1", 1, 1000, {"ann": 1, "bob": 1}, now=0.0)
    view.apply("asia", "e1", 2, 2000, {"bob": 1}, now=1.0)
    assert view.regions_of("ann") == [] and view.regions_of("bob") == ["asia"]
    assert view.last_seen_ms("ann") == 2000  # left asia's set with snapshot 2
    # A late or repeated snapshot of the same publisher is ignored.
    assert view.apply("asia", "e1", 1, 1000, {"ann": 1, "bob": 1}, now=1.5) == ([], [])
    assert view.regions_of("ann") == []


def test_own_region_snapshots_are_ignored() -> None:
    view = RegionalPresence("us-east", timeout=6.0)
    view.apply("us-east", "e1", 1, 1000, {"ann": 1}, now=0.0)
    assert view.regions_of("ann") == [] and view.regions() == []


def test_online_in_any_region_wins_and_offline_needs_every_region() -> None:
    view = RegionalPresence("us-east", timeout=6.0)
    view.apply("asia", "a", 1, 1000, {"ann": 1}, now=0.0)
    view.apply("eu", "e", 1, 1000, {"ann": 1, "cy": 1}, now=0.0)
    assert view.regions_of("ann") == ["asia", "eu"]
    assert view.online_elsewhere("ann", besides="asia")  # still in eu
    assert not view.online_elsewhere("cy", besides="eu")
    merged = view.merge(_local("ann", online=True), now_ms=5000)
    assert merged.status == ONLINE and list(merged.regions) == ["asia", "eu", "us-east"]
    view.apply("eu", "e", 2, 2000, {"cy": 1}, now=1.0)
    assert view.regions_of("ann") == ["asia"]  # eu dropped her, asia still has her
    assert view.last_seen_ms("ann") is None


def test_a_silent_region_is_dropped_and_its_heal_announces_who_is_online() -> None:
    view = RegionalPresence("us-east", timeout=6.0)
    view.apply("asia", "a", 1, 1000, {"ann": 1, "bob": 1}, now=0.0)
    view.apply("eu", "e", 1, 1000, {"bob": 1}, now=0.0)
    view.apply("eu", "e", 2, 8000, {"bob": 1}, now=6.5)
    assert view.expire(now=5.0) == []  # within the timeout
    # asia is silent past the timeout (cut off): ann is offline here, bob is still in eu.
    assert view.expire(now=7.0) == ["ann"]
    assert view.regions_of("ann") == [] and view.regions_of("bob") == ["eu"]
    offline = view.merge(_local("ann"), now_ms=9000)
    assert offline.status == OFFLINE and offline.last_seen_at.ToMilliseconds() == 1000
    # After the heal asia's next snapshot (sequence moved on) says who is online there.
    assert view.apply("asia", "a", 30, 30000, {"ann": 1, "dan": 1}, now=30.0) == (
        ["ann", "dan"], [],
    )  # fmt: skip
    assert view.merge(_local("ann"), now_ms=31000).status == ONLINE


def test_snapshots_in_sequence_report_nothing_a_gap_or_restart_reports_the_difference() -> None:
    view = RegionalPresence("us-east", timeout=6.0)
    assert view.apply("asia", "a", 1, 1000, {"ann": 1}, now=0.0) == ([], [])  # first sight
    assert view.apply("asia", "a", 2, 2000, {"bob": 1}, now=1.0) == ([], [])  # events carried it
    assert view.regions_of("bob") == ["asia"]
    # Snapshots 3..4 lost (a short cut): their presence events may be lost as well.
    assert view.apply("asia", "a", 5, 5000, {"cy": 1}, now=4.0) == (["cy"], ["bob"])
    # The publisher restarted (new epoch, seq from 1): a resync too.
    assert view.apply("asia", "b", 1, 6000, {"cy": 1, "dan": 1}, now=5.0) == (["dan"], [])


def test_merge_keeps_what_neither_side_saw_unspecified_and_takes_the_latest_last_seen() -> None:
    view = RegionalPresence("us-east", timeout=6.0)
    assert view.merge(_local("zed"), now_ms=1).status == UNSPECIFIED
    assert not view.merge(_local("zed"), now_ms=1).HasField("last_seen_at")
    view.apply("asia", "a", 1, 1000, {"ann": 1}, now=0.0)
    view.apply("asia", "a", 2, 4000, {}, now=1.0)
    local_older = view.merge(_local("ann", seen_ms=3000), now_ms=9000)
    assert local_older.status == OFFLINE and local_older.last_seen_at.ToMilliseconds() == 4000
    local_newer = view.merge(_local("ann", seen_ms=5000), now_ms=9000)
    assert local_newer.last_seen_at.ToMilliseconds() == 5000


def test_last_seen_times_are_bounded() -> None:
    view = RegionalPresence("us-east", timeout=6.0, remember=2)
    view.apply("asia", "a", 1, 1000, {"a": 1, "b": 1, "c": 1}, now=0.0)
    view.apply("asia", "a", 2, 2000, {}, now=1.0)
    assert [view.last_seen_ms(u) for u in "abc"] == [None, 2000, 2000]
