"""PullConsumer's ordering rules, against the in-memory bus (no NATS).

JetStream is played by the test: it decides which stream messages a pull request
gets and in which order (new ones before redeliveries, as after a consumer crash).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from mesh.bus.eventbus import PullConsumer
from mesh.bus.interfaces import StreamMsg
from mesh.bus.subjects import EVENTS_STREAM
from tests.bus.fakes import Consumer, FakeBus
from tests.helpers import eventually

DURABLE = "c"


class Recorder:
    """The consumer's handler: records batches, and a trace line before returning."""

    def __init__(self, bus: FakeBus, stream: str = EVENTS_STREAM) -> None:
        self.bus = bus
        self.stream = stream
        self.batches: list[list[int]] = []
        self.subjects: list[str] = []
        self.fail_next = False
        self.floor_seen: list[int] = []

    async def __call__(self, msgs: list[StreamMsg]) -> None:
        seqs = [m.stream_seq for m in msgs]
        self.floor_seen.append(self.bus.consumers[(self.stream, DURABLE)].ack_floor)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("handler failed")
        self.batches.append(seqs)
        self.subjects += [m.subject for m in msgs]
        assert all(m.data == f"m{m.stream_seq}".encode() for m in msgs)
        self.bus.log.append(f"handled {seqs}")

    @property
    def handed(self) -> list[int]:
        return [s for b in self.batches for s in b]


@pytest.fixture
async def bus() -> AsyncIterator[FakeBus]:
    bus = FakeBus()
    for i in range(1, 11):
        await bus.publish_event(f"chatmesh.evt.ch.ch_{i % 2}", f"m{i}".encode(), f"id{i}")
    bus.log.clear()
    yield bus
    await bus.close()


class Running:
    def __init__(
        self, bus: FakeBus, handler: Recorder, floor: int, *, origin: str | None = None
    ) -> None:
        bus.consumers[(handler.stream, DURABLE)] = Consumer(
            ConsumerConfig(durable_name=DURABLE), ack_floor=floor
        )
        self.bus = bus
        self.consumer = PullConsumer(
            bus, bus, handler.stream, DURABLE, handler, batch=8, idle_heartbeat=60, origin=origin
        )
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        pulls = len(self.bus.pulls)
        self.task = asyncio.create_task(self.consumer.run())
        await until(lambda: len(self.bus.pulls) > pulls, "a pull request")

    async def stop(self) -> None:
        self.consumer.stop()
        assert self.task is not None
        await self.task


async def until(cond: Callable[[], object], what: str) -> None:
    async def check() -> bool:
        return bool(cond())

    await eventually(check, timeout=5, what=what)


@pytest.fixture
def recorder(bus: FakeBus) -> Recorder:
    return Recorder(bus)


async def test_a_batch_is_handed_over_in_stream_order_and_acked_once_after_the_handler(
    bus: FakeBus, recorder: Recorder
) -> None:
    run = Running(bus, recorder, floor=0)
    await run.start()
    request = bus.pulls[0].request
    assert request == {"batch": 8, "expires": 30 * 10**9, "idle_heartbeat": 60 * 10**9}

    await bus.deliver(EVENTS_STREAM, DURABLE, [3, 1, 2])
    await until(lambda: "ack 3" in bus.log, "the ack")
    await run.stop()

    assert recorder.batches == [[1, 2, 3]]
    assert recorder.subjects == [
        "chatmesh.evt.ch.ch_1",
        "chatmesh.evt.ch.ch_0",
        "chatmesh.evt.ch.ch_1",
    ]
    # ack-all on the newest, only once the handler returned (the floor was still 0 inside it).
    assert bus.log == ["handled [1, 2, 3]", "ack 3"]
    assert recorder.floor_seen == [0]
    assert bus.consumers[(EVENTS_STREAM, DURABLE)].ack_floor == 3
    assert bus.direct_gets == [], "nothing was missing: no direct reads"


