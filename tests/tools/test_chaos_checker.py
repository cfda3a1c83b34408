"""The chaos checker's rules on synthetic recordings (nothing is started).

A clean recording must come out clean; each planted loss, duplicate, reordering,
gap, notice and fill must be counted as what it is, in the window it belongs to.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tools.chaos.checker import Report, check, mirror_behind
from tools.chaos.recording import (
    HistoryRow,
    Notice,
    RawEvent,
    Receipt,
    Recording,
    Send,
    SubscriberLog,
    Window,
    message_text,
)
from tools.chaos.report import markdown

CH = "ch_" + "a" * 26
CH2 = "ch_" + "b" * 26
START = 2
"""Seqs 1-2 are the channel's creation and joins; messages start at 3."""
N = 10


def _key(i: int) -> str:
    return f"k{i:04d}"


def clean_recording(n: int = N) -> Recording:
    """n acknowledged sends, stored in both regions, received in order by one subscriber per region.

    Send i (seq START + i) is issued at t = i, acknowledged at i + 0.2, received at i + 0.5.
    Window "baseline" spans [0, 5), window "fault" (a partition) [5, 100), healed at 6.
    """
    rec = Recording(
        topology="dev",
        regions=["us-east", "eu"],
        primary="us-east",
        channels=[CH],
        windows=[
            Window(0, "baseline", "baseline", 0.0, 0.0, 5.0),
            Window(1, "fault", "partition", 5.0, 6.0, 100.0),
        ],
        traffic_end=float(n + 1),
    )
    rows = []
    for i in range(1, n + 1):
        seq = START + i
        key = _key(i)
        rec.sends.append(
            Send(
                "ada",
                "eu",
                CH,
                key,
                issued=float(i),
                done=i + 0.2,
                ok=True,
                message_id=f"msg_{i}",
                seq=seq,
            )
        )
        rows.append(HistoryRow(seq, f"msg_{i}", key))
        assert message_text("ada", i, key).endswith(f"key={key}")
    rec.histories = {"us-east": {CH: list(rows)}, "eu": {CH: list(rows)}}
    for region in rec.regions:
        sub = SubscriberLog(user=f"sub-{region}", region=region, start={CH: START}, connections=1)
        for i in range(1, n + 1):
            t = i + 0.5
            sub.raw.append(RawEvent(CH, START + i, f"msg_{i}", _key(i), t, 0, False))
            sub.delivered.append(Receipt(CH, START + i, f"msg_{i}", _key(i), t))
        rec.subscribers.append(sub)
    return rec


def eu(rec: Recording) -> SubscriberLog:
    return next(s for s in rec.subscribers if s.region == "eu")


def drop(events: list, seq: int) -> None:  # type: ignore[type-arg]
    events[:] = [e for e in events if e.seq != seq]


def test_a_clean_recording_is_clean() -> None:
    report = check(clean_recording())
    assert report.clean
    t = report.total
    assert (t.sends, t.acked, t.failed) == (N, N, 0)
    assert (t.lost, t.duplicated, t.out_of_order, t.gaps, t.undelivered_without_notice) == (0,) * 5
    assert report.examples == []


def test_an_acknowledged_send_missing_from_a_region_history_is_lost() -> None:
    rec = clean_recording()
    drop(rec.histories["eu"][CH], START + 7)
    report = check(rec)
    assert not report.clean
    assert report.total.lost_history == 1
    assert report.windows[1].counts.lost_history == 1  # send 7 was issued in the fault window
    assert report.total.lost_stream == 0  # the subscribers did get it live
    assert any("eu history" in e and "msg_7" in e for e in report.examples)


def test_a_message_skipped_in_a_stream_is_lost_without_notice_and_a_gap() -> None:
    rec = clean_recording()
    sub = eu(rec)
    drop(sub.raw, START + 3)
    drop(sub.delivered, START + 3)
    report = check(rec)
    assert not report.clean
    t = report.total
    assert (t.lost_stream, t.undelivered_without_notice, t.undelivered_with_notice) == (1, 1, 0)
    assert (t.gaps, t.gap_seqs) == (1, 1)
    assert report.windows[0].counts.lost_stream == 1  # send 3 was issued in the baseline
    assert report.lost_by_subscriber["sub-eu@eu"] == {CH: 1}
    assert report.lost_by_subscriber["sub-us-east@us-east"] == {}


def test_a_message_sent_late_and_dropped_by_the_client_is_lost_and_out_of_order() -> None:
    rec = clean_recording()
    sub = eu(rec)
    late = next(e for e in sub.raw if e.seq == START + 4)
    sub.raw.remove(late)
    late.t = 8.9  # after seq START+8 arrived
    sub.raw.append(late)
    drop(sub.delivered, START + 4)  # the client's position had moved past it
    report = check(rec)
    t = report.total
    assert (t.out_of_order, t.gaps, t.lost_stream, t.late_dropped) == (1, 1, 1, 1)
    assert t.duplicated == 0


