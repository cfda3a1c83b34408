"""Hybrid logical clocks: timestamps that order events across regions (ADR-026).

In the autonomous write mode (issue 15) every region writes, so no single
sequence orders a channel. Each event carries a hybrid logical clock (HLC)
timestamp instead: the wall clock in milliseconds, plus a counter that breaks
ties and keeps causality when clocks disagree. A region's clock never goes
backwards, and after it :meth:`Clock.observe` s a remote timestamp every later
local one is greater, so a reply always sorts after the message it answers even
if the replying region's wall clock is behind.

A timestamp packs into one unsigned 64-bit integer, ``millis << 16 | counter``,
so it compares as an int and fits a protobuf ``uint64``.

Example:
    >>> clock = Clock(wall_ms=lambda: 1_000)
    >>> a, b = clock.now(), clock.now()
    >>> (unpack(a), unpack(b))
    ((1000, 0), (1000, 1))
    >>> clock.observe(pack(5_000, 7)) == pack(5_000, 8)
    True
    >>> unpack(clock.now())
    (5000, 9)
"""

from __future__ import annotations

from collections.abc import Callable

from mesh.core.events import now_ms

__all__ = ["COUNTER_BITS", "Clock", "ClockSkewError", "pack", "unpack"]

COUNTER_BITS = 16
_COUNTER_MAX = (1 << COUNTER_BITS) - 1
_MILLIS_MAX = (1 << (64 - COUNTER_BITS)) - 1


class ClockSkewError(ValueError):
    """A remote timestamp lies further ahead of the local wall clock than allowed."""


def pack(millis: int, counter: int) -> int:
    """The 64-bit timestamp of ``millis`` and ``counter``."""
    if not 0 <= millis <= _MILLIS_MAX or not 0 <= counter <= _COUNTER_MAX:
        raise ValueError(f"HLC out of range: millis={millis} counter={counter}")
    return (millis << COUNTER_BITS) | counter


def unpack(ts: int) -> tuple[int, int]:
    """``(millis, counter)`` of a 64-bit timestamp."""
    return ts >> COUNTER_BITS, ts & _COUNTER_MAX


class Clock:
    """One region's (one writer's) hybrid logical clock. Not thread-safe: one event loop."""

    def __init__(
        self, *, wall_ms: Callable[[], int] = now_ms, max_skew_ms: int | None = 60_000
    ) -> None:
        """A clock at zero that follows ``wall_ms``.

        Args:
            wall_ms: The physical clock (milliseconds since the epoch).
            max_skew_ms: :meth:`observe` refuses a timestamp this far ahead of
                the wall clock (a region with a broken clock must not drag every
                other region's clock into the future); None: accept any.
        """
        self._wall_ms = wall_ms
        self.max_skew_ms = max_skew_ms
        self.last = 0
        """The greatest timestamp this clock has issued or observed."""

    def now(self) -> int:
        """A timestamp greater than every one issued or observed before."""
        return self._advance(0)

    def observe(self, remote: int) -> int:
        """Takes in a timestamp seen on a remote event; returns a local one after both.

        Raises:
            ClockSkewError: ``remote`` is more than ``max_skew_ms`` ahead of the wall clock.
        """
        remote_ms, _ = unpack(remote)
        if self.max_skew_ms is not None and remote_ms - self._wall_ms() > self.max_skew_ms:
            raise ClockSkewError(
                f"a remote timestamp is {remote_ms - self._wall_ms()} ms ahead of this clock"
            )
        return self._advance(remote)

    def _advance(self, remote: int) -> int:
        wall = self._wall_ms()
        last_ms, last_counter = unpack(self.last)
        remote_ms, remote_counter = unpack(remote)
        millis = max(wall, last_ms, remote_ms)
        if millis == last_ms == remote_ms:
            counter = max(last_counter, remote_counter) + 1
        elif millis == last_ms:
            counter = last_counter + 1
        elif millis == remote_ms:
            counter = remote_counter + 1
        else:
            counter = 0
        if counter > _COUNTER_MAX:
            # 65,536 events in one millisecond: borrow the next millisecond.
            millis, counter = millis + 1, 0
        self.last = pack(millis, counter)
        return self.last
