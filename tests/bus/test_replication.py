"""Durable mirrors and the replication monitor against a real nats-server.

A mirror of EVENTS reading through its own durable flow-control consumer (what
``mirror_stream_config`` asks for) keeps up; when that consumer disappears the
mirror stops moving while EVENTS goes on, the monitor sees it lagging, then
stalled, re-creates the consumer, and the mirror catches up.
Order of states is asserted, never how long anything took.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh.bus.replication import HOLES, REPAIRS, MirrorHealth, ReplicationMonitor, assess
from mesh.bus.streams import ensure_stream
from mesh.bus.subjects import EVENTS_STREAM, Subjects
from mesh.harness.supervisor import Mesh
from mesh.topology import load
from tests.helpers import eventually

pytestmark = pytest.mark.mesh

MIRROR = "EVENTS_T"


@pytest.fixture(scope="module")
async def single(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    run_dir: Path = tmp_path_factory.mktemp("replication")
    async with Mesh(load("single"), run_dir) as mesh:
        yield mesh


def test_assessment_states() -> None:
    assert assess(MIRROR, source_last=5, mirror_last=5, still_for=99).state == "ok"
    assert assess(MIRROR, source_last=9, mirror_last=5, still_for=1).state == "lagging"
    assert assess(MIRROR, source_last=9, mirror_last=5, still_for=10).state == "stalled"
    assert assess(MIRROR, source_last=-1, mirror_last=5, still_for=0).state == "unknown"
    assert assess(MIRROR, source_last=9, mirror_last=5, still_for=0).lag == 4


async def test_a_stalled_durable_mirror_is_detected_and_repaired(single: Mesh) -> None:
    primary = single.topology.primary
    admin = await single.nats_client(primary, user="admin")
    await ensure_stream(admin, {
        "name": MIRROR, "storage": "file", "num_replicas": 1,
        "mirror": {"name": EVENTS_STREAM,
                   "consumer": {"name": "mirror-t", "deliver_subject": "chatmesh.mirror.t"}},
    })  # fmt: skip
    js = admin.jetstream()
    subject = Subjects.channel_events("ch_replication")

    async def publish(n: int) -> None:
        for _ in range(n):
            await js.publish(subject, b"x", stream=EVENTS_STREAM)

    # A test mirror in one region, so the monitor runs as admin here; that a secondary's
    # worker user may do exactly this is tests/harness/test_infra_security.py's.
    monitor = ReplicationMonitor(admin, MIRROR, interval=0.2)
    await publish(5)

    async def state() -> MirrorHealth | None:
        health = await monitor.sample()
        return health if health.state == "ok" else None

    await eventually(state, timeout=30, interval=0.2, what="the mirror caught up")
    info = json.loads((await admin.request(f"$JS.API.STREAM.INFO.{MIRROR}", b"")).data)
    assert info["config"]["mirror"]["consumer"]["name"] == "mirror-t"

    repairs_before = REPAIRS.labels(MIRROR, "consumer")._value.get()
    reply = await admin.request(f"$JS.API.CONSUMER.DELETE.{EVENTS_STREAM}.mirror-t", b"")
    assert json.loads(reply.data).get("success") is True
    seen: list[str] = []

    async def recovered() -> bool:
        await publish(2)
        health = await monitor.sample()
        if not seen or seen[-1] != health.state:
            seen.append(health.state)
        return "stalled" in seen and health.state == "ok"

    await eventually(recovered, timeout=90, interval=0.5, what="the stall and its repair")
    assert seen[0] in ("ok", "lagging") and "lagging" in seen
    assert seen.index("lagging") < seen.index("stalled") < len(seen) - 1
    assert REPAIRS.labels(MIRROR, "consumer")._value.get() > repairs_before


async def test_a_hole_in_the_mirror_is_reported(single: Mesh) -> None:
    admin = await single.nats_client(single.topology.primary, user="admin")
    mirror = "EVENTS_HOLES"
    await ensure_stream(admin, {
        "name": mirror, "storage": "file", "num_replicas": 1,
        "mirror": {"name": EVENTS_STREAM,
                   "consumer": {"name": "mirror-holes", "deliver_subject": "chatmesh.mirror.holes"}},
    })  # fmt: skip
    js = admin.jetstream()
    acks = [await js.publish(Subjects.channel_events("ch_holes"), b"x", stream=EVENTS_STREAM)
            for _ in range(3)]  # fmt: skip
    monitor = ReplicationMonitor(admin, mirror, interval=0.2, repair=False)

    async def caught_up() -> bool:
        return (await monitor.sample()).state == "ok"

    await eventually(caught_up, timeout=30, interval=0.2, what="the mirror caught up")
    assert monitor.holes == 0
    await admin.jsm().delete_msg(mirror, acks[1].seq)
    await monitor.sample()
    assert monitor.holes == 1
    assert HOLES.labels(mirror)._value.get() == 1
