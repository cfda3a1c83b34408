"""SourceMonitor: a source that stalls behind its origin gets its consumer reset (no server)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import pytest
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout

from mesh.bus.sourcing import SourceMonitor
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
            body = {"type": "io.nats.jetstream.api.v1.consumer_reset_response"}
        return _Reply(json.dumps(body).encode())


def _monitor(api: _FakeApi, stall_after: float) -> SourceMonitor:
    return SourceMonitor(cast(NATS, api), "ALL_EU", stall_after=stall_after)


async def test_a_stalled_source_is_reset_to_the_next_sequence_it_needs() -> None:
    api = _FakeApi({"EVENTS_US_EAST": 4, "EVENTS_EU": 9, "EVENTS_ASIA": 7},
                   {"EVENTS_US_EAST": 4, "EVENTS_EU": 9, "EVENTS_ASIA": 120})  # fmt: skip
    monitor = _monitor(api, stall_after=0.0)
    assert await monitor.check() == ["EVENTS_ASIA"]
    assert api.requests == [("$JS.API.CONSUMER.RESET.EVENTS_ASIA.all-eu", {"seq": 8})]
    assert monitor.resets == 1


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
        assert api.requests == [("$JS.API.CONSUMER.RESET.EVENTS_US_EAST.all-eu", {"seq": 1})]
