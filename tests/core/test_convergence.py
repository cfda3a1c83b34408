"""Convergence rules of the autonomous write mode (mesh/core/convergence.py).

Each rule is a function of the set of a channel's events: the tests feed every
arrival order and check that all give the same answer, and that the answer is
the rule's (last writer wins, delete is final, remove wins, maximum).
"""

from __future__ import annotations

import doctest
import itertools
from typing import TypeVar

from mesh.core import convergence
from mesh.core.convergence import (
    MembershipChange,
    MessageOp,
    Stamp,
    is_member,
    last_writer,
    merge_read_marker,
    order_key,
    resolve_message,
)

_T = TypeVar("_T")


def s(hlc: int, origin: str, n: int = 1, eid: str = "") -> Stamp:
    return Stamp(hlc=hlc, origin=origin, event_id=eid or f"evt_{origin}_{hlc}", origin_seq=n)


def every_order(items: list[_T]) -> list[list[_T]]:
    return [list(p) for p in itertools.permutations(items)]


def test_the_module_examples_hold() -> None:
    assert doctest.testmod(convergence).failed == 0


def test_the_order_is_total_and_breaks_hlc_ties_by_region_then_id() -> None:
    stamps = [s(5, "us-east"), s(5, "eu", eid="evt_2"), s(5, "eu", eid="evt_1"), s(4, "asia")]
    assert [(x.hlc, x.origin, x.event_id) for x in sorted(stamps, key=order_key)] == [
        (4, "asia", "evt_asia_4"),
        (5, "eu", "evt_1"),
        (5, "eu", "evt_2"),
        (5, "us-east", "evt_us-east_5"),
    ]


def test_concurrent_edits_converge_to_the_last_writer_in_every_arrival_order() -> None:
    ops = [
        MessageOp("create", "msg_1", s(10, "eu"), "hello"),
        MessageOp("edit", "msg_1", s(20, "us-east"), "from us"),
        MessageOp("edit", "msg_1", s(20, "asia"), "from asia"),  # same ms: region breaks the tie
        MessageOp("edit", "msg_1", s(15, "eu", 2), "early eu"),
    ]
    results = {resolve_message(order) for order in every_order(ops)}
    assert len(results) == 1
    (state,) = results
    assert state is not None
    assert (state.text, state.deleted, state.last_change.origin) == ("from us", False, "us-east")


def test_a_delete_is_final_even_against_a_newer_edit() -> None:
    ops = [
        MessageOp("create", "msg_1", s(10, "eu"), "regretted secret"),
        MessageOp("delete", "msg_1", s(20, "eu", 2)),
        MessageOp("edit", "msg_1", s(30, "us-east"), "resurrected?"),
    ]
    for order in every_order(ops):
        state = resolve_message(order)
        assert state is not None and state.deleted and state.text == ""
        assert state.last_change == s(20, "eu", 2)


def test_edits_wait_for_their_create() -> None:
    assert resolve_message([MessageOp("edit", "msg_1", s(20, "eu"), "x")]) is None


def test_a_retry_through_another_region_is_one_message() -> None:
    # The same client_msg_id derives the same message id in both regions.
    ops = [
        MessageOp("create", "msg_1", s(12, "us-east"), "hi"),
        MessageOp("create", "msg_1", s(11, "eu"), "hi"),
        MessageOp("create", "msg_1", s(11, "eu"), "hi"),  # a redelivery of the same event
    ]
    for order in every_order(ops):
        state = resolve_message(order)
        assert state is not None
        assert state.created == s(11, "eu")
        assert state.dropped_creates == (s(12, "us-east"),)


def join(user: str, stamp: Stamp, **seen: int) -> MembershipChange:
    return MembershipChange("join", user, stamp, {k.replace("_", "-"): v for k, v in seen.items()})


def leave(user: str, stamp: Stamp, **seen: int) -> MembershipChange:
    return MembershipChange("leave", user, stamp, {k.replace("_", "-"): v for k, v in seen.items()})


def test_a_leave_concurrent_with_a_join_wins_in_every_order() -> None:
    # During a cut: eu kicks dave (having seen his first join, eu seq 1) while
    # asia, not having seen the kick, re-adds him with a later clock.
    changes = [
        join("dave", s(10, "eu", 1)),
        leave("dave", s(20, "eu", 2), eu=1),
        join("dave", s(30, "asia", 1), eu=1),  # later HLC, but never saw the leave
    ]
    assert {is_member("dave", order) for order in every_order(changes)} == {False}


def test_a_join_that_saw_the_leave_makes_a_member_again() -> None:
    changes = [
        join("dave", s(10, "eu", 1)),
        leave("dave", s(20, "eu", 2), eu=1),
        join("dave", s(30, "asia", 1), eu=2),  # asia had applied eu's leave
    ]
    assert {is_member("dave", order) for order in every_order(changes)} == {True}


def test_a_later_leave_removes_and_other_users_are_unaffected() -> None:
    changes = [
        join("dave", s(10, "eu", 1)),
        join("erin", s(11, "us-east", 1)),
        leave("dave", s(20, "us-east", 2), eu=1, us_east=1),
    ]
    assert not is_member("dave", changes)
    assert is_member("erin", changes)
    assert not is_member("nobody", changes)


def test_read_markers_take_the_maximum_and_settings_the_last_writer() -> None:
    assert merge_read_marker(merge_read_marker(0, 7), 5) == 7
    names = [(s(10, "eu"), "general"), (s(12, "asia"), "random"), (s(12, "eu"), "chat")]
    assert {last_writer(order) for order in every_order(names)} == {"chat"}
    assert last_writer([]) is None
