"""Per-user rate limits (token buckets) and quotas (concurrent streams): pure logic, no I/O.

A :class:`RateLimiter` holds one token bucket per ``(user, action)``: a bucket
holds at most ``burst`` tokens, refills at ``rate`` tokens per second, and each
request takes one. An empty bucket refuses with
:class:`~mesh.core.errors.ResourceExhausted` (reason ``RATE_LIMITED``) whose
``retry_delay`` is the time until the next token, which the status carries as
``google.rpc.RetryInfo``. Buckets of idle users are forgotten (a full bucket
carries no state worth keeping), so memory is bounded by the active users.

A :class:`StreamQuota` counts the open streams per user and refuses one past
the limit (again ``RATE_LIMITED``, with a short retry delay: a stream frees its
slot as soon as it ends).

The limits come from the topology (``[limits]``, ``docs/topology.md``); the
Command Service (sends, typing, channel creation, joins) and the Notification
Service (streams) enforce them. As every region's edge forwards commands to the
primary's one Command Service, its per-user limits are global.

Example:
    >>> clock = iter([0.0, 0.0, 0.0, 0.5]).__next__
    >>> limiter = RateLimiter({"send": Limit(rate=2.0, burst=2)}, clock=clock)
    >>> limiter.take("alice", "send"); limiter.take("alice", "send")
    >>> try:
    ...     limiter.take("alice", "send")
    ... except ResourceExhausted as err:
    ...     err.reason, err.retry_delay
    ('RATE_LIMITED', 0.5)
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mesh.core.errors import ResourceExhausted

__all__ = ["Limit", "RateLimiter", "StreamQuota", "TokenBucket"]


@dataclass(frozen=True)
class Limit:
    """A token bucket's shape."""

    rate: float
    """Tokens added per second (the sustained rate); 0 with burst 0 disables the limit."""
    burst: int
    """Bucket size: requests allowed at once after a quiet period."""

    @property
    def enabled(self) -> bool:
        """False for the ``Limit(0, 0)`` that means "unlimited"."""
        return self.rate > 0 or self.burst > 0


class TokenBucket:
    """One bucket; ``take`` returns 0.0 when a token was taken, else the seconds until one is."""

    __slots__ = ("_limit", "_stamp", "_tokens")

    def __init__(self, limit: Limit, now: float) -> None:
        self._limit = limit
        self._tokens = float(limit.burst)
        self._stamp = now

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._stamp)
        self._tokens = min(float(self._limit.burst), self._tokens + elapsed * self._limit.rate)
        self._stamp = now

    def take(self, now: float) -> float:
        """Takes one token if there is one (returns 0.0), else returns the wait for the next."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        if self._limit.rate <= 0:
            return math.inf
        return (1.0 - self._tokens) / self._limit.rate

    def full(self, now: float) -> bool:
        """Whether the bucket is full (and so equal to a fresh one)."""
        self._refill(now)
        return self._tokens >= self._limit.burst


class RateLimiter:
    """Token buckets per ``(user, action)`` for a fixed set of actions."""

    def __init__(
        self,
        limits: Mapping[str, Limit],
        *,
        clock: Callable[[], float] = time.monotonic,
        keep: int = 100_000,
        on_refusal: Callable[[str], None] | None = None,
    ) -> None:
        """Creates the limiter.

        Args:
            limits: The bucket shape of each action (``send``, ``typing`` ...);
                an action missing here, or with ``Limit(0, 0)``, is not limited.
            clock: Seconds, monotonic (injected by unit tests).
            keep: Buckets kept at most; beyond it, full (idle) ones are forgotten first.
            on_refusal: Called with the action on every refusal (metrics).
        """
        self.limits = {a: lim for a, lim in limits.items() if lim.enabled}
        self._clock = clock
        self._keep = keep
        self._buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()
        self._on_refusal = on_refusal

    def take(self, user: str, action: str) -> None:
        """Takes one token from the user's bucket for ``action``.

        Raises:
            ResourceExhausted: ``RATE_LIMITED``, with ``retry_delay`` the seconds
                until the bucket holds a token again.
        """
        limit = self.limits.get(action)
        if limit is None:
            return
        now = self._clock()
        key = (user, action)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(limit, now)
            self._trim(now)
        else:
            self._buckets.move_to_end(key)
        wait = bucket.take(now)
        if wait > 0.0:
            if self._on_refusal is not None:
                self._on_refusal(action)
            # Rounded up to the millisecond: a client that waits this long finds a token.
            delay = 60.0 if math.isinf(wait) else max(0.001, math.ceil(wait * 1000) / 1000)
            raise ResourceExhausted(
                "RATE_LIMITED",
                f"too many {action} requests: at most {limit.burst} at once and "
                f"{limit.rate:g}/s sustained; retry in {delay:g}s",
                retry_delay=delay,
                action=action,
            )

    def _trim(self, now: float) -> None:
        # Oldest first; a bucket that is still refilling is older state worth keeping,
        # but past 2x the cap memory wins.
        while len(self._buckets) > self._keep:
            key, bucket = next(iter(self._buckets.items()))
            if not bucket.full(now) and len(self._buckets) < 2 * self._keep:
                break
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


class StreamQuota:
    """At most ``limit`` concurrent streams per user (0: unlimited)."""

    RETRY_DELAY = 1.0
    """Seconds a refused client is told to wait (a slot frees when one of its streams ends)."""

    def __init__(self, limit: int, *, on_refusal: Callable[[], None] | None = None) -> None:
        """Args: limit is the streams one user may hold open at once; on_refusal counts refusals."""
        self.limit = limit
        self._open: dict[str, int] = {}
        self._on_refusal = on_refusal

    def acquire(self, user: str) -> None:
        """Counts a new stream of ``user``.

        Raises:
            ResourceExhausted: ``RATE_LIMITED``: the user already holds ``limit`` streams.
        """
        held = self._open.get(user, 0)
        if self.limit and held >= self.limit:
            if self._on_refusal is not None:
                self._on_refusal()
            raise ResourceExhausted(
                "RATE_LIMITED",
                f"too many concurrent streams: at most {self.limit} per user; close one first",
                retry_delay=self.RETRY_DELAY,
                action="subscribe",
            )
        self._open[user] = held + 1

    def release(self, user: str) -> None:
        """Counts a stream of ``user`` as ended (call exactly once per successful acquire)."""
        held = self._open.get(user, 0) - 1
        if held > 0:
            self._open[user] = held
        else:
            self._open.pop(user, None)

    def held(self, user: str) -> int:
        """Streams ``user`` holds now."""
        return self._open.get(user, 0)
