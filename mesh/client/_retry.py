"""When to retry, and how long to wait: pure logic, no I/O (unit-tested without servers).

Exponential backoff with *full jitter* (AWS architecture blog, "Exponential Backoff
And Jitter"): the n-th wait is uniform in ``[0, min(max_backoff, initial_backoff *
multiplier**(n-1))]``, so clients that failed together do not retry together. A
server's ``RetryInfo`` is a floor under that wait. Every logical call has a
deadline budget; a wait that would end past it is not taken (the last error is
raised instead), and each attempt's own timeout is cut to what the budget has left.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from mesh.core.errors import ChatmeshError, DeadlineExceeded, ResourceExhausted, Unavailable

__all__ = ["Budget", "RetryPolicy", "is_transport_failure", "resumable", "retryable"]

_TRANSPORT_CODES = frozenset({"INTERNAL", "UNKNOWN", "CANCELLED"})


@dataclass(frozen=True)
class RetryPolicy:
    """How a :class:`~mesh.client.ChatClient` retries a call (or reconnects a stream).

    The defaults suit interactive use: up to 5 attempts within 30 s, waits of at
    most 0.1, 0.2, 0.4, 0.8 s (jittered), each attempt limited to 10 s.
    """

    max_attempts: int | None = 5
    """Attempts per logical call, the first included (1: never retry; None: until the budget)."""
    initial_backoff: float = 0.1
    """Seconds: the upper bound of the first wait."""
    max_backoff: float = 5.0
    """Seconds: the cap of the wait's upper bound as it grows."""
    multiplier: float = 2.0
    """Growth of the upper bound per retry."""
    budget: float = 30.0
    """Seconds for the whole logical call: every attempt and every wait (a call's ``timeout=`` replaces it)."""
    attempt_timeout: float | None = 10.0
    """Seconds per attempt (cut to the budget left); None: the budget left."""

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None)")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and multiplier >= 1")
        if self.budget <= 0:
            raise ValueError("budget must be positive")

    @classmethod
    def none(cls) -> RetryPolicy:
        """One attempt, as long as the call's timeout (benchmarks count failures, not hide them)."""
        return cls(max_attempts=1, attempt_timeout=None)

    def backoff_cap(self, retry: int) -> float:
        """Upper bound of the wait before retry number ``retry`` (1 = the first retry)."""
        if retry < 1:
            raise ValueError("retry numbers start at 1")
        # Capped exponent: multiplier**large would overflow long before it matters.
        exponent = min(retry - 1, 64)
        return float(min(self.max_backoff, self.initial_backoff * self.multiplier**exponent))

    def backoff(
        self, retry: int, *, server_delay: float | None = None, rng: random.Random | None = None
    ) -> float:
        """The wait before retry number ``retry``: full jitter, at least ``server_delay``."""
        jittered = (rng or random).uniform(0.0, self.backoff_cap(retry))
        return max(jittered, server_delay or 0.0)


class Budget:
    """The time and attempts a logical call has left."""

    def __init__(
        self,
        policy: RetryPolicy,
        timeout: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Starts the budget now: ``timeout`` (if given) replaces ``policy.budget``."""
        self.policy = policy
        self._clock = clock
        self.deadline = clock() + (policy.budget if timeout is None else timeout)
        self.attempts = 0
        """Attempts started so far."""

    def remaining(self) -> float:
        """Seconds left (0 when spent)."""
        return max(0.0, self.deadline - self._clock())

    def attempt_timeout(self) -> float:
        """The timeout of the next attempt: the policy's, cut to the budget left."""
        left = self.remaining()
        per = self.policy.attempt_timeout
        return left if per is None else min(per, left)

    def start_attempt(self) -> None:
        """Counts an attempt."""
        self.attempts += 1

    def next_wait(
        self, *, server_delay: float | None = None, rng: random.Random | None = None
    ) -> float | None:
        """The wait before another attempt, or None when attempts or time are spent.

        A wait that would leave no time for the attempt after it is refused.
        """
        limit = self.policy.max_attempts
        if limit is not None and self.attempts >= limit:
            return None
        wait = self.policy.backoff(self.attempts, server_delay=server_delay, rng=rng)
        if wait >= self.remaining():
            return None
        return wait


def is_transport_failure(err: ChatmeshError) -> bool:
    """A status made by the transport, not by chatmesh: a reset stream or a dropped connection.

    gRPC (or a proxy between) reports those as INTERNAL, UNKNOWN or CANCELLED without
    chatmesh's ErrorInfo; chatmesh's own INTERNAL always carries reason INTERNAL.
    """
    return err.code in _TRANSPORT_CODES and err.reason == "UNSPECIFIED"


def retryable(err: ChatmeshError, *, idempotent: bool) -> bool:
    """Whether a unary call that failed with ``err`` may be sent again.

    Args:
        err: The failure.
        idempotent: The call is safe to repeat after it may have taken effect
            (a read, or a command carrying its idempotency key).

    UNAVAILABLE always (the contract: nothing was committed, or the request is safe to
    repeat); RESOURCE_EXHAUSTED only with the server's RetryInfo; DEADLINE_EXCEEDED and
    transport failures only for idempotent calls, as they may have taken effect.
    """
    if isinstance(err, Unavailable):
        return True
    if isinstance(err, ResourceExhausted):
        return err.retry_delay is not None
    if isinstance(err, DeadlineExceeded) or is_transport_failure(err):
        return idempotent
    return False


def resumable(err: ChatmeshError | None) -> bool:
    """Whether a Subscribe stream that ended with ``err`` (None: cleanly) should reconnect.

    A stream is read-only and resumes by position, so every transient ending qualifies:
    UNAVAILABLE (a restart, a shutdown), RESOURCE_EXHAUSTED for a slow consumer or with
    RetryInfo, DEADLINE_EXCEEDED (the client sets no deadline on streams, so it was a
    proxy's), a transport failure, or a clean end the server never sends on its own.
    """
    if err is None or isinstance(err, Unavailable | DeadlineExceeded):
        return True
    if isinstance(err, ResourceExhausted):
        return err.reason == "SLOW_CONSUMER" or err.retry_delay is not None
    return is_transport_failure(err)
