"""The chaos suite's judge: a recording in, counts per fault window out. Pure, no I/O.

Definitions (docs/chaos.md quotes them):

* **Expected messages of a channel**: every message in any region's final history
  plus every acknowledged send (by ``message_id``).
* **Sends failed**: logical sends the client gave up on after its retries
  (``failed_but_stored``: of those, the ones whose key is in a history anyway — the
  commit happened, the reply was lost).
* **Lost (history)**: an acknowledged send missing from a region's final history
  (one per message and region).
* **Lost (stream)**: an expected message with a seq after the subscriber's start
  position that the client never handed to the application — neither live, nor in
  a replay, nor from a fill (one per message and subscriber). Split into
  **undelivered with notice** (a :class:`~tools.chaos.recording.Notice` covers its
  channel and seq) and **undelivered without notice** (silently skipped).
  ``late_dropped`` counts those the server did send, but below the client's
  position (after a gap), so the client dropped them.
* **Recovered by fill**: messages the application got that the server never sent
  on the stream (the client fetched them, e.g. with GetHistory after a notice).
* **Duplicated**: in a history, a second copy of a message (same ``message_id``,
  or the same idempotency key under another ``message_id``: a retry stored twice);
  in a stream, a channel seq the server sent (or the client yielded) again.
* **Out-of-order**: in a stream, a channel seq below one already received that was
  not received before.
* **Gaps**: in a stream (as the server sent it), an event whose seq jumps past the
  channel's next one (``gap_seqs``: how many seqs were jumped).
* **Time to recover**, per region, measured from the moment the process was gone for
  process faults (kill, graceful restart: bringing it back is part of recovering,
  whoever did it) and from the heal for link faults (:func:`recover_from`): writes — until
  the acknowledgement of the first send issued after that moment that succeeded;
  deliveries — until the first event a subscriber of the region got of a message
  issued after that moment.

Where findings count: sends in the window in which they were issued, failures in
the one in which the client gave up; a message a stream skipped in the window in
which the stream jumped over it (else the one in which it was sent); history
findings in the window in which the message was sent; duplicates, out-of-order
and gaps in the window in which they arrived. Windows run from a step's start to
the next step's start; the last one also holds the settle.

Example:
    >>> from tools.chaos.recording import Recording, Window
    >>> rec = Recording("dev", ["us-east"], "us-east", [], windows=[Window(0, "baseline", "none", 0, 0, 10)])
    >>> check(rec).clean
    True
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tools.chaos.recording import Notice, Recording, Send, SubscriberLog, Window

__all__ = [
    "Counts",
    "Report",
    "WindowReport",
    "check",
    "mirror_behind",
    "recover_from",
]

_EXAMPLES = 30
"""Findings described in words (the first ones of each kind)."""


@dataclass
class Counts:
    """What went wrong (and what was done) in a window, or in the whole run."""

    sends: int = 0
    acked: int = 0
    failed: int = 0
    failed_but_stored: int = 0
    unfinished: int = 0
    """Sends still in flight when the run ended (the client had not returned)."""
    lost_history: int = 0
    lost_stream: int = 0
    undelivered_without_notice: int = 0
    undelivered_with_notice: int = 0
    late_dropped: int = 0
    recovered_by_fill: int = 0
    duplicated_history: int = 0
    duplicated_stream: int = 0
    out_of_order: int = 0
    gaps: int = 0
    gap_seqs: int = 0
    notices: int = 0

    @property
    def lost(self) -> int:
        """Lost from a history or from a subscriber's stream."""
        return self.lost_history + self.lost_stream

    @property
    def duplicated(self) -> int:
        """Duplicated in a history or in a stream."""
        return self.duplicated_history + self.duplicated_stream

    def add(self, other: Counts) -> None:
        """Adds ``other`` into this one."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_json(self) -> dict[str, int]:
        """The counts, with the derived totals."""
        return {**dataclasses.asdict(self), "lost": self.lost, "duplicated": self.duplicated}


@dataclass
class WindowReport:
    """One window's counts and recovery times."""

    window: Window
    counts: Counts = field(default_factory=Counts)
    recover_write: dict[str, float | None] = field(default_factory=dict)
    """Region -> seconds from the window's end to the first acknowledged new send (None: none)."""
    recover_delivery: dict[str, float | None] = field(default_factory=dict)
    """Region -> seconds from the window's end to the first delivery of a new message (None: none)."""
    mirror_behind: dict[str, float | None] = field(default_factory=dict)
    """Secondary region -> seconds from the window's end until its mirror held the source's
    last seq at that moment (None: not seen in the samples)."""


