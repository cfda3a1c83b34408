"""JetStream stream definitions derived from the topology, and creating them.

:func:`events_stream_config` and :func:`mirror_stream_config` are pure (JSON API
shapes); :func:`ensure_stream` creates or updates one stream idempotently, and
``python -m mesh.bus.streams FILE`` creates every stream of a JSON list (the
compose ``nats-init`` job).

Example:
    >>> from mesh.topology import load
    >>> events_stream_config(load("dev"))["placement"]
    {'tags': ['region:us-east']}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig, StreamInfo
from nats.js.errors import BadRequestError

from mesh.bus.connection import connect
from mesh.bus.subjects import EVENTS_STREAM, Subjects, mirror_stream_name
from mesh.topology import Topology

__all__ = [
    "all_stream_configs",
    "ensure_stream",
    "ensure_streams",
    "events_stream_config",
    "mirror_stream_config",
    "parse_duration_ns",
    "parse_size",
]

logger = logging.getLogger(__name__)

_SIZE_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
_DUR_UNITS = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def parse_size(text: str) -> int:
    """``"256MB"`` -> bytes."""
    m = re.fullmatch(r"(\d+)(B|KB|MB|GB|TB)", text)
    if not m:
        raise ValueError(f"bad size {text!r}")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def parse_duration_ns(text: str) -> int:
    """``"10m"`` -> nanoseconds."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    if not m:
        raise ValueError(f"bad duration {text!r}")
    return int(m.group(1)) * _DUR_UNITS[m.group(2)]


def events_stream_config(topology: Topology) -> dict[str, Any]:
    """JetStream config (JSON API shape) of the EVENTS stream, placed in the primary."""
    n = topology.nats
    config: dict[str, Any] = {
        "name": EVENTS_STREAM,
        "subjects": [Subjects.EVENTS_ALL],
        "retention": "limits",
        "storage": "file",
        "num_replicas": n.events_replicas,
        "max_age": parse_duration_ns(n.events_max_age),
        "duplicate_window": parse_duration_ns(n.duplicate_window),
        "discard": "old",
        "allow_direct": True,
        "placement": {"tags": [f"region:{topology.primary}"]},
    }
    if len(topology.regions) == 1 and topology.region(topology.primary).nats_nodes == 1:
        del config["placement"]  # a standalone server has nowhere else to place it
    return config


def mirror_stream_config(topology: Topology, region: str) -> dict[str, Any]:
    """JetStream config of a secondary region's mirror of EVENTS."""
    n = topology.nats
    return {
        "name": mirror_stream_name(region),
        "mirror": {"name": EVENTS_STREAM},
        "retention": "limits",
        "storage": "file",
        "num_replicas": n.events_replicas,
        "max_age": parse_duration_ns(n.events_max_age),
        "discard": "old",
        "allow_direct": True,
        "mirror_direct": True,
        "placement": {"tags": [f"region:{region}"]},
    }


def all_stream_configs(topology: Topology) -> list[dict[str, Any]]:
    """EVENTS first (the mirrors need it), then every secondary's mirror."""
    return [events_stream_config(topology)] + [
        mirror_stream_config(topology, r) for r in topology.secondaries
    ]


async def ensure_stream(nc: NATS, config: dict[str, Any], *, timeout: float = 30.0) -> StreamInfo:
    """Creates a stream, or updates it to ``config`` if it exists (idempotent).

    Retries while JetStream has no meta leader yet or the placement's peers are
    still coming up.

    Args:
        nc: A client whose user may manage streams.
        config: The stream's configuration in the JSON API shape (as
            :func:`events_stream_config` returns it).
        timeout: Seconds to keep retrying.

    Returns:
        The stream info.

    Raises:
        TimeoutError: Not created within ``timeout`` seconds.
    """
    name = config["name"]
    jsm = nc.jsm()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.05
    while True:
        try:
            # from_response parses the JSON shape (nanoseconds, nested
            # placement/mirror); it edits nested dicts, hence the copy.
            stream_config = StreamConfig.from_response(json.loads(json.dumps(config)))
            try:
                info = await jsm.add_stream(stream_config)
            except BadRequestError as exc:
                if exc.err_code != 10058:  # name in use with a different configuration
                    raise
                info = await jsm.update_stream(stream_config)
            break
        except Exception as exc:
            if loop.time() >= deadline:
                raise TimeoutError(
                    f"stream {name} not ready after {timeout:.1f}s: {exc!r}"
                ) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)
    logger.info("stream %s ready (cluster %s)", name, info.cluster.name if info.cluster else None)
    return info


async def ensure_streams(
    configs: list[dict[str, Any]], *, seconds_per_stream: float = 120.0
) -> None:
    """Creates or updates JetStream streams, in order (idempotent).

    Connects with ``CHATMESH_NATS_SERVERS``/``CHATMESH_NATS_USER``/
    ``CHATMESH_NATS_PASSWORD`` (and ``CHATMESH_NATS_TLS_CA`` for TLS); retries each stream until its placement's
    servers are up or ``seconds_per_stream`` pass.

    Raises:
        TimeoutError: A stream could not be created in time.
    """
    servers = [s for s in os.environ["CHATMESH_NATS_SERVERS"].split(",") if s]
    nc = await connect(
        servers,
        name="nats-init",
        user=os.environ.get("CHATMESH_NATS_USER", "admin"),
        password=os.environ["CHATMESH_NATS_PASSWORD"],
        tls_ca=os.environ.get("CHATMESH_NATS_TLS_CA", ""),
    )
    try:
        for config in configs:
            await ensure_stream(nc, config, timeout=seconds_per_stream)
    finally:
        await nc.drain()


def main(argv: list[str] | None = None) -> int:
    """``python -m mesh.bus.streams FILE``: create the streams listed in FILE (JSON)."""
    parser = argparse.ArgumentParser(prog="python -m mesh.bus.streams")
    parser.add_argument("streams_file", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(ensure_streams(json.loads(args.streams_file.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
