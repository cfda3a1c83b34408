"""RemoteIndex: the other regions' instances and users, from overheard route traffic (no I/O)."""

from __future__ import annotations

from services.fanout.remote import RemoteIndex


def test_updates_and_snapshots_say_who_is_online_where() -> None:
    index = RemoteIndex()
    index.update("n-us-1", "us-east", 1, ["ann", "bo"], [], now=0.0)
    index.update("n-asia-1", "asia", 1, ["bo"], [], now=0.0)
    assert [i.region for i in index.where("bo")] == ["asia", "us-east"]
    # A snapshot of a known instance reports the difference: bo is still on asia.
    assert index.snapshot("n-us-1", "us-east", 2, ["cy"], now=1.0) == (["cy"], ["ann"])
    assert index.online("bo") and not index.online("ann")


def test_a_silent_instance_is_dropped_and_its_return_is_news() -> None:
    index = RemoteIndex()
    index.snapshot("n-us-1", "us-east", 1, ["ann", "bo"], now=0.0)
    index.update("n-asia-1", "asia", 1, ["bo"], [], now=5.0)
    assert index.expire(cutoff=3.0) == ["ann"]  # bo is still online in asia
    assert index.heartbeat("n-us-1", "us-east", 1, now=6.0), "unknown now: ask for a resync"
    assert index.snapshot("n-us-1", "us-east", 4, ["bo", "di"], now=6.0) == (["di"], [])
    assert not index.heartbeat("n-us-1", "us-east", 4, now=7.0)