def test_a_seq_sent_twice_is_a_duplicate_not_a_loss() -> None:
    rec = clean_recording()
    sub = eu(rec)
    again = copy.copy(next(e for e in sub.raw if e.seq == START + 5))
    again.t, again.conn = 9.7, 1  # replayed on a reconnect
    sub.raw.append(again)
    report = check(rec)
    assert not report.clean
    assert (report.total.duplicated_stream, report.total.lost, report.total.out_of_order) == (
        1,
        0,
        0,
    )
    assert report.windows[1].counts.duplicated_stream == 1  # counted where it arrived


def test_an_event_at_or_below_the_resume_position_is_a_duplicate() -> None:
    rec = clean_recording()
    eu(rec).raw.insert(0, RawEvent(CH, START, "", None, 0.1, 0, True))
    assert check(rec).total.duplicated_stream == 1


def test_a_retry_stored_twice_is_a_duplicate_in_history() -> None:
    rec = clean_recording()
    rec.histories["us-east"][CH].append(HistoryRow(START + N + 1, "msg_other", _key(2)))
    report = check(rec)
    assert not report.clean
    assert report.total.duplicated_history == 1
    assert report.windows[0].counts.duplicated_history == 1
    # Every subscriber also misses the second copy, which is an expected message now.
    assert report.total.lost_stream == 2


def test_the_client_handing_events_out_of_order_is_counted() -> None:
    rec = clean_recording()
    sub = eu(rec)
    sub.delivered[4].t, sub.delivered[5].t = sub.delivered[5].t, sub.delivered[4].t
    report = check(rec)
    assert report.total.out_of_order == 1
    assert not report.clean


def test_a_skip_with_a_notice_is_undelivered_with_notice_and_still_lost() -> None:
    rec = clean_recording()
    sub = eu(rec)
    drop(sub.raw, START + 3)
    drop(sub.delivered, START + 3)
    sub.notices.append(Notice(4.0, 0, "gap", {CH: [START + 3, START + 3]}))
    report = check(rec)
    t = report.total
    assert (t.undelivered_with_notice, t.undelivered_without_notice, t.notices) == (1, 0, 1)
    assert not report.clean  # told is better than silent, but the user still lacks it


def test_a_notice_for_another_channel_or_range_does_not_cover_a_skip() -> None:
    rec = clean_recording()
    sub = eu(rec)
    drop(sub.raw, START + 3)
    drop(sub.delivered, START + 3)
    sub.notices.append(Notice(4.0, 0, "gap", {CH2: None}))
    sub.notices.append(Notice(4.0, 0, "gap", {CH: [START + 6, START + 9]}))
    assert check(rec).total.undelivered_without_notice == 1


def test_a_skip_filled_from_history_after_a_notice_is_recovered_not_lost() -> None:
    rec = clean_recording()
    sub = eu(rec)
    drop(sub.raw, START + 3)  # the server skipped it and said so ...
    sub.notices.append(Notice(4.0, 0, "gap", {CH: None}))
    report = check(rec)  # ... and the client fetched it (it is still in delivered)
    t = report.total
    assert (t.recovered_by_fill, t.lost, t.gaps) == (1, 0, 1)
    assert report.clean


def test_failed_sends_are_counted_and_not_losses() -> None:
    rec = clean_recording()
    rec.sends.append(
        Send("ada", "eu", CH, "kfail", issued=5.5, done=9.0, ok=False, error="UNAVAILABLE")
    )
    rec.sends.append(
        Send("ada", "eu", CH, "kamb", issued=5.6, done=9.0, ok=False, error="DEADLINE_EXCEEDED")
    )
    # The second one was committed, its reply lost: it is in history and every stream.
    for region in rec.regions:
        rec.histories[region][CH].append(HistoryRow(START + N + 1, "msg_amb", "kamb"))
    for sub in rec.subscribers:
        sub.raw.append(RawEvent(CH, START + N + 1, "msg_amb", "kamb", 20.0, 0, False))
        sub.delivered.append(Receipt(CH, START + N + 1, "msg_amb", "kamb", 20.0))
    report = check(rec)
    w = report.windows[1].counts
    assert (w.failed, w.failed_but_stored) == (2, 1)
    assert report.clean


def test_a_stored_message_nobody_acknowledged_is_still_expected_on_every_stream() -> None:
    rec = clean_recording()
    for region in rec.regions:
        rec.histories[region][CH].append(HistoryRow(START + N + 1, "msg_x", "kx"))
    assert check(rec).total.lost_stream == 2  # neither subscriber got it