@dataclass
class Report:
    """The verdict on a run."""

    windows: list[WindowReport]
    total: Counts
    lost_by_subscriber: dict[str, dict[str, int]] = field(default_factory=dict)
    """``user@region`` -> channel -> messages lost from that stream."""
    examples: list[str] = field(default_factory=list)
    """The first findings, described."""

    @property
    def clean(self) -> bool:
        """Nothing lost, duplicated, out of order or undelivered without notice."""
        t = self.total
        return (
            t.lost == 0
            and t.duplicated == 0
            and t.out_of_order == 0
            and t.undelivered_without_notice == 0
        )

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "clean": self.clean,
            "total": self.total.to_json(),
            "windows": [
                {
                    "index": w.window.index,
                    "name": w.window.name,
                    "action": w.window.action,
                    "start": round(w.window.start, 3),
                    "end": round(w.window.end, 3),
                    "until": round(w.window.until, 3),
                    "recover_from": round(recover_from(w.window), 3),
                    "notes": w.window.notes,
                    "counts": w.counts.to_json(),
                    "recover_write_s": _rounded(w.recover_write),
                    "recover_delivery_s": _rounded(w.recover_delivery),
                    "mirror_behind_s": _rounded(w.mirror_behind),
                }
                for w in self.windows
            ],
            "lost_by_subscriber": self.lost_by_subscriber,
            "examples": self.examples,
        }


def _rounded(values: dict[str, float | None]) -> dict[str, float | None]:
    return {k: (None if v is None else round(v, 3)) for k, v in values.items()}


@dataclass(frozen=True)
class _Message:
    channel: str
    seq: int
    message_id: str
    key: str | None


class _Windows:
    """Maps a time to the window it falls in."""

    def __init__(self, windows: list[Window]) -> None:
        self.windows = sorted(windows, key=lambda w: w.start)
        self._starts = [w.start for w in self.windows]

    def index(self, t: float) -> int:
        """Position (in start order) of the window holding ``t``; before the first: the first."""
        return max(0, bisect.bisect_right(self._starts, t) - 1)


