"""JetStream stream definitions derived from the topology, and creating them.

:func:`events_stream_config` and :func:`mirror_stream_config` are pure (JSON API
shapes); :func:`ensure_stream` creates or updates one stream idempotently, and
``python -m mesh.bus.streams FILE`` creates every stream of a JSON list (the
compose ``nats-init`` job).

Example:
    >>> from mesh.topology import load
    >>> events_stream_config(load("dev"))["placement"]
    {'tags': ['region:us-east']}
    >>> auto = load("three-regions-autonomous")
    >>> [c["name"] for c in all_stream_configs(auto)]
    ['EVENTS_US_EAST', 'EVENTS_EU', 'EVENTS_ASIA', 'ALL_US_EAST', 'ALL_EU', 'ALL_ASIA']
    >>> [src["name"] for src in aggregate_stream_config(auto, "eu")["sources"]]
    ['EVENTS_US_EAST', 'EVENTS_EU', 'EVENTS_ASIA']
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
from mesh.bus.subjects import (
    EVENTS_STREAM,
    Subjects,
    all_stream_name,
    mirror_stream_name,
    origin_stream_name,
)
from mesh.topology import Topology

__all__ = [
    "AGGREGATE_DUPLICATE_WINDOW_NS",
    "aggregate_stream_config",
    "all_stream_configs",
    "ensure_mirror_consumer",
    "ensure_stream",
    "ensure_streams",
    "events_stream_config",
    "mirror_consumer_config",
    "mirror_consumer_name",
    "mirror_stream_config",
    "origin_stream_config",
    "parse_duration_ns",
    "parse_size",
    "source_consumer_configs",
    "source_consumer_name",
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
    return _event_log_config(topology, EVENTS_STREAM, Subjects.EVENTS_ALL, topology.primary)


def _event_log_config(topology: Topology, name: str, subjects: str, region: str) -> dict[str, Any]:
    """A durable event log (EVENTS, or an ``EVENTS_<REGION>``) placed in ``region``."""
    n = topology.nats
    config: dict[str, Any] = {
        "name": name,
        "subjects": [subjects],
        "retention": "limits",
        "storage": "file",
        "num_replicas": n.events_replicas,
        "max_age": parse_duration_ns(n.events_max_age),
        "duplicate_window": parse_duration_ns(n.duplicate_window),
        "discard": "old",
        "allow_direct": True,
        "placement": {"tags": [f"region:{region}"]},
    }
    return _placed(topology, config)


def _placed(topology: Topology, config: dict[str, Any]) -> dict[str, Any]:
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
    return _feeding_consumer_config(consumer, f"feeds the mirror {mirror['name']}",
                                    mirror["num_replicas"])  # fmt: skip


def _feeding_consumer_config(
    consumer: dict[str, Any], description: str, replicas: int
) -> dict[str, Any]:
    return {
        "durable_name": consumer["name"],
        "description": description,
        "deliver_subject": consumer["deliver_subject"],
        "deliver_policy": "all",
        "ack_policy": "flow_control",
        "flow_control": True,
        "idle_heartbeat": 10**9,
        "max_ack_pending": 10_000,
        "num_replicas": replicas,
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


AGGREGATE_DUPLICATE_WINDOW_NS = 100 * 10**6
"""De-duplication window of every ``ALL_<REGION>``: 100 ms, the least nats-server accepts.

nats-server de-duplicates *sourced* messages by their ``Nats-Msg-Id`` too
(measured with 2.15.1: two origins' messages with one id, the second never
reached the aggregate). A source never needs it (it resumes after the last
source sequence it stored), and across origins it would be wrong: ADR-026 keeps
every region's copy of a message retried through another region and lets the
convergence rules pick one, identically everywhere. So the window is as short as
the server allows, and ids must differ between origins (a ``Nats-Msg-Id`` that
names the writing region) for copies that arrive together, e.g. after a heal.
"""


def origin_stream_config(topology: Topology, region: str) -> dict[str, Any]:
    """Every-region mode: ``region``'s own events, ``EVENTS_<REGION>``, placed in ``region``.

    The Command Service of ``region`` writes it on ``chatmesh.evt.<region>.>``; it has
    EVENTS's retention and de-duplication (a client's retry through the same region
    is a no-op).
    """
    return _event_log_config(
        topology, origin_stream_name(region), Subjects.origin_events_all(region), region
    )


def source_consumer_name(region: str) -> str:
    """Name of the durable consumer on each ``EVENTS_<ORIGIN>`` that feeds ``region``'s ``ALL_``."""
    return f"all-{region}"


def aggregate_stream_config(topology: Topology, region: str) -> dict[str, Any]:
    """Every-region mode: ``ALL_<REGION>``, placed in ``region``, sourcing every ``EVENTS_<R>``.

    Its own region's stream locally, the others across the gateways. As the
    primary mode's mirrors do, each source reads through a durable push consumer
    of its own on the origin stream (:func:`source_consumer_configs`, created first
    by :func:`ensure_stream`), so after a WAN cut the server only resets that
    consumer, and the source's position survives; sources resume by themselves
    once the link heals. The region's worker, Fan-Out and Notification read it.
    """
    n = topology.nats
    config: dict[str, Any] = {
        "name": all_stream_name(region),
        "sources": [
            {
                "name": origin_stream_name(origin),
                "consumer": {
                    "name": source_consumer_name(region),
                    "deliver_subject": Subjects.source_delivery(region, origin),
                },
            }
            for origin in topology.region_names
        ],
        "retention": "limits",
        "storage": "file",
        "num_replicas": n.events_replicas,
        "max_age": parse_duration_ns(n.events_max_age),
        "duplicate_window": AGGREGATE_DUPLICATE_WINDOW_NS,
        "discard": "old",
        "allow_direct": True,
        "placement": {"tags": [f"region:{region}"]},
    }
    return _placed(topology, config)


def source_consumer_configs(config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The durable push consumers a stream's ``sources`` name, as (origin stream, config).

    The same shape nats-server requires of a mirror's consumer (:func:`mirror_consumer_config`).
    """
    return [
        (
            source["name"],
            _feeding_consumer_config(
                source["consumer"], f"feeds {config['name']}", config["num_replicas"]
            ),
        )
        for source in config.get("sources") or []
        if source.get("consumer")
    ]


def all_stream_configs(topology: Topology) -> list[dict[str, Any]]:
    """A topology's streams in creation order.

    Primary mode: EVENTS first (the mirrors need it), then every secondary's
    mirror. Every-region mode: each region's ``EVENTS_<REGION>``, then each
    region's ``ALL_<REGION>`` (the sources need their origins).
    """
    if topology.every_region:
        names = topology.region_names
        return [origin_stream_config(topology, r) for r in names] + [
            aggregate_stream_config(topology, r) for r in names
        ]
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
    for source, consumer in source_consumer_configs(config):
        await _ensure_feeding_consumer(nc, source, consumer, timeout=timeout)
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
    return await _ensure_feeding_consumer(nc, mirror["mirror"]["name"], config, timeout=timeout)


async def _ensure_feeding_consumer(
    nc: NATS, source: str, config: dict[str, Any], *, timeout: float
) -> dict[str, Any]:
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
                logger.info("feeding consumer %s on %s ready", config["durable_name"], source)
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
