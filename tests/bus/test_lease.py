"""The write lease's protocol (ADR-019) on an in-memory compare-and-set store and a fake clock.

Two instances never hold it at once, a standby takes over only after the holder
stopped renewing for ``ttl`` seconds of the standby's own clock, and the holder's
fence (:meth:`Lease.held`) turns false before the standby can take over, even for a
holder that was paused and never heard that it lost.
"""

from __future__ import annotations

import pytest

from mesh.bus.lease import Lease, LeaseConflict


class MemoryStore:
    def __init__(self) -> None:
        self.value: bytes | None = None
        self.revision = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("nats down")

    async def get(self, key: str) -> tuple[bytes, int] | None:
        self._check()
        return None if self.value is None else (self.value, self.revision)

    async def create(self, key: str, value: bytes) -> int:
        self._check()
        if self.value is not None:
            raise LeaseConflict("exists")
        self.revision += 1
        self.value = value
        return self.revision

    async def update(self, key: str, value: bytes, last: int) -> int:
        self._check()
        if self.value is None or last != self.revision:
            raise LeaseConflict("wrong revision")
        self.revision += 1
        self.value = value
        return self.revision

    async def delete(self, key: str, last: int) -> None:
        self._check()
        if last != self.revision:
            raise LeaseConflict("wrong revision")
        self.revision += 1
        self.value = None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _pair(store: MemoryStore, clock: Clock) -> tuple[Lease, Lease]:
    a = Lease(store, "command", "a", ttl=2.0, clock=clock)
    b = Lease(store, "command", "b", ttl=2.0, clock=clock)
    return a, b


async def test_one_holder_and_the_standby_waits_while_it_renews() -> None:
    store, clock = MemoryStore(), Clock()
    a, b = _pair(store, clock)
    assert await a.step() is True
    assert await b.step() is None
    for _ in range(20):  # ten seconds of renewals every half second
        clock.now += 0.5
        assert await a.step() is None
        assert await b.step() is None
        assert a.held() and not b.held()
    assert b.acquisitions == 0


async def test_standby_takes_over_only_after_ttl_and_the_old_holder_is_fenced_first() -> None:
    store, clock = MemoryStore(), Clock()
    a, b = _pair(store, clock)
    await a.step()
    await b.step()  # b sees a's revision
    # a is paused from here on (no more steps): its fence runs out on its own.
    takeover_at = None
    fenced_at = None
    for _ in range(40):
        clock.now += 0.1
        if fenced_at is None and not a.held():
            fenced_at = clock.now
        if await b.step() is True:
            takeover_at = clock.now
            break
        assert not (a.held() and b.held())
    assert fenced_at is not None and takeover_at is not None
    assert fenced_at < takeover_at
    assert b.held() and not a.held()
    # The paused holder resumes: its renewal fails on the revision, it stands down.
    assert await a.step() is False
    assert not a.held() and b.held()


async def test_release_hands_over_at_once() -> None:
    store, clock = MemoryStore(), Clock()
    a, b = _pair(store, clock)
    await a.step()
    await b.step()
    await a.release()
    assert not a.held()
    assert await b.step() is True
    assert b.held()


async def test_holder_that_cannot_renew_is_fenced_then_resumes_if_nobody_took_it() -> None:
    store, clock = MemoryStore(), Clock()
    a, b = _pair(store, clock)
    await a.step()
    store.down = True  # the bucket's stream is electing a leader
    for _ in range(6):
        clock.now += 0.5
        assert await a.step() is None
    assert not a.held()
    store.down = False
    assert await a.step() is None
    assert a.held() and a.acquisitions == 1
    # Another round of outage, and this time the standby takes it first.
    store.down = True
    clock.now += 3
    await a.step()
    assert not a.held()
    store.down = False
    await b.step()
    clock.now += 2.1
    assert await b.step() is True
    assert await a.step() is False
    assert b.held() and not a.held()


def test_safety_must_leave_a_margin() -> None:
    with pytest.raises(ValueError, match="safety"):
        Lease(MemoryStore(), "k", "h", safety=1.0)
