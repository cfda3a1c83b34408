"""Where a subscription stands in each channel: resume positions and de-duplication.

Pure bookkeeping (unit-tested without servers). Channel events carry their
channel's next ``seq``; the last seq yielded per channel is both the
``resume_from`` of the next connection and the watermark below which an event is
a duplicate (a replay overlapping what was already seen, across a reconnect).
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

    def __init__(self, initial: Mapping[str, int] | None = None) -> None:
        """Starts from ``initial`` (the caller's ``resume_from``: channel -> last seq it has)."""
        self._last: dict[str, int] = {str(k): int(v) for k, v in (initial or {}).items()}

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
        return len(self._last)