async def test_redeliveries_at_or_below_the_last_handed_seq_are_dropped(
    bus: FakeBus, recorder: Recorder
) -> None:
    run = Running(bus, recorder, floor=0)
    await run.start()
    await bus.deliver(EVENTS_STREAM, DURABLE, [1, 2])
    await until(lambda: recorder.handed == [1, 2], "1-2")
    await bus.deliver(EVENTS_STREAM, DURABLE, [1, 2, 3], delivered=2)
    await until(lambda: "ack 3" in bus.log, "3")
    await bus.deliver(EVENTS_STREAM, DURABLE, [2], delivered=3)
    await until(lambda: bus.log[-1] == "ack 2", "the ack of the lone redelivery")
    await run.stop()

    assert recorder.batches == [[1, 2], [3]]


async def test_a_message_above_the_expected_seq_reads_the_hole_from_the_stream(
    bus: FakeBus, recorder: Recorder
) -> None:
    # After a crash: 1-2 acknowledged, 3-4 handed to the old process but never acked.
    # JetStream sends the new 5-6 first and redelivers 3-4 only after ack_wait.
    run = Running(bus, recorder, floor=2)
    await run.start()
    await bus.deliver(EVENTS_STREAM, DURABLE, [5, 6])
    await until(lambda: "ack 6" in bus.log, "5-6")
    await bus.deliver(EVENTS_STREAM, DURABLE, [3, 4], delivered=2)
    await until(lambda: bus.log[-1] == "ack 4", "the redelivery's ack")
    await run.stop()

    assert recorder.batches == [[3, 4, 5, 6]]
    assert bus.direct_gets == [(EVENTS_STREAM, 3), (EVENTS_STREAM, 4)]
    # The ack-all of 6 came after 3-6 were handled, so it acknowledged nothing unprocessed.
    assert bus.log[:2] == ["handled [3, 4, 5, 6]", "ack 6"]


async def test_a_hole_the_stream_no_longer_holds_is_skipped(
    bus: FakeBus, recorder: Recorder
) -> None:
    del bus.streams[EVENTS_STREAM].messages[4]  # expired or deleted
    run = Running(bus, recorder, floor=2)
    await run.start()
    await bus.deliver(EVENTS_STREAM, DURABLE, [6])
    await until(lambda: "ack 6" in bus.log, "6")
    await run.stop()

    assert recorder.batches == [[3, 5, 6]]
    # Absent by the stream's leader too (not a lagging replica's answer): left out.
    assert bus.leader_gets == [(EVENTS_STREAM, 4)]


MIRROR = "EVENTS_EU"


def _mirror_with_a_hole(bus: FakeBus, hole: set[int]) -> Recorder:
    """A mirror of EVENTS (seqs as in EVENTS) lacking ``hole``, as nats-server can leave one."""
    bus.add_stream(MIRROR, [])
    mirror = bus.streams[MIRROR]
    for seq, m in bus.streams[EVENTS_STREAM].messages.items():
        if seq not in hole:
            mirror.messages[seq] = m
    mirror.last_seq = bus.streams[EVENTS_STREAM].last_seq
    return Recorder(bus, MIRROR)


async def test_a_hole_in_a_mirror_is_read_from_its_origins_leader(bus: FakeBus) -> None:
    # After a WAN cut the mirror's consumer delivered 8 after 2: 3-7 are a hole in
    # the mirror (4 and 6 not even in the mirror) that EVENTS holds.
    recorder = _mirror_with_a_hole(bus, {4, 6})
    run = Running(bus, recorder, floor=2, origin=EVENTS_STREAM)
    await run.start()
    await bus.deliver(MIRROR, DURABLE, [8])
    await until(lambda: "ack 8" in bus.log, "8")
    await run.stop()

    assert recorder.batches == [[3, 4, 5, 6, 7, 8]]
    assert bus.direct_gets == [(MIRROR, s) for s in range(3, 8)]
    assert bus.leader_gets == [(EVENTS_STREAM, 4), (EVENTS_STREAM, 6)]
    assert run.consumer.holes_filled == 2


async def test_a_hole_is_never_skipped_while_the_origin_cannot_answer(bus: FakeBus) -> None:
    recorder = _mirror_with_a_hole(bus, {4})
    bus.fail_leader_gets = 3  # the gateway is cut: three reads time out
    run = Running(bus, recorder, floor=2, origin=EVENTS_STREAM)
    await run.start()
    await bus.deliver(MIRROR, DURABLE, [5])
    await until(lambda: "ack 5" in bus.log, "5")
    await run.stop()

    assert recorder.batches == [[3, 4, 5]]
    assert bus.leader_gets == [(EVENTS_STREAM, 4)] * 4