def check(rec: Recording) -> Report:
    """Compares the acknowledged sends, every region's history and every subscriber's stream.

    Args:
        rec: A finished run (histories fetched after the settle).

    Returns:
        Counts per window and in total, recovery times, and the first findings in words.
    """
    windows = _Windows(rec.windows or [Window(0, "run", "none", 0.0, 0.0, float("inf"))])
    reports = [WindowReport(w) for w in windows.windows]
    examples: dict[str, list[str]] = defaultdict(list)

    def note(kind: str, text: str) -> None:
        if len(examples[kind]) < _EXAMPLES:
            examples[kind].append(f"{kind}: {text}")

    by_key: dict[str, Send] = {s.key: s for s in rec.sends}
    stored_keys = {
        row.key
        for chans in rec.histories.values()
        for rows in chans.values()
        for row in rows
        if row.key
    }

    def window_of_message(msg: _Message, fallback: float) -> WindowReport:
        send = by_key.get(msg.key) if msg.key else None
        return reports[windows.index(send.issued if send else fallback)]

    # -- sends ------------------------------------------------------------------------
    for send in rec.sends:
        c = reports[windows.index(send.issued)].counts
        c.sends += 1
        if send.done is None:
            c.unfinished += 1
        elif send.ok:
            c.acked += 1
        else:
            # A send fails where the client gave up: a send issued just before a
            # fault belongs to that fault, not to the window before it.
            f = reports[windows.index(send.done)].counts
            f.failed += 1
            if send.key in stored_keys:
                f.failed_but_stored += 1

    # -- histories: duplicates and acknowledged sends missing ------------------------------
    expected: dict[str, dict[str, _Message]] = defaultdict(dict)
    """Channel -> message_id -> message: everything any region stored or the service acknowledged."""
    for region, channels in rec.histories.items():
        for channel, rows in channels.items():
            ids: set[str] = set()
            keys: dict[str, str] = {}
            for row in rows:
                msg = _Message(channel, row.seq, row.message_id, row.key)
                expected[channel].setdefault(row.message_id, msg)
                twice = row.message_id in ids or (
                    row.key is not None and keys.get(row.key, row.message_id) != row.message_id
                )
                ids.add(row.message_id)
                if row.key is not None:
                    keys.setdefault(row.key, row.message_id)
                if twice:
                    window_of_message(msg, rec.traffic_end).counts.duplicated_history += 1
                    note(
                        "duplicated",
                        f"{region} history of {channel} holds {row.message_id} "
                        f"(seq {row.seq}, key {row.key}) a second time",
                    )
    for send in rec.sends:
        if not send.ok:
            continue
        expected[send.channel].setdefault(
            send.message_id, _Message(send.channel, send.seq, send.message_id, send.key)
        )
        for region in rec.regions:
            rows = rec.histories.get(region, {}).get(send.channel, [])
            if not any(r.message_id == send.message_id or r.key == send.key for r in rows):
                reports[windows.index(send.issued)].counts.lost_history += 1
                note(
                    "lost",
                    f"{region} history of {send.channel} lacks acknowledged "
                    f"{send.message_id} (seq {send.seq}, sent by {send.sender} at {send.issued:.1f}s)",
                )

    # -- streams --------------------------------------------------------------------------
    lost_by_subscriber: dict[str, dict[str, int]] = {}
    for sub in rec.subscribers:
        who = f"{sub.user}@{sub.region}"
        lost_by_subscriber[who] = _check_stream(
            sub, expected, reports, windows, window_of_message, rec.traffic_end, note
        )

    # -- recovery times -------------------------------------------------------------------
    issued_at = {s.key: s.issued for s in rec.sends}
    for wr in reports:
        w = wr.window
        since = recover_from(w)
        for region in rec.regions:
            acks = [
                s.done
                for s in rec.sends
                if s.region == region
                and s.ok
                and s.done is not None
                and since <= s.issued < w.until
            ]
            wr.recover_write[region] = (min(acks) - since) if acks else None
            arrivals = [
                r.t
                for sub in rec.subscribers
                if sub.region == region
                for r in sub.delivered
                if r.key is not None and since <= issued_at.get(r.key, -1.0) < w.until
            ]
            wr.recover_delivery[region] = (min(arrivals) - since) if arrivals else None
            if region != rec.primary and rec.mirrors:
                wr.mirror_behind[region] = mirror_behind(rec.mirrors, w.end, region)

    total = Counts()
    for wr in reports:
        total.add(wr.counts)
    return Report(
        windows=reports,
        total=total,
        lost_by_subscriber=lost_by_subscriber,
        examples=[text for kind in sorted(examples) for text in examples[kind]],
    )


def mirror_behind(samples: list[list[object]], end: float, region: str) -> float | None:
    """Seconds from ``end`` until ``region``'s mirror held the source's last seq at ``end``.

    Args:
        samples: ``[t, region, source_last_seq, mirror_last_seq, error]`` rows (-1: unknown).
        end: The window's end.
        region: A secondary region.

    Returns:
        The delay (0 if it was never behind), or None if the samples never show it.

    Example:
        >>> samples = [[0.0, "eu", 10, 10, ""], [1.0, "eu", 20, 10, ""], [3.0, "eu", 30, 20, ""]]
        >>> mirror_behind(samples, end=1.0, region="eu")
        2.0
    """
    mine = [s for s in samples if s[1] == region]
    before = [s for s in mine if _f(s[0]) <= end and _i(s[2]) >= 0]
    after = [s for s in mine if _f(s[0]) >= end and _i(s[2]) >= 0]
    if not after:
        return None
    target = _i(before[-1][2]) if before else _i(after[0][2])
    for s in after:
        if _i(s[3]) >= target:
            return max(0.0, _f(s[0]) - end)
    return None


def _f(v: object) -> float:
    return float(v) if isinstance(v, int | float) else 0.0


def _i(v: object) -> int:
    return int(v) if isinstance(v, int | float) else -1


def recover_from(window: Window) -> float:
    """Where a window's time to recover starts (:attr:`Window.recover_from`, else its end)."""
    return window.end if window.recover_from is None else window.recover_from


def _covered(notices: list[Notice], channel: str, seq: int) -> bool:
    for n in notices:
        if not n.channels:
            return True
        if channel in n.channels:
            span = n.channels[channel]
            if span is None or span[0] <= seq <= span[1]:
                return True
    return False


