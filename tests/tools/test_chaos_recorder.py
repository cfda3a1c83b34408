"""The chaos recorder against a real grpc.aio server with a scripted NotificationService.

The subscriber's tap (a client interceptor on ChatClient's connection) must see what
the server sent, including what the client's de-duplication hides, and how each
call ended; the checker must then report it. No mesh is started.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from chatmesh.v1 import (
    events_pb2,
    message_pb2,
    notification_service_pb2 as npb,
    notification_service_pb2_grpc as ngrpc,
)
from mesh.client import ChatClient, RetryPolicy
from mesh.core.errors import Unavailable
from mesh.rpc.interceptors import ErrorMapper
from tests.helpers import eventually
from tools.chaos.checker import check
from tools.chaos.recording import (
    HistoryRow,
    Receipt,
    Recording,
    SubscriberLog,
    key_of,
    message_text,
)
from tools.chaos.workload import _channels_named, _Tap

CH = "ch_" + "c" * 26


def _event(seq: int) -> npb.SubscribeResponse:
    text = message_text("ada", seq, f"k{seq}")
    msg = message_pb2.Message(message_id=f"msg_{seq}", channel_id=CH, seq=seq, text=text)
    return npb.SubscribeResponse(
        event=events_pb2.Event(
            channel_id=CH, seq=seq, message_created=events_pb2.MessageCreated(message=msg)
        )
    )


class _Script(ngrpc.NotificationServiceServicer):
    """First call: a duplicate and a gap, then UNAVAILABLE; the resumed call: the rest."""

    def __init__(self) -> None:
        self.requests: list[dict[str, int]] = []
        self.second_done = asyncio.Event()

    async def Subscribe(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.requests.append(dict(request.resume_from))
        yield npb.SubscribeResponse(replay_complete=npb.ReplayComplete())
        if len(self.requests) == 1:
            for seq in (3, 4, 4, 6):
                yield _event(seq)
            raise Unavailable("SHUTTING_DOWN", "restarting")
        for seq in range(dict(request.resume_from)[CH] + 1, 8):
            yield _event(seq)
        self.second_done.set()
        await asyncio.Event().wait()


async def test_the_tap_records_what_the_server_sent_and_the_checker_reports_it() -> None:
    script = _Script()
    server = grpc.aio.server(interceptors=[ErrorMapper()])
    ngrpc.add_NotificationServiceServicer_to_server(script, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    log = SubscriberLog(user="bob", region="eu", start={CH: 2})
    clock = asyncio.get_running_loop().time
    fast = RetryPolicy(max_attempts=None, initial_backoff=0.01, max_backoff=0.05, budget=10)
    client = ChatClient(f"127.0.0.1:{port}", interceptors=[_Tap(log, clock)], stream_retry=fast)
    try:
        subscription = client.subscribe({CH: 2})

        async def read() -> None:
            async for event in subscription:
                log.delivered.append(
                    Receipt(
                        CH,
                        event.seq,
                        event.message_created.message.message_id,
                        key_of(event.message_created.message.text),
                        clock(),
                    )
                )

        reader = asyncio.create_task(read())
        await asyncio.wait_for(script.second_done.wait(), 10)

        async def all_delivered() -> bool:
            return len(log.delivered) == 5

        await eventually(all_delivered, timeout=10, what="five deliveries")
        await subscription.close()
        await asyncio.wait_for(reader, 10)
    finally:
        await client.close()
        await server.stop(None)

    # The tap saw what the server sent, per connection; the client passed on each seq
    # once and in order: it dropped the duplicate and, instead of skipping 5, resumed
    # from 4 (the server's gap is not the user's).
    first = [e.seq for e in log.raw if e.conn == 0]
    assert first[:3] == [3, 4, 4] and set(first[3:]) <= {6}
    assert [e.seq for e in log.raw if e.conn == 1] == [5, 6, 7]
    assert [r.seq for r in log.delivered] == [3, 4, 5, 6, 7]
    assert not any(e.replay for e in log.raw)
    assert log.connections == 2
    assert script.requests == [{CH: 2}, {CH: 4}]
    assert log.ends[-1].code == "CANCELLED"
    assert subscription.duplicates == 1

    # The checker compares with the history: nothing lost, nothing undelivered.
    rows = [HistoryRow(s, f"msg_{s}", f"k{s}") for s in (3, 4, 5, 6, 7)]
    rec = Recording("dev", ["eu"], "eu", [CH], subscribers=[log], histories={"eu": {CH: rows}})
    total = check(rec).total
    assert (total.lost_stream, total.undelivered_without_notice) == (0, 0)

    # Had the client passed the server's stream on as it came (no resume), msg_5 would
    # be lost without notice, and the checker says so.
    log.delivered = [r for r in log.delivered if r.seq != 5]
    total = check(rec).total
    assert (total.lost_stream, total.undelivered_without_notice) == (1, 1)


def test_channels_named_anywhere_in_a_message_are_found() -> None:
    other = "ch_" + "d" * 26
    req = npb.SubscribeRequest(resume_from={CH: 3, other: 0})
    assert _channels_named(req) == {CH: None, other: None}
    assert _channels_named(_event(5)) == {CH: None}
    assert _channels_named(npb.SubscribeResponse(heartbeat=npb.Heartbeat())) == {}