async def test_stopping_while_a_hole_cannot_be_read_hands_over_and_acks_nothing(
    bus: FakeBus,
) -> None:
    recorder = _mirror_with_a_hole(bus, {4})
    bus.fail_leader_gets = 10**9
    run = Running(bus, recorder, floor=2, origin=EVENTS_STREAM)
    await run.start()
    await bus.deliver(MIRROR, DURABLE, [5])
    await until(lambda: len(bus.leader_gets) >= 2, "retries of the hole")
    await run.stop()

    assert recorder.batches == []
    assert not any(line.startswith("ack") for line in bus.log)


async def test_a_large_hole_is_read_from_the_streams_first_seq(recorder: Recorder) -> None:
    bus = recorder.bus
    stream = bus.streams[EVENTS_STREAM]
    for i in range(11, 1501):
        await bus.publish_event("chatmesh.evt.ch.ch_x", f"m{i}".encode(), f"id{i}")
    for seq in range(1, 1401):  # aged out
        del stream.messages[seq]
    run = Running(bus, recorder, floor=0)
    await run.start()
    await bus.deliver(EVENTS_STREAM, DURABLE, [1500])
    await until(lambda: "ack 1500" in bus.log, "1500")
    await run.stop()

    assert recorder.handed == list(range(1401, 1501))
    assert bus.direct_gets[0] == (EVENTS_STREAM, 1401) and len(bus.direct_gets) == 99


async def test_a_failing_handler_leaves_the_batch_unacknowledged_for_the_next_run(
    bus: FakeBus, recorder: Recorder
) -> None:
    recorder.fail_next = True
    run = Running(bus, recorder, floor=0)
    await run.start()
    await bus.deliver(EVENTS_STREAM, DURABLE, [1, 2])
    assert run.task is not None
    with pytest.raises(RuntimeError, match="handler failed"):
        await asyncio.wait_for(run.task, 5)
    assert not any(line.startswith("ack") for line in bus.log)
    assert bus.consumers[(EVENTS_STREAM, DURABLE)].ack_floor == 0

    await run.start()  # the service restarts the consumer; JetStream redelivers after ack_wait
    await bus.deliver(EVENTS_STREAM, DURABLE, [1, 2], delivered=2)
    await until(lambda: "ack 2" in bus.log, "the redelivered batch")
    await run.stop()
    assert recorder.batches == [[1, 2]]


async def test_heartbeats_keep_the_request_and_an_ended_request_is_reissued(
    bus: FakeBus, recorder: Recorder
) -> None:
    run = Running(bus, recorder, floor=0)
    await run.start()
    await bus.deliver_status(EVENTS_STREAM, DURABLE, "100")  # idle heartbeat
    await bus.deliver(EVENTS_STREAM, DURABLE, [1])
    await until(lambda: "ack 1" in bus.log, "1")
    assert len(bus.pulls) == 1, "an idle heartbeat must not end the pull request"

    await bus.deliver_status(EVENTS_STREAM, DURABLE, "408")  # request expired
    await until(lambda: len(bus.pulls) == 2, "a new pull request")
    await bus.deliver(EVENTS_STREAM, DURABLE, [2])
    await until(lambda: "ack 2" in bus.log, "2")
    await run.stop()
    assert recorder.batches == [[1], [2]] and len(bus.pulls) == 2


async def test_ensure_creates_the_durable_consumer_unless_it_exists(recorder: Recorder) -> None:
    bus = recorder.bus
    consumer = PullConsumer(bus, bus, EVENTS_STREAM, DURABLE, recorder, ack_wait=7)
    with pytest.raises(LookupError):
        await consumer.run()
    await consumer.ensure()
    created = bus.consumers[(EVENTS_STREAM, DURABLE)]
    config = created.config.as_dict()
    assert (config["durable_name"], config["ack_policy"], config["deliver_policy"]) == (
        DURABLE,
        AckPolicy.ALL,
        DeliverPolicy.ALL,
    )
    assert config["ack_wait"] == 7 * 10**9 and config["max_deliver"] == -1
    created.ack_floor = 5
    await consumer.ensure()
    assert bus.consumers[(EVENTS_STREAM, DURABLE)] is created