def _check_stream(
    sub: SubscriberLog,
    expected: dict[str, dict[str, _Message]],
    reports: list[WindowReport],
    windows: _Windows,
    window_of_message: Callable[[_Message, float], WindowReport],
    fallback: float,
    note: Callable[[str, str], None],
) -> dict[str, int]:
    """Counts one subscriber's findings into ``reports``; returns its losses per channel."""
    who = f"{sub.user}@{sub.region}"
    for n in sub.notices:
        reports[windows.index(n.t)].counts.notices += 1

    # The server's stream: duplicates, reordering and gaps, per channel in arrival order.
    raw_seen: dict[str, set[int]] = defaultdict(set)
    raw_top: dict[str, int] = dict(sub.start)
    jumps: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    """Channel -> (first, last, window) of every seq range the stream jumped over."""
    flagged: set[tuple[str, int]] = set()
    for e in sorted(sub.raw, key=lambda e: e.t):
        if e.seq <= 0:
            continue
        c = reports[windows.index(e.t)].counts
        top = raw_top.get(e.channel, 0)
        if e.seq in raw_seen[e.channel] or e.seq <= sub.start.get(e.channel, 0):
            if (e.channel, e.seq) not in flagged:
                flagged.add((e.channel, e.seq))
                c.duplicated_stream += 1
                note("duplicated", f"{who} got {e.channel} seq {e.seq} again (call {e.conn})")
        elif e.seq < top:
            c.out_of_order += 1
            note(
                "out-of-order", f"{who} got {e.channel} seq {e.seq} after seq {top} (call {e.conn})"
            )
        elif e.seq > top + 1:
            c.gaps += 1
            c.gap_seqs += e.seq - top - 1
            jumps[e.channel].append((top + 1, e.seq - 1, windows.index(e.t)))
            note(
                "gap",
                f"{who}: {e.channel} jumped from seq {top} to {e.seq} at {e.t:.1f}s (call {e.conn})",
            )
        raw_seen[e.channel].add(e.seq)
        raw_top[e.channel] = max(top, e.seq)

    # What the application got: the client must not add duplicates or reorder either.
    got_seen: dict[str, set[int]] = defaultdict(set)
    got_top: dict[str, int] = dict(sub.start)
    for r in sorted(sub.delivered, key=lambda r: r.t):
        if r.seq <= 0:
            continue
        c = reports[windows.index(r.t)].counts
        if r.seq in got_seen[r.channel]:
            if (r.channel, r.seq) not in flagged:
                flagged.add((r.channel, r.seq))
                c.duplicated_stream += 1
                note("duplicated", f"the client handed {who} {r.channel} seq {r.seq} twice")
        elif r.seq < got_top.get(r.channel, 0) and (r.channel, r.seq) not in flagged:
            flagged.add((r.channel, r.seq))
            c.out_of_order += 1
            note("out-of-order", f"the client handed {who} {r.channel} seq {r.seq} late")
        got_seen[r.channel].add(r.seq)
        got_top[r.channel] = max(got_top.get(r.channel, 0), r.seq)

    # Losses and fills, by message.
    raw_ids = {e.message_id for e in sub.raw if e.message_id}
    got_ids = {r.message_id for r in sub.delivered if r.message_id}
    for r in sub.delivered:
        if r.message_id and r.message_id not in raw_ids:
            reports[windows.index(r.t)].counts.recovered_by_fill += 1
            raw_ids.add(r.message_id)  # once per message
    lost: dict[str, int] = {}
    for channel, after in sub.start.items():
        for msg in expected.get(channel, {}).values():
            if msg.seq <= after or msg.message_id in got_ids:
                continue
            # Skipped in a jump: the loss happened where the stream jumped (often a
            # fault or two after the message was sent); otherwise where it was sent.
            jumped = [w for lo, hi, w in jumps.get(channel, []) if lo <= msg.seq <= hi]
            wr = reports[jumped[0]] if jumped else window_of_message(msg, fallback)
            wr.counts.lost_stream += 1
            lost[channel] = lost.get(channel, 0) + 1
            sent_late = msg.message_id in raw_ids
            if sent_late:
                wr.counts.late_dropped += 1
            if _covered(sub.notices, channel, msg.seq):
                wr.counts.undelivered_with_notice += 1
            else:
                wr.counts.undelivered_without_notice += 1
                note(
                    "lost",
                    f"{who} never got {channel} seq {msg.seq} ({msg.message_id})"
                    + (" (sent late, dropped by the client)" if sent_late else "")
                    + f" in window {wr.window.name}",
                )
    return lost
