"""RetryPolicy and Budget: backoff with full jitter, capped, within a deadline budget (no I/O)."""

from __future__ import annotations

import random

import pytest

from mesh.client import Budget, RetryPolicy, is_transport_failure, resumable, retryable
from mesh.core.errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cap_doubles_from_initial_and_stops_at_max() -> None:
    policy = RetryPolicy(initial_backoff=0.1, multiplier=2.0, max_backoff=1.0)
    assert [policy.backoff_cap(n) for n in range(1, 7)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    )
    assert policy.backoff_cap(10_000) == 1.0  # no overflow for long reconnect runs


def test_full_jitter_spans_zero_to_the_cap() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=5.0)
    rng = random.Random(7)
    for retry in (1, 3, 8):
        cap = policy.backoff_cap(retry)
        waits = [policy.backoff(retry, rng=rng) for _ in range(2000)]
        assert all(0.0 <= w <= cap for w in waits)
        # Full jitter, not "cap plus a little": the waits cover the whole range.
        assert min(waits) < cap * 0.05 and max(waits) > cap * 0.95
        assert sum(waits) / len(waits) == pytest.approx(cap / 2, rel=0.1)


def test_two_clients_failing_together_do_not_retry_together() -> None:
    policy = RetryPolicy()
    a, b = random.Random(1), random.Random(2)
    assert [policy.backoff(n, rng=a) for n in range(1, 5)] != [
        policy.backoff(n, rng=b) for n in range(1, 5)
    ]


def test_server_retry_info_is_a_floor() -> None:
    policy = RetryPolicy(initial_backoff=0.1)
    rng = random.Random(3)
    assert all(policy.backoff(1, server_delay=2.0, rng=rng) == 2.0 for _ in range(100))


def test_budget_stops_after_max_attempts() -> None:
    clock = FakeClock()
    budget = Budget(RetryPolicy(max_attempts=3, budget=100), clock=clock)
    waits = []
    while True:
        budget.start_attempt()
        wait = budget.next_wait(rng=random.Random(0))
        if wait is None:
            break
        waits.append(wait)
    assert budget.attempts == 3 and len(waits) == 2


def test_budget_refuses_a_wait_that_ends_past_the_deadline() -> None:
    clock = FakeClock()
    budget = Budget(RetryPolicy(max_attempts=None, budget=1.0), clock=clock)
    budget.start_attempt()
    assert budget.next_wait(server_delay=0.5) == 0.5
    clock.now += 0.6  # 0.4 s left
    assert budget.next_wait(server_delay=0.5) is None
    assert budget.remaining() == pytest.approx(0.4)


def test_attempt_timeout_is_cut_to_the_budget_left() -> None:
    clock = FakeClock()
    budget = Budget(RetryPolicy(budget=30, attempt_timeout=10), clock=clock)
    assert budget.attempt_timeout() == 10
    clock.now += 25
    assert budget.attempt_timeout() == pytest.approx(5)
    clock.now += 10
    assert budget.attempt_timeout() == 0 and budget.remaining() == 0


def test_call_timeout_replaces_the_policy_budget() -> None:
    clock = FakeClock()
    budget = Budget(RetryPolicy(budget=30, attempt_timeout=None), 2.0, clock=clock)
    assert budget.attempt_timeout() == 2.0


def test_unlimited_attempts_still_end_with_the_budget() -> None:
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=None, budget=10, initial_backoff=1, max_backoff=1)
    budget = Budget(policy, clock=clock)
    rng = random.Random(5)
    while True:
        budget.start_attempt()
        wait = budget.next_wait(rng=rng)
        if wait is None:
            break
        clock.now += wait + 0.5  # the wait, then an attempt that fails after 0.5 s
    assert clock.now <= 1000.0 + 10 + 0.5
    assert budget.attempts > 5


@pytest.mark.parametrize(
    "bad",
    [
        {"max_attempts": 0},
        {"initial_backoff": -1},
        {"multiplier": 0.5},
        {"budget": 0},
    ],
)
def test_nonsense_policies_are_rejected(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**bad)  # type: ignore[arg-type]


def test_none_policy_makes_one_attempt() -> None:
    budget = Budget(RetryPolicy.none())
    budget.start_attempt()
    assert budget.next_wait() is None


def test_which_unary_failures_are_retried() -> None:
    transient = Unavailable("UNSPECIFIED", "connection refused")
    assert retryable(transient, idempotent=False) and retryable(transient, idempotent=True)
    limited = ResourceExhausted("RATE_LIMITED", "slow down", retry_delay=1.0)
    assert retryable(limited, idempotent=False)
    assert not retryable(ResourceExhausted("RATE_LIMITED", "no advice"), idempotent=True)
    late = DeadlineExceeded("DEADLINE_EXCEEDED", "attempt timed out")
    assert retryable(late, idempotent=True) and not retryable(late, idempotent=False)
    reset = Internal("Received RST_STREAM with error code 2", reason="UNSPECIFIED")
    assert is_transport_failure(reset) and retryable(reset, idempotent=True)
    assert not retryable(reset, idempotent=False)
    for final in (
        Internal("internal error (id=abc)"),  # chatmesh's own: a bug, not a blip
        PermissionDenied("NOT_A_MEMBER", "no"),
        NotFound("CHANNEL_NOT_FOUND", "no"),
        AlreadyExists("IDEMPOTENCY_KEY_REUSED", "no"),
        Unauthenticated("TOKEN_EXPIRED", "no"),
        InvalidArgument([]),
    ):
        assert not retryable(final, idempotent=True), final


def test_which_stream_endings_are_resumed() -> None:
    assert resumable(None)  # a clean end: the server never ends a stream on its own
    assert resumable(Unavailable("SHUTTING_DOWN", "bye"))
    assert resumable(ResourceExhausted("SLOW_CONSUMER", "read faster"))
    assert not resumable(ResourceExhausted("RATE_LIMITED", "too many streams"))
    assert resumable(ResourceExhausted("RATE_LIMITED", "later", retry_delay=3))
    assert resumable(DeadlineExceeded("UNSPECIFIED", "proxy timeout"))
    assert resumable(Cancelled("UNSPECIFIED", "Received RST_STREAM with error code 8"))
    assert not resumable(PermissionDenied("NOT_A_MEMBER", "no"))
    assert not resumable(Unauthenticated("TOKEN_EXPIRED", "no"))
    assert not resumable(Internal("internal error (id=abc)"))
