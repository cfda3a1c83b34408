"""Low-latency, gap-free consumption of a JetStream stream: :class:`PullConsumer`.

:class:`PullConsumer` drives a durable pull consumer the way the Go client's
``Consume()`` does: it keeps pull requests outstanding and hands over messages
as soon as they arrive, in batches of whatever is already there. (nats-py's
``fetch(batch=N)`` waits for the whole batch or the timeout, which adds up to
its timeout to every quiet-period message.) With ``ack_policy: all`` one ack
per batch acknowledges everything before it.

Handlers see the stream strictly in order, with no gap and no repeat. After a
consumer crash JetStream delivers *new* messages first and redelivers the
unacknowledged ones only after ``ack_wait`` — so an ack-all on a new message
would silently acknowledge events nobody processed. The consumer therefore
tracks the last stream sequence it handed over (starting from the durable's
ack floor), drops anything at or below it, and reads any hole directly from the
stream (:meth:`~mesh.bus.interfaces.JetStream.get_msg`, a direct get) before
handing over what follows. What the stream does not hold is asked of the leader
of its origin (the stream a mirror copies: after a WAN cut nats-server may leave
a mirror with a hole where EVENTS has messages) or of the stream itself; only
what no leader holds (aged out, deleted) is left out. While no leader answers
the consumer waits and asks again: it never moves past a message that may exist.

It works over the :mod:`mesh.bus.interfaces` Protocols (a :class:`NatsBus`
in production), so these rules have unit tests without a server.

Example:
    >>> async def demo(nc) -> None:  # doctest: +SKIP
    ...     async def handle(msgs: list[StreamMsg]) -> None:
    ...         for m in msgs:
    ...             print(m.data)
    ...     bus = NatsBus(nc)
    ...     consumer = PullConsumer(bus, bus, "EVENTS", "fanout", handle)
    ...     await consumer.ensure()
    ...     await consumer.run()
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, ReplayPolicy

from mesh.bus.interfaces import Bus, JetStream, Message, StreamMsg

__all__ = ["PullConsumer", "stream_seq_of"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_FILL_CONCURRENCY = 64
"""Direct reads of a hole in flight at once (one round trip each, across the WAN for a mirror)."""
_RETRY_LOG_EVERY = 10.0
"""Seconds between log lines while a hole cannot be read."""


class _Stopped(Exception):
    """:meth:`PullConsumer.stop` was called while a hole was being read."""


def stream_seq_of(msg: Message) -> int:
    """The stream sequence of a JetStream delivery (0 for any other message)."""
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:  # noqa: BLE001 - not a JetStream message
        return 0


def _status(msg: Message) -> str | None:
    """The status of a status message (heartbeat, request ended); None for a real message."""
    return (msg.headers or {}).get("Status")


class PullConsumer:
    """A durable pull consumer processed in arrival-sized batches."""

    def __init__(
        self,
        bus: Bus,
        jetstream: JetStream,
        stream: str,
        durable: str,
        handler: Callable[[list[StreamMsg]], Awaitable[None]],
        *,
        batch: int = 512,
        ack_wait: float = 5.0,
        max_ack_pending: int = 20_000,
        filter_subject: str | None = None,
        idle_heartbeat: float = 2.0,
        expires: float = 30.0,
        origin: str | None = None,
    ) -> None:
        """Describes the consumer.

        Args:
            bus: Core NATS (pull requests, the inbox they answer on, acks), with a
                user that may use the consumer API.
            jetstream: Consumer info and creation, direct reads of the stream.
            stream: Stream to consume.
            durable: Durable consumer name (its position survives restarts).
            handler: Called with each batch, in stream order without gaps or
                repeats; the batch is acknowledged when it returns. Raising
                stops :meth:`run` (the batch is handed over again next run).
            batch: Messages requested per pull.
            ack_wait: Seconds before unacknowledged messages are redelivered.
            max_ack_pending: Flow-control limit of unacknowledged messages.
            filter_subject: Only messages on this subject.
            idle_heartbeat: Server heartbeat interval of a pull request.
            expires: Lifetime of one pull request.
            origin: The stream ``stream`` mirrors (EVENTS for a region's mirror),
                read through ``jetstream`` for what a hole's direct reads miss.
        """
        self.bus = bus
        self.jetstream = jetstream
        self.stream = stream
        self.durable = durable
        self.handler = handler
        self.batch = batch
        self.ack_wait = ack_wait
        self.max_ack_pending = max_ack_pending
        self.filter_subject = filter_subject
        self.idle_heartbeat = idle_heartbeat
        self.expires = expires
        self.origin = origin
        self.delivered = 0
        self.last_stream_seq = 0
        self.holes_filled = 0
        """Messages the stream lacked and its origin's leader supplied."""
        self._stopped = asyncio.Event()
        self._retry_logged_at = -_RETRY_LOG_EVERY

    def config(self) -> ConsumerConfig:
        """The consumer's JetStream configuration."""
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.ALL,
            ack_wait=self.ack_wait,
            max_deliver=-1,
            max_ack_pending=self.max_ack_pending,
            max_waiting=16,
            replay_policy=ReplayPolicy.INSTANT,
            filter_subject=self.filter_subject,
        )

    async def ensure(self, timeout: float = 30.0) -> None:
        """Creates the durable consumer unless it exists.

        Retries until ``timeout`` while JetStream cannot answer yet (no meta
        leader, the stream's peers still starting).
        """
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                if await self.jetstream.ack_floor(self.stream, self.durable) is not None:
                    return
            except Exception as exc:  # noqa: BLE001 - e.g. no meta leader yet: try creating anyway
                logger.info("consumer %s/%s info: %r", self.stream, self.durable, exc)
            try:
                await self.jetstream.add_consumer(self.stream, self.config())
                return
            except Exception as exc:  # retried until the deadline, then raised
                if asyncio.get_running_loop().time() > deadline:
                    raise
                logger.info("consumer %s/%s not created yet: %r", self.stream, self.durable, exc)
                await asyncio.sleep(0.25)

    def stop(self) -> None:
        """Makes :meth:`run` return after the current batch."""
        self._stopped.set()

    async def _fill(self, first_missing: int, up_to: int) -> list[StreamMsg]:
        """Messages ``first_missing``..``up_to`` that the consumer skipped, read directly.

        Each from the stream (a direct get); what it lacks, from the leader of
        ``origin`` or else of the stream. Left out only if that leader does not
        hold it either; while nothing answers, asked again until :meth:`stop`.

        Raises:
            _Stopped: :meth:`stop` was called meanwhile.
        """
        if up_to - first_missing > 1000:
            # Skip what the stream no longer has (age/size limits) rather than
            # asking for every missing sequence.
            first = await self._patiently(lambda: self.jetstream.first_seq(self._source))
            first_missing = max(first_missing, first)
        seqs = range(first_missing, up_to + 1)
        got: list[StreamMsg | None] = []
        for i in range(0, len(seqs), _FILL_CONCURRENCY):
            chunk = seqs[i : i + _FILL_CONCURRENCY]
            got += await asyncio.gather(*(self._read(seq) for seq in chunk))
        filled = [msg for msg in got if msg is not None]
        logger.info(
            "consumer %s/%s: read %d-%d directly (a redelivery gap or a hole), %d held nowhere",
            self.stream, self.durable, first_missing, up_to, len(seqs) - len(filled),
        )  # fmt: skip
        return filled

    @property
    def _source(self) -> str:
        """The stream whose leader answers for what a direct read misses."""
        return self.origin or self.stream

    async def _read(self, seq: int) -> StreamMsg | None:
        msg = await self._patiently(lambda: self.jetstream.get_msg(self.stream, seq))
        if msg is None:
            msg = await self._patiently(
                lambda: self.jetstream.get_msg(self._source, seq, leader=True)
            )
            if msg is not None and self.origin is not None:
                self.holes_filled += 1
        return msg

    async def _patiently(self, read: Callable[[], Awaitable[_T]]) -> _T:
        delay = 0.1
        while True:
            try:
                return await read()
            except Exception as exc:  # noqa: BLE001 - a timeout, no responders: asked again
                if self._stopped.is_set():
                    raise _Stopped from None
                now = asyncio.get_running_loop().time()
                if now - self._retry_logged_at >= _RETRY_LOG_EVERY:
                    self._retry_logged_at = now
                    logger.warning("consumer %s/%s: a hole cannot be read yet (%r); waiting",
                                   self.stream, self.durable, exc)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def run(self) -> None:
        """Consumes until :meth:`stop` (or the handler raises)."""
        floor = await self.jetstream.ack_floor(self.stream, self.durable)
        if floor is None:
            raise LookupError(f"consumer {self.stream}/{self.durable} does not exist")
        self.last_stream_seq = max(self.last_stream_seq, floor)
        queue: asyncio.Queue[Message] = asyncio.Queue()
        inbox = self.bus.new_inbox()

        async def on_msg(msg: Message) -> None:
            queue.put_nowait(msg)

        sub = await self.bus.subscribe(inbox, on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
        # Pull requests by hand: nats-py's fetch() waits for a full batch (see the
        # module docstring), and its pull subscription cannot keep one request
        # outstanding while handing over whatever has arrived.
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.durable}"
        outstanding = 0
        stop_wait = asyncio.ensure_future(self._stopped.wait())
        get: asyncio.Future[Message] | None = None
        try:
            while not self._stopped.is_set():
                if outstanding <= self.batch // 2:
                    request = {
                        "batch": self.batch,
                        "expires": int(self.expires * 1e9),
                        "idle_heartbeat": int(self.idle_heartbeat * 1e9),
                    }
                    await self.bus.publish(subject, json.dumps(request).encode(), reply=inbox)
                    outstanding += self.batch
                get = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({get, stop_wait}, timeout=self.idle_heartbeat * 3,
                                             return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                if get not in done:
                    get.cancel()
                    if not self._stopped.is_set():
                        # No messages and no heartbeats: the request was lost
                        # (reconnect, leader change). Start over.
                        logger.debug(
                            "consumer %s/%s: pull request lost; re-issuing",
                            self.stream,
                            self.durable,
                        )
                        outstanding = 0
                    continue
                received: list[Message] = []
                first = get.result()
                for msg in (first, *_drain(queue)):
                    status = _status(msg)
                    if status is None:
                        received.append(msg)
                    elif status == "100":
                        continue  # idle heartbeat
                    else:
                        # 404 no messages / 408 request expired / 409 leadership
                        # change or max waiting: this request is over.
                        outstanding = 0
                if not received:
                    continue
                outstanding = max(0, outstanding - len(received))
                batch: list[StreamMsg] = []
                # Each message's seq is parsed from its reply subject once.
                numbered = sorted((stream_seq_of(msg), i) for i, msg in enumerate(received))
                for seq, i in numbered:
                    msg = received[i]
                    expected = (batch[-1].stream_seq if batch else self.last_stream_seq) + 1
                    if seq < expected:
                        continue  # a redelivery of something already handled
                    if seq > expected:
                        try:
                            batch += await self._fill(expected, seq - 1)
                        except _Stopped:
                            return  # nothing handed over or acknowledged: redelivered next run
                    batch.append(StreamMsg(msg.data, seq, msg.subject))
                if batch:
                    await self.handler(batch)
                    self.delivered += len(batch)
                    self.last_stream_seq = batch[-1].stream_seq
                # Everything received is now handled (now or before): ack-all up to the newest.
                await received[numbered[-1][1]].ack()
        finally:
            stop_wait.cancel()
            if get is not None:
                get.cancel()  # cancelled while waiting: do not leave the queue read pending
            await sub.unsubscribe()


def _drain(queue: asyncio.Queue[Message]) -> list[Message]:
    items: list[Message] = []
    while True:
        try:
            items.append(queue.get_nowait())
        except asyncio.QueueEmpty:
            return items
