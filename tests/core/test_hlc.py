"""The hybrid logical clock (mesh/core/hlc.py): monotonic, causal, bounded skew."""

from __future__ import annotations

import doctest

import pytest

from mesh.core import hlc
from mesh.core.hlc import Clock, ClockSkewError, pack, unpack


class Wall:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def test_the_module_examples_hold() -> None:
    assert doctest.testmod(hlc).failed == 0


def test_timestamps_pack_into_64_bits_and_compare_as_ints() -> None:
    assert unpack(pack(1_700_000_000_000, 5)) == (1_700_000_000_000, 5)
    assert pack(10, 65_535) < pack(11, 0)
    assert pack((1 << 48) - 1, 65_535) == (1 << 64) - 1
    with pytest.raises(ValueError):
        pack(1 << 48, 0)
    with pytest.raises(ValueError):
        pack(1, 1 << 16)


def test_the_clock_never_goes_backwards_when_the_wall_clock_does() -> None:
    wall = Wall(1_000)
    clock = Clock(wall_ms=wall)
    stamps = [clock.now()]
    wall.ms = 900  # NTP stepped the clock back
    stamps += [clock.now(), clock.now()]
    wall.ms = 1_200
    stamps.append(clock.now())
    assert stamps == sorted(set(stamps))
    assert [unpack(s) for s in stamps] == [(1_000, 0), (1_000, 1), (1_000, 2), (1_200, 0)]


def test_after_observing_a_remote_event_every_local_stamp_is_later() -> None:
    # eu's wall clock runs 3 s behind us-east: a reply written in eu after reading
    # us-east's message still sorts after it.
    us, eu = Clock(wall_ms=Wall(10_000)), Clock(wall_ms=Wall(7_000))
    question = us.now()
    eu.observe(question)
    reply = eu.now()
    assert reply > question
    assert unpack(reply) == (10_000, 2)


def test_a_remote_stamp_far_in_the_future_is_refused_and_leaves_the_clock_alone() -> None:
    clock = Clock(wall_ms=Wall(1_000), max_skew_ms=500)
    before = clock.now()
    with pytest.raises(ClockSkewError):
        clock.observe(pack(2_000, 0))
    assert clock.last == before
    assert unpack(clock.observe(pack(1_400, 3))) == (1_400, 4)


def test_a_full_millisecond_borrows_the_next_one() -> None:
    clock = Clock(wall_ms=Wall(5))
    clock.observe(pack(5, 65_535))
    assert unpack(clock.last) == (6, 0)
    assert unpack(clock.now()) == (6, 1)
