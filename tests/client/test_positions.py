"""ResumePositions: the next resume_from, and duplicates across a reconnect (no I/O)."""

from __future__ import annotations

from mesh.client import ResumePositions, Verdict


def test_positions_start_from_resume_from_and_follow_what_is_admitted() -> None:
    positions = ResumePositions({"ch_a": 3})
    assert [positions.admit("ch_a", s) for s in (4, 5)] == [Verdict.NEW, Verdict.NEW]
    assert positions.admit("ch_b", 9) is Verdict.NEW  # first event of an unpositioned channel
    assert positions.snapshot() == {"ch_a": 5, "ch_b": 9}


def test_replay_overlapping_the_seam_is_dropped() -> None:
    positions = ResumePositions()
    for seq in (1, 2, 3):
        positions.admit("ch_a", seq)
    # The next connection replays from an older position (a lagging replica, say).
    verdicts = [positions.admit("ch_a", s) for s in (2, 3, 4)]
    assert verdicts == [Verdict.DUPLICATE, Verdict.DUPLICATE, Verdict.NEW]
    assert positions.get("ch_a") == 4


def test_a_gap_is_reported_and_the_position_moves_past_it() -> None:
    positions = ResumePositions({"ch_a": 0})
    assert positions.admit("ch_a", 1) is Verdict.NEW
    assert positions.admit("ch_a", 4) is Verdict.GAP
    assert positions.admit("ch_a", 3) is Verdict.DUPLICATE
    assert positions.snapshot() == {"ch_a": 4}


def test_ephemeral_and_user_events_have_no_position() -> None:
    positions = ResumePositions({"ch_a": 2})
    assert positions.admit("ch_a", 0) is Verdict.UNPOSITIONED  # typing, read marker
    assert positions.admit("", 0) is Verdict.UNPOSITIONED  # presence
    assert positions.snapshot() == {"ch_a": 2} and len(positions) == 1


def test_snapshot_is_a_copy() -> None:
    positions = ResumePositions({"ch_a": 1})
    snap = positions.snapshot()
    snap["ch_a"] = 99
    assert positions.get("ch_a") == 1
