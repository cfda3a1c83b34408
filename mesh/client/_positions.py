"""Where a subscription stands in each channel: resume positions and de-duplication.

Pure bookkeeping (unit-tested without servers). Channel events carry their
channel's next ``seq``; the last seq yielded per channel is both the
``resume_from`` of the next connection and the watermark below which an event is
a duplicate (a replay overlapping what was already seen, across a reconnect).

In the every-region write mode (ADR-026) channel events carry ``seq`` 0 and an
``origin_seq`` per origin region instead: the same bookkeeping is kept per
channel *and* origin (:meth:`ResumePositions.admit_origin`), and the next
connection's ``resume_from_origins`` is :meth:`ResumePositions.origin_snapshot`.
A channel the stream starts live (not in what the connection was opened with)
takes each origin's first event as it comes; in a channel it resumed, an origin
it has no position for starts at 1, as the server replays it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

__all__ = ["ResumePositions", "Verdict"]


class Verdict(enum.Enum):
    """What :meth:`ResumePositions.admit` decided about an event."""

    NEW = "new"
    """The next event of its channel (or the first seen of a channel): yield it."""
    DUPLICATE = "duplicate"
    """At or below the channel's position: seen already, drop it."""
    GAP = "gap"
    """Beyond the next seq: events between were not delivered (the position moved anyway)."""
    UNPOSITIONED = "unpositioned"
    """An ephemeral or user event (seq 0): no position, never a duplicate."""


class ResumePositions:
    """The last seq per channel a subscription has delivered.

    Example:
        >>> positions = ResumePositions({"ch_a": 4})
        >>> positions.admit("ch_a", 4), positions.admit("ch_a", 5), positions.admit("ch_a", 7)
        (<Verdict.DUPLICATE: 'duplicate'>, <Verdict.NEW: 'new'>, <Verdict.GAP: 'gap'>)
        >>> positions.snapshot()
        {'ch_a': 7}
    """

    def __init__(
        self,
        initial: Mapping[str, int] | None = None,
        origins: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        """Starts from the caller's positions.

        Args:
            initial: ``resume_from``: channel -> last seq it has (primary mode).
            origins: ``resume_from_origins``: channel -> origin region -> last
                origin_seq it has (every-region mode).
        """
        self._last: dict[str, int] = {str(k): int(v) for k, v in (initial or {}).items()}
        self._origins: dict[str, dict[str, int]] = {
            str(ch): {str(o): int(n) for o, n in at.items()} for ch, at in (origins or {}).items()
        }
        self._open: set[str] = set()
        """Channels that started live on the current connection (not in its resume map)."""

    def admit(self, channel_id: str, seq: int) -> Verdict:
        """Classifies an event by its channel and seq, moving the channel's position on."""
        if seq <= 0 or not channel_id:
            return Verdict.UNPOSITIONED
        last = self._last.get(channel_id)
        if last is not None and seq <= last:
            return Verdict.DUPLICATE
        self._last[channel_id] = seq
        if last is not None and seq > last + 1:
            return Verdict.GAP
        return Verdict.NEW

    def admit_origin(self, channel_id: str, origin: str, origin_seq: int) -> Verdict:
        """:meth:`admit` for an every-region event: by its channel, origin and origin_seq.

        Example:
            >>> positions = ResumePositions(origins={"ch_a": {"eu": 2}})
            >>> [positions.admit_origin("ch_a", o, n).value for o, n in
            ...  [("eu", 2), ("eu", 3), ("asia", 1), ("asia", 3)]]
            ['duplicate', 'new', 'new', 'gap']
            >>> positions.origin_snapshot()
            {'ch_a': {'eu': 3, 'asia': 3}}
        """
        if origin_seq <= 0 or not channel_id:
            return Verdict.UNPOSITIONED
        at = self._origins.get(channel_id)
        if at is None:
            at = self._origins[channel_id] = {}
            self._open.add(channel_id)  # first sight: this channel started live
        last = at.get(origin)
        at[origin] = max(origin_seq, last or 0)
        if last is None:
            if channel_id in self._open:
                return Verdict.NEW  # the first event of this origin on a live-started channel
            last = 0
        if origin_seq <= last:
            return Verdict.DUPLICATE
        return Verdict.GAP if origin_seq > last + 1 else Verdict.NEW

    def rewind_origin(self, channel_id: str, origin: str, origin_seq: int) -> None:
        """Puts a channel's origin position back to ``origin_seq`` (0: none seen)."""
        self._origins.setdefault(channel_id, {})[origin] = origin_seq

    def get_origin(self, channel_id: str, origin: str) -> int | None:
        """The channel's position of ``origin``, None if it has none."""
        return self._origins.get(channel_id, {}).get(origin)

    def origins(self, channel_id: str) -> dict[str, int]:
        """A copy of the channel's per-origin positions (empty if none)."""
        return dict(self._origins.get(channel_id, {}))

    def origin_snapshot(self) -> dict[str, dict[str, int]]:
        """A copy of every per-origin position: the ``resume_from_origins`` of the next connection.

        Taken when a connection opens: from then on every channel in it counts as
        resumed (the server replays an origin without a position from 1).
        """
        self._open.clear()
        return {ch: dict(at) for ch, at in self._origins.items()}

    def rewind(self, channel_id: str, seq: int) -> None:
        """Puts the channel's position back to ``seq`` (an event beyond a gap was not yielded)."""
        self._last[channel_id] = seq

    def get(self, channel_id: str) -> int | None:
        """The channel's position, None if it has none."""
        return self._last.get(channel_id)

    def snapshot(self) -> dict[str, int]:
        """A copy of every position: the ``resume_from`` of the next connection."""
        return dict(self._last)

    def __len__(self) -> int:
        return len(self._last.keys() | self._origins.keys())
