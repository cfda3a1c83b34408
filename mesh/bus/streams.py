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
    "ensure_mirror_consumer",
    "ensure_stream",
    "ensure_streams",
    "events_stream_config",
    "mirror_consumer_config",
    "mirror_consumer_name",
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


def mirror_consumer_name(region: str) -> str:
    """Name of the durable consumer on EVENTS that feeds ``region``'s mirror."""
    return f"mirror-{region}"


def mirror_consumer_config(mirror: dict[str, Any]) -> dict[str, Any]:
    """The durable push consumer on EVENTS a mirror config names (JSON API shape).

    What nats-server (>= 2.15.1, API level 4) requires of a mirror's durable
    consumer: a push consumer (``deliver_subject``) with ``ack_policy:
    flow_control``, flow control on, a 1 s idle heartbeat, ``max_ack_pending`` > 0
    and no ``ack_wait``. Why a durable one at all: ``docs/replication.md``.
    """
    consumer = mirror["mirror"]["consumer"]
    return {
        "durable_name": consumer["name"],
        "description": f"feeds the mirror {mirror['name']}",
        "deliver_subject": consumer["deliver_subject"],
        "deliver_policy": "all",
        "ack_policy": "flow_control",
        "flow_control": True,
        "idle_heartbeat": 10**9,
        "max_ack_pending": 10_000,
        "num_replicas": mirror["num_replicas"],
    }


def mirror_stream_config(topology: Topology, region: str) -> dict[str, Any]:
    """JetStream config of a secondary region's mirror of EVENTS.

    The mirror reads EVENTS through a durable consumer of its own
    (:func:`mirror_consumer_config`, created first by :func:`ensure_stream`)
    instead of an ephemeral one the server creates: after a WAN cut the server
    only has to reset a durable consumer (5 s wait) rather than create one (30 s
    wait, then 10 s x failures of backoff), so the mirror catches up seconds
    after the link heals instead of 35-100+ s.
    """
    n = topology.nats
    return {
        "name": mirror_stream_name(region),
        "mirror": {
            "name": EVENTS_STREAM,
            "consumer": {
                "name": mirror_consumer_name(region),
                "deliver_subject": Subjects.mirror_delivery(region),
            },
        },
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
    mirror = config.get("mirror") or {}
    if mirror.get("consumer"):
        await ensure_mirror_consumer(nc, config, timeout=timeout)
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
                try:
                    info = await jsm.update_stream(stream_config)
                except BadRequestError as upd:
                    if upd.err_code != 10055:  # a mirror's source cannot change
                        raise
                    logger.warning(
                        "stream %s exists with another mirror configuration, which nats-server "
                        "cannot update; delete it to get %s (docs/replication.md)",
                        name, mirror,
                    )  # fmt: skip
                    info = await jsm.stream_info(name)
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


async def ensure_mirror_consumer(
    nc: NATS, mirror: dict[str, Any], *, timeout: float = 30.0
) -> dict[str, Any]:
    """Creates the durable consumer on EVENTS that ``mirror`` names (idempotent).

    Sent as a raw JSON API request: nats-py's ``ConsumerConfig`` has no
    ``flow_control`` ack policy.

    Returns:
        The consumer info (JSON API shape).

    Raises:
        TimeoutError: Not created within ``timeout`` seconds.
    """
    config = mirror_consumer_config(mirror)
    source = mirror["mirror"]["name"]
    subject = f"$JS.API.CONSUMER.DURABLE.CREATE.{source}.{config['durable_name']}"
    body = json.dumps({"stream_name": source, "config": config}).encode()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.05
    while True:
        problem: object
        try:
            reply = json.loads((await nc.request(subject, body, timeout=5.0)).data)
            if "error" not in reply:
                logger.info("mirror consumer %s on %s ready", config["durable_name"], source)
                return dict(reply)
            problem = reply["error"]
        except Exception as exc:  # noqa: BLE001 - no meta leader yet, no responders ...
            problem = exc
        if loop.time() >= deadline:
            raise TimeoutError(f"consumer {config['durable_name']} not ready: {problem!r}")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)


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
