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
