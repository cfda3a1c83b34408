"""Token buckets and stream quotas (mesh.core.ratelimit): a fake clock, nothing started."""

from __future__ import annotations

import pytest

from mesh.core.errors import ResourceExhausted
from mesh.core.ratelimit import Limit, RateLimiter, StreamQuota
from mesh.rpc.status import parse_details, to_status


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_refusals_carry_the_wait_for_the_next_token() -> None:
    clock = Clock()
    refused: list[str] = []
    limiter = RateLimiter(
        {"send": Limit(rate=4.0, burst=3)}, clock=clock, on_refusal=refused.append
    )
    for _ in range(3):
        limiter.take("alice", "send")
    with pytest.raises(ResourceExhausted) as info:
        limiter.take("alice", "send")
    assert info.value.reason == "RATE_LIMITED"
    assert info.value.retry_delay == 0.25
    assert info.value.metadata == {"action": "send"}
    assert refused == ["send"]
    # The status a client receives carries ErrorInfo and RetryInfo.
    details = parse_details(to_status(info.value))
    assert (details.reason, details.retry_delay) == ("RATE_LIMITED", 0.25)


def test_tokens_refill_at_the_rate_and_never_past_the_burst() -> None:
    clock = Clock()
    limiter = RateLimiter({"send": Limit(rate=2.0, burst=2)}, clock=clock)
    limiter.take("alice", "send")
    limiter.take("alice", "send")
    clock.now += 0.5  # one token back
    limiter.take("alice", "send")
    with pytest.raises(ResourceExhausted):
        limiter.take("alice", "send")
    clock.now += 3600  # a long quiet period refills to the burst, not more
    limiter.take("alice", "send")
    limiter.take("alice", "send")
    with pytest.raises(ResourceExhausted):
        limiter.take("alice", "send")


def test_users_and_actions_have_separate_buckets() -> None:
    clock = Clock()
    limiter = RateLimiter({"send": Limit(1.0, 1), "typing": Limit(1.0, 1)}, clock=clock)
    limiter.take("alice", "send")
    with pytest.raises(ResourceExhausted):
        limiter.take("alice", "send")
    limiter.take("bob", "send")  # the flood of one user costs another nothing
    limiter.take("alice", "typing")
    limiter.take("alice", "join")  # not limited at all


def test_a_zero_limit_is_no_limit() -> None:
    limiter = RateLimiter({"send": Limit(0.0, 0)}, clock=Clock())
    for _ in range(10_000):
        limiter.take("alice", "send")
    assert len(limiter) == 0


def test_idle_buckets_are_forgotten_beyond_the_cap() -> None:
    clock = Clock()
    limiter = RateLimiter({"send": Limit(10.0, 5)}, clock=clock, keep=100)
    for i in range(1000):
        limiter.take(f"user-{i}", "send")
        clock.now += 1.0  # each user's bucket is full again a second later
    assert len(limiter) <= 101


def test_stream_quota_counts_open_streams_per_user() -> None:
    refusals: list[int] = []
    quota = StreamQuota(2, on_refusal=lambda: refusals.append(1))
    quota.acquire("alice")
    quota.acquire("alice")
    with pytest.raises(ResourceExhausted) as info:
        quota.acquire("alice")
    assert info.value.reason == "RATE_LIMITED" and info.value.retry_delay is not None
    quota.acquire("bob")
    quota.release("alice")
    quota.acquire("alice")
    assert (quota.held("alice"), quota.held("bob"), len(refusals)) == (2, 1, 1)
    for _ in range(2):
        quota.release("alice")
    assert quota.held("alice") == 0


def test_stream_quota_zero_is_unlimited() -> None:
    quota = StreamQuota(0)
    for _ in range(1000):
        quota.acquire("alice")
    assert quota.held("alice") == 1000