def test_recovery_times_of_a_link_fault_are_measured_from_the_heal() -> None:
    rec = clean_recording()
    report = check(rec)
    fault = report.windows[1]  # ends at 6.0; the first send issued after it is send 6
    assert fault.recover_write["eu"] == pytest.approx(0.2)
    assert fault.recover_delivery["eu"] == pytest.approx(0.5)
    assert fault.recover_delivery["us-east"] == pytest.approx(0.5)
    assert fault.recover_write["us-east"] is None  # nobody sends from us-east


def test_writes_that_fail_until_later_push_the_recovery_out() -> None:
    rec = clean_recording()
    for s in rec.sends:
        if 6 <= s.issued < 8:
            s.ok, s.done = False, s.issued + 3
    report = check(rec)
    assert report.windows[1].recover_write["eu"] == pytest.approx(8.2 - 6.0)


def test_recovery_from_a_process_fault_counts_from_the_kill_restart_included() -> None:
    rec = clean_recording()
    rec.windows[1] = Window(
        1, "kill-nats us-east-1", "kill-nats", 5.0, 8.5, 100.0, recover_from=5.0
    )
    for s in rec.sends:
        if 5 <= s.issued < 8:  # stuck until the node came back at 8.5, then acknowledged
            s.done = 8.5
    # The first acknowledgement after the kill: send 8 at 8.2 (issued as the node returned).
    assert check(rec).windows[1].recover_write["eu"] == pytest.approx(8.2 - 5.0)


def test_a_send_fails_in_the_window_in_which_the_client_gave_up() -> None:
    rec = clean_recording()
    send = rec.sends[3]  # issued at 4 (baseline), given up at 5.5 (fault)
    send.ok, send.done = False, 5.5
    report = check(rec)
    assert (report.windows[0].counts.failed, report.windows[1].counts.failed) == (0, 1)
    assert report.windows[0].counts.sends == 4  # issued at 1..4


def test_a_skipped_message_counts_where_the_stream_jumped_over_it() -> None:
    rec = clean_recording()
    sub = eu(rec)
    for seq in (START + 3, START + 4):  # sent at 3 and 4 (baseline) ...
        drop(sub.raw, seq)
        drop(sub.delivered, seq)
    for e in sub.raw + sub.delivered:  # ... and the stream resumed only at 7 (fault)
        if e.seq == START + 5:
            e.t = 7.0
    report = check(rec)
    assert report.windows[0].counts.lost_stream == 0
    assert report.windows[1].counts.lost_stream == 2
    assert report.windows[1].counts.gaps == 1


def test_mirror_behind_is_the_time_until_the_mirror_holds_the_source_seq_at_the_end() -> None:
    samples: list[list[object]] = [
        [5.0, "eu", 100, 100, ""],
        [6.0, "eu", 130, 100, ""],  # the fault ends here: the mirror must reach 130
        [7.0, "eu", 160, 100, ""],
        [8.0, "eu", -1, -1, "TimeoutError"],
        [9.5, "eu", 200, 140, ""],
    ]
    assert mirror_behind(samples, 6.0, "eu") == pytest.approx(3.5)
    assert mirror_behind(samples[:3], 6.0, "eu") is None  # not caught up within the samples
    assert mirror_behind(samples, 6.0, "asia") is None


def test_a_recording_survives_json_and_checks_the_same(tmp_path: Path) -> None:
    rec = clean_recording()
    drop(eu(rec).raw, START + 3)
    drop(eu(rec).delivered, START + 3)
    eu(rec).notices.append(Notice(4.0, 0, "gap", {CH: None}, "detail"))
    rec.mirrors = [[1.0, "eu", 3, 3, ""]]
    path = tmp_path / "recording.json"
    rec.save(path)
    again = Recording.load(path)
    assert again == rec
    assert check(again).to_json() == check(rec).to_json()


def test_the_table_has_a_row_per_window_and_a_total() -> None:
    rec = clean_recording()
    table = markdown(rec, check(rec)).splitlines()
    assert len(table) == 2 + len(rec.windows) + 1
    assert table[-1].startswith("|  | total |")


def _verdict(report: Report) -> tuple[int, int, int, int]:
    t = report.total
    return t.lost, t.duplicated, t.out_of_order, t.undelivered_without_notice


def test_every_planted_fault_alone_makes_the_run_unclean() -> None:
    base = clean_recording()
    plants = {
        "history loss": lambda r: drop(r.histories["us-east"][CH], START + 1),
        "stream loss": lambda r: (drop(eu(r).raw, START + 9), drop(eu(r).delivered, START + 9)),
        "duplicate": lambda r: eu(r).raw.append(copy.copy(eu(r).raw[0])),
        "reorder": lambda r: setattr(eu(r).raw[2], "t", 50.0),
    }
    for name, plant in plants.items():
        rec = copy.deepcopy(base)
        plant(rec)
        report = check(rec)
        assert not report.clean, name
        assert any(_verdict(report)), name
