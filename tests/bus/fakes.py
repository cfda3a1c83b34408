"""An in-memory stand-in for NATS and JetStream, implementing the :mod:`mesh.bus.interfaces` Protocols.

For unit tests of code that takes a ``Bus``/``EventPublisher``/``JetStream``:
nothing is started. It mimics the parts of NATS those callers rely on:

* core NATS: subject wildcards (``*``, ``>``), one dispatch task per subscription
  (a subscription's handler sees its messages one at a time, in publish order,
  like nats-py's), request/reply through inboxes, "no responders";
* JetStream streams: ``publish_event`` stores into the stream that captures the
  subject, de-duplicated by message id; direct gets; ``fail_publishes`` makes
  the next publishes fail as an unavailable JetStream does;
* pull consumers: pull requests published on ``$JS.API.CONSUMER.MSG.NEXT.…`` are
  recorded; the test decides what JetStream delivers, in which order
  (:meth:`FakeBus.deliver`), or sends status messages (:meth:`FakeBus.deliver_status`);
  acks (``$JS.ACK.…``) move the consumer's ack floor (``ack_policy: all``).

Messages handed to handlers are real ``nats.aio.msg.Msg`` objects whose client is
this fake, so ``msg.ack()`` and ``msg.metadata`` behave as with a live connection.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js.api import ConsumerConfig, PubAck

from mesh.bus.interfaces import StreamMsg
from mesh.bus.subjects import EVENTS_STREAM, Subjects
from mesh.core.errors import Unavailable

PULL_PREFIX = "$JS.API.CONSUMER.MSG.NEXT."
ACK_PREFIX = "$JS.ACK."


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


class _Sub:
    def __init__(
        self, bus: FakeBus, subject: str, handler: Callable[[Msg], Awaitable[None]]
    ) -> None:
        self.bus = bus
        self.subject = subject
        self.handler = handler
        self.queue: asyncio.Queue[Msg] = asyncio.Queue()
        self.busy = False
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            msg = await self.queue.get()
            self.busy = True
            try:
                await self.handler(msg)
            except Exception as exc:  # noqa: BLE001 - nats-py logs handler errors too
                self.bus.handler_errors.append(exc)
            finally:
                self.busy = False

    async def unsubscribe(self) -> None:
        if self in self.bus.subs:
            self.bus.subs.remove(self)
        self.task.cancel()


@dataclass
class Stored:
    seq: int
    subject: str
    data: bytes
    msg_id: str


@dataclass
class Stream:
    name: str
    subjects: list[str]
    messages: dict[int, Stored] = field(default_factory=dict)
    last_seq: int = 0
    msg_ids: dict[str, int] = field(default_factory=dict)


@dataclass
class Consumer:
    config: ConsumerConfig
    ack_floor: int = 0
    delivered: int = 0


@dataclass
class Pull:
    stream: str
    durable: str
    inbox: str
    request: dict[str, Any]


class FakeBus:
    """Bus, EventPublisher and JetStream in memory (see the module docstring)."""

    def __init__(self) -> None:
        self.subs: list[_Sub] = []
        self.published: list[tuple[str, bytes, str]] = []
        """Every core publish: (subject, payload, reply), acks and pull requests included."""
        self.log: list[str] = []
        """An ordered trace of the JetStream side: ``publish_event <subject> <seq>``, ``ack <seq>``."""
        self.streams: dict[str, Stream] = {
            EVENTS_STREAM: Stream(EVENTS_STREAM, [Subjects.EVENTS_ALL])
        }
        self.consumers: dict[tuple[str, str], Consumer] = {}
        self.pulls: list[Pull] = []
        self.pulled = asyncio.Event()
        """Set whenever a pull request arrives."""
        self.fail_publishes = 0
        """The next this-many ``publish_event`` calls fail (JetStream unavailable)."""
        self.direct_gets: list[tuple[str, int]] = []
        self.fail_direct_gets = False
        self.leader_gets: list[tuple[str, int]] = []
        self.fail_leader_gets = 0
        """The next this-many leader gets time out (the stream's region cut off)."""
        """While True, ``get_msgs_after`` fails as if the stream's region were cut off."""
        self.handler_errors: list[Exception] = []
        self._inbox = itertools.count(1)

    async def close(self) -> None:
        """Cancels every subscription's dispatch task."""
        for sub in list(self.subs):
            await sub.unsubscribe()
        await asyncio.sleep(0)

    # -- core NATS -----------------------------------------------------------------------

    def _msg(
        self, subject: str, data: bytes, reply: str = "", headers: dict[str, str] | None = None
    ) -> Msg:
        return Msg(_client=self, subject=subject, reply=reply, data=data, headers=headers)  # type: ignore[arg-type]

    def _dispatch(self, msg: Msg, to: str | None = None) -> int:
        """Queues ``msg`` for every subscription matching ``to`` (default: its subject)."""
        matched = 0
        for sub in list(self.subs):
            if subject_matches(sub.subject, msg.subject if to is None else to):
                sub.queue.put_nowait(msg)
                matched += 1
        return matched

    async def publish(
        self, subject: str, payload: bytes = b"", *, reply: str = "", headers: Any = None
    ) -> None:
        self.published.append((subject, payload, reply))
        if subject.startswith(PULL_PREFIX):
            stream, durable = subject.removeprefix(PULL_PREFIX).split(".", 1)
            self.pulls.append(Pull(stream, durable, reply, json.loads(payload)))
            self.pulled.set()
            return
        if subject.startswith(ACK_PREFIX):
            meta = Msg.Metadata._from_reply(subject)
            self.log.append(f"ack {meta.sequence.stream}")
            consumer = self.consumers[(meta.stream, meta.consumer)]
            consumer.ack_floor = max(consumer.ack_floor, meta.sequence.stream)
            return
        self._dispatch(self._msg(subject, payload, reply))

    async def request(self, subject: str, payload: bytes, *, timeout: float) -> Msg:
        inbox = self.new_inbox()
        answer: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

        async def on_reply(msg: Msg) -> None:
            if not answer.done():
                answer.set_result(msg)

        sub = _Sub(self, inbox, on_reply)
        self.subs.append(sub)
        try:
            self.published.append((subject, payload, inbox))
            if not self._dispatch(self._msg(subject, payload, inbox)):
                raise NoRespondersError
            return await asyncio.wait_for(answer, timeout)
        finally:
            await sub.unsubscribe()

    async def subscribe(
        self,
        subject: str,
        handler: Callable[[Msg], Awaitable[None]],
        *,
        pending_msgs_limit: int | None = None,
        pending_bytes_limit: int | None = None,
    ) -> _Sub:
        sub = _Sub(self, subject, handler)
        self.subs.append(sub)
        return sub

    async def flush(self) -> None:
        await asyncio.sleep(0)

    def new_inbox(self) -> str:
        return f"_INBOX.fake.{next(self._inbox)}"

    async def settle(self) -> None:
        """Returns once every subscription has handled everything queued for it."""
        while True:
            for _ in range(5):
                await asyncio.sleep(0)
            if all(sub.queue.empty() and not sub.busy for sub in self.subs):
                return

    def published_on(self, pattern: str) -> list[bytes]:
        """Payloads of core publishes whose subject matches ``pattern``."""
        return [data for subject, data, _ in self.published if subject_matches(pattern, subject)]

    # -- EventPublisher --------------------------------------------------------------------

    def _capturing(self, subject: str) -> Stream:
        for stream in self.streams.values():
            if any(subject_matches(p, subject) for p in stream.subjects):
                return stream
        raise NoRespondersError

    async def publish_event(
        self,
        subject: str,
        payload: bytes,
        msg_id: str,
        *,
        timeout: float = 5.0,
        expected_stream: str = EVENTS_STREAM,
    ) -> PubAck:
        if self.fail_publishes > 0:
            self.fail_publishes -= 1
            self.log.append(f"publish_event {subject} failed")
            raise Unavailable(
                "BACKEND_UNAVAILABLE", "the event stream is unavailable (fake); retry"
            )
        stream = self._capturing(subject)
        assert stream.name == expected_stream, (stream.name, expected_stream)
        if msg_id in stream.msg_ids:
            return PubAck(stream=stream.name, seq=stream.msg_ids[msg_id], duplicate=True)
        stream.last_seq += 1
        stream.messages[stream.last_seq] = Stored(stream.last_seq, subject, payload, msg_id)
        stream.msg_ids[msg_id] = stream.last_seq
        self.log.append(f"publish_event {subject} {stream.last_seq}")
        return PubAck(stream=stream.name, seq=stream.last_seq, duplicate=False)

    def stored(self, stream: str = EVENTS_STREAM, subject: str = ">") -> list[Stored]:
        """The stream's messages (matching ``subject``), in stream order."""
        return [
            m
            for _, m in sorted(self.streams[stream].messages.items())
            if subject_matches(subject, m.subject)
        ]

    # -- JetStream ----------------------------------------------------------------------------

    async def get_msg(
        self, stream: str, seq: int, *, timeout: float = 5.0, leader: bool = False
    ) -> StreamMsg | None:
        if leader:
            self.leader_gets.append((stream, seq))
            if self.fail_leader_gets > 0:
                self.fail_leader_gets -= 1
                raise TimeoutError
        else:
            self.direct_gets.append((stream, seq))
        m = self.streams[stream].messages.get(seq)
        return None if m is None else StreamMsg(m.data, m.seq, m.subject)

    async def get_last_msg(
        self, stream: str, subject: str, *, timeout: float = 5.0
    ) -> StreamMsg | None:
        found = self.stored(stream, subject)
        return None if not found else StreamMsg(found[-1].data, found[-1].seq, found[-1].subject)

    async def get_msgs_after(
        self, stream: str, subject: str, start_seq: int, *, batch: int = 200, timeout: float = 5.0
    ) -> list[StreamMsg]:
        if self.fail_direct_gets:
            raise Unavailable("BACKEND_UNAVAILABLE", f"stream {stream} did not answer a direct get")
        found = [m for m in self.stored(stream, subject) if m.seq >= start_seq][:batch]
        return [StreamMsg(m.data, m.seq, m.subject) for m in found]

    async def first_seq(self, stream: str, *, timeout: float = 5.0) -> int:
        s = self.streams[stream]
        return min(s.messages, default=s.last_seq + 1)

    async def ack_floor(self, stream: str, durable: str, *, timeout: float = 5.0) -> int | None:
        consumer = self.consumers.get((stream, durable))
        return None if consumer is None else consumer.ack_floor

    async def add_consumer(
        self, stream: str, config: ConsumerConfig, *, timeout: float = 5.0
    ) -> None:
        assert config.durable_name is not None
        self.consumers.setdefault((stream, config.durable_name), Consumer(config))

    # -- what JetStream delivers to pull requests (the test decides) ------------------------------

    def _inbox_of(self, stream: str, durable: str) -> str:
        pulls = [p for p in self.pulls if (p.stream, p.durable) == (stream, durable)]
        assert pulls, f"no pull request for {stream}/{durable} yet"
        return pulls[-1].inbox

    async def deliver(
        self, stream: str, durable: str, seqs: list[int], *, delivered: int = 1
    ) -> None:
        """Delivers the stream's messages ``seqs`` (in that order) to the newest pull request."""
        inbox = self._inbox_of(stream, durable)
        consumer = self.consumers[(stream, durable)]
        for seq in seqs:
            m = self.streams[stream].messages[seq]
            consumer.delivered += 1
            reply = f"{ACK_PREFIX}{stream}.{durable}.{delivered}.{seq}.{consumer.delivered}.1700000000000000000.0"
            # Like the server: the stream subject, routed to the request's inbox.
            self._dispatch(self._msg(m.subject, m.data, reply), to=inbox)

    async def deliver_status(self, stream: str, durable: str, status: str) -> None:
        """Sends a status message (``"100"`` idle heartbeat, ``"408"`` request expired ...)."""
        self._dispatch(self._msg(self._inbox_of(stream, durable), b"", headers={"Status": status}))

    def add_stream(self, name: str, subjects: list[str]) -> None:
        self.streams[name] = Stream(name, subjects)
