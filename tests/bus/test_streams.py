"""The stream definitions survive nats-py's StreamConfig, which ``ensure_stream`` sends them through."""

from __future__ import annotations

import json

import pytest
from nats.js.api import StreamConfig

from mesh.bus.streams import all_stream_configs
from mesh.topology import load
from mesh.topology.model import builtin_names


@pytest.mark.parametrize("topology", builtin_names())
def test_every_field_of_every_stream_reaches_the_server_unchanged(topology: str) -> None:
    for config in all_stream_configs(load(topology)):
        sent = StreamConfig.from_response(json.loads(json.dumps(config))).as_dict()
        wire = json.loads(json.dumps(sent))  # enums as their JSON strings
        for key, value in config.items():
            assert key in wire, (config["name"], key)
            if key == "mirror":
                assert {k: v for k, v in wire[key].items() if v is not None} == value
            else:
                assert wire[key] == value, (config["name"], key)


def test_every_region_streams_are_placed_in_their_region_and_source_every_origin() -> None:
    from mesh.bus.streams import (
        AGGREGATE_DUPLICATE_WINDOW_NS,
        aggregate_stream_config,
        events_stream_config,
        origin_stream_config,
        source_consumer_configs,
    )

    topo = load("three-regions-autonomous")
    names = [c["name"] for c in all_stream_configs(topo)]
    assert "EVENTS" not in names
    assert names == ["EVENTS_US_EAST", "EVENTS_EU", "EVENTS_ASIA", "ALL_US_EAST", "ALL_EU",
                     "ALL_ASIA"]  # fmt: skip
    events = events_stream_config(load("three-regions"))
    own = origin_stream_config(topo, "asia")
    assert own["subjects"] == ["chatmesh.evt.asia.>"]
    assert own["placement"] == {"tags": ["region:asia"]}
    # The same retention and de-duplication as EVENTS.
    same = ("retention", "storage", "num_replicas", "max_age", "duplicate_window", "discard")
    assert {k: own[k] for k in same} == {k: events[k] for k in same}
    agg = aggregate_stream_config(topo, "eu")
    assert "subjects" not in agg and agg["placement"] == {"tags": ["region:eu"]}
    assert agg["duplicate_window"] == AGGREGATE_DUPLICATE_WINDOW_NS
    assert agg["sources"][2] == {
        "name": "EVENTS_ASIA",
        "consumer": {"name": "all-eu", "deliver_subject": "chatmesh.source.eu.asia"},
    }
    consumers = source_consumer_configs(agg)
    assert [(origin, c["durable_name"]) for origin, c in consumers] == [
        ("EVENTS_US_EAST", "all-eu"), ("EVENTS_EU", "all-eu"), ("EVENTS_ASIA", "all-eu")
    ]  # fmt: skip
    assert {c["ack_policy"] for _, c in consumers} == {"flow_control"}
