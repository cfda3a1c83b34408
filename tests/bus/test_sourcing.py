"""SourceMonitor: a source that stalls behind its origin is restarted (no server)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import pytest
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout

from mesh.bus.sourcing import RESTARTING, SourceMonitor
from mesh.bus.streams import aggregate_stream_config
from mesh.topology import load


@dataclass
class _Reply:
    data: bytes


class _FakeApi:
    """Answers STREAM.INFO from canned states and records every other request."""

    def __init__(self, stored: dict[str, int], origin_last: dict[str, int]) -> None:
        self.config = aggregate_stream_config(load("three-regions-autonomous"), "eu")
        self.stored = stored
        self.origin_last = origin_last
        self.unreachable: set[str] = set()
        self.requests: list[tuple[str, Any]] = []
        self.failing: set[str] = set()
        """Subjects answered with a JetStream error."""

    async def request(self, subject: str, payload: bytes, timeout: float) -> _Reply:
        body: dict[str, Any]
        if subject == "$JS.API.STREAM.INFO.ALL_EU":
            sources = [{"name": n, "lag": 0, "seq": s} for n, s in self.stored.items() if s]
            body = {"config": self.config, "sources": sources, "state": {}}
        elif subject.startswith("$JS.API.STREAM.INFO."):
            name = subject.rsplit(".", 1)[1]
            if name in self.unreachable:
                raise NatsTimeout
            body = {"state": {"last_seq": self.origin_last[name]}}
        else:
            self.requests.append((subject, json.loads(payload) if payload else None))
            if subject in self.failing:
                body = {
                    "error": {
                        "code": 503,
                        "description": "JetStream system temporarily unavailable",
                    }
                }
            elif subject.startswith("$JS.API.STREAM.UPDATE."):
                self.config = json.loads(payload)
                body = {"config": self.config}
            else:
                body = {"type": "io.nats.jetstream.api.v1.consumer_reset_response"}
        return _Reply(json.dumps(body).encode())


def _monitor(api: _FakeApi, stall_after: float) -> SourceMonitor:
    return SourceMonitor(cast(NATS, api), "ALL_EU", stall_after=stall_after)


def _sources(config: dict[str, Any]) -> list[str]:
    return [s["name"] for s in config["sources"]]


async def test_a_stalled_source_is_taken_out_reset_to_the_next_sequence_it_needs_and_put_back() -> (
    None
):
    api = _FakeApi({"EVENTS_US_EAST": 4, "EVENTS_EU": 9, "EVENTS_ASIA": 7},
                   {"EVENTS_US_EAST": 4, "EVENTS_EU": 9, "EVENTS_ASIA": 120})  # fmt: skip
    full = api.config
    monitor = _monitor(api, stall_after=0.0)
    assert await monitor.check() == ["EVENTS_ASIA"]
    # Nothing listens while the consumer's delivery restarts (a live source would
    # take the wrong message as the next one and skip the rest for good).
    (out, removed), reset, (back, restored) = api.requests
    assert out == back == "$JS.API.STREAM.UPDATE.ALL_EU"
    assert _sources(removed) == ["EVENTS_US_EAST", "EVENTS_EU"]
    assert {k: v for k, v in removed.items() if k not in ("sources", "metadata")} == {
        k: v for k, v in full.items() if k != "sources"
    }
    assert json.loads(removed["metadata"][RESTARTING]) == full["sources"][2]
    assert reset == ("$JS.API.CONSUMER.RESET.EVENTS_ASIA.all-eu", {"seq": 8})
    assert restored == {**full, "metadata": {}}
    assert monitor.resets == 1


async def test_a_source_a_restart_left_out_is_put_back_first_by_the_next_monitor() -> None:
    api = _FakeApi({"EVENTS_US_EAST": 4, "EVENTS_EU": 9, "EVENTS_ASIA": 7},
                   {"EVENTS_US_EAST": 4, "EVENTS_EU": 9, "EVENTS_ASIA": 120})  # fmt: skip
    full = api.config
    # The reset and the re-add both fail: the source stays out, remembered in the stream.
    api.failing.update({"$JS.API.CONSUMER.RESET.EVENTS_ASIA.all-eu"})
    monitor = _monitor(api, stall_after=0.0)
    real_update = monitor._update
    updates = 0

    async def second_update_fails(config: dict[str, Any]) -> None:
        nonlocal updates
        updates += 1
        if updates == 2:
            raise RuntimeError("JetStream system temporarily unavailable")
        await real_update(config)

    monitor._update = second_update_fails  # type: ignore[method-assign]
    assert await monitor.check() == []
    assert _sources(api.config) == ["EVENTS_US_EAST", "EVENTS_EU"]
    assert json.loads(api.config["metadata"][RESTARTING]) == full["sources"][2]
    # A new monitor (the worker restarted) puts it back before anything else.
    api.failing.clear()
    api.requests.clear()
    assert await _monitor(api, stall_after=0.0).check() == ["EVENTS_ASIA"]
    assert api.requests[0] == ("$JS.API.STREAM.UPDATE.ALL_EU", {**full, "metadata": {}})
    assert _sources(api.config) == _sources(full)
    assert RESTARTING not in api.config["metadata"]


async def test_a_caught_up_or_moving_source_is_left_alone() -> None:
    api = _FakeApi({"EVENTS_US_EAST": 4, "EVENTS_EU": 9, "EVENTS_ASIA": 7},
                   {"EVENTS_US_EAST": 4, "EVENTS_EU": 9, "EVENTS_ASIA": 120})  # fmt: skip
    monitor = _monitor(api, stall_after=3600.0)
    assert await monitor.check() == []  # behind, but not still for an hour
    api.stored["EVENTS_ASIA"] = 120
    assert await monitor.check() == []
    assert api.requests == []


@pytest.mark.parametrize("unreachable", [True, False])
async def test_an_origin_behind_a_cut_is_not_reset_until_it_answers(unreachable: bool) -> None:
    api = _FakeApi({"EVENTS_US_EAST": 0, "EVENTS_EU": 9, "EVENTS_ASIA": 7},
                   {"EVENTS_US_EAST": 3, "EVENTS_EU": 9, "EVENTS_ASIA": 7})  # fmt: skip
    if unreachable:
        api.unreachable.add("EVENTS_US_EAST")
    reset = await _monitor(api, stall_after=0.0).check()
    assert reset == ([] if unreachable else ["EVENTS_US_EAST"])
    if not unreachable:  # a source that stored nothing yet starts from 1
        assert ("$JS.API.CONSUMER.RESET.EVENTS_US_EAST.all-eu", {"seq": 1}) in api.requests
