"""Events on NATS: durable publishing and low-latency JetStream consumption.

:func:`publish_event` puts an event into the EVENTS stream with a
``Nats-Msg-Id`` so a retried publish within the duplicate window is stored once,
and returns only after JetStream acknowledged it (durably, given the stream's
fsync policy).

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
stream (``$JS.API.DIRECT.GET``) before handing over what follows.

Example:
    >>> async def demo(nc) -> None:  # doctest: +SKIP
    ...     async def handle(msgs: list[Msg]) -> None:
    ...         for m in msgs:
    ...             print(m.data)
    ...     consumer = PullConsumer(nc, "EVENTS", "fanout", handle)
    ...     await consumer.ensure()
    ...     await consumer.run()
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import APIError

from mesh.bus.connection import JetStreamError, js_api
from mesh.core.errors import Unavailable

__all__ = ["PubAck", "PullConsumer", "StreamMsg", "publish_event", "stream_seq_of"]

logger = logging.getLogger(__name__)


class PubAck:
    """JetStream's acknowledgement of a publish."""

    __slots__ = ("duplicate", "seq", "stream")

    def __init__(self, stream: str, seq: int, duplicate: bool) -> None:
        self.stream = stream
        self.seq = seq
        self.duplicate = duplicate


async def publish_event(
    nc: NATS,
    subject: str,
    payload: bytes,
    msg_id: str,
    *,
    timeout: float = 5.0,
    expected_stream: str = "EVENTS",
) -> PubAck:
    """Publishes to a stream subject and waits for JetStream's ack.

    Args:
        nc: A connected client whose user may publish on ``subject``.
        subject: A subject the stream captures.
        payload: The serialized event.
        msg_id: The de-duplication id (``Nats-Msg-Id``).
        timeout: Seconds to wait for the ack.
        expected_stream: Fail if another stream captured the subject.

    Raises:
        Unavailable: No ack in time, or JetStream refused the message.
    """
    headers = {"Nats-Msg-Id": msg_id, "Nats-Expected-Stream": expected_stream}
    try:
        reply = await nc.request(subject, payload, timeout=timeout, headers=headers)
    except TimeoutError:
        raise Unavailable(
            "BACKEND_UNAVAILABLE", "the event stream did not acknowledge in time; retry"
        ) from None
    except Exception as exc:  # noqa: BLE001 - no responders, connection closed ...
        raise Unavailable(
            "BACKEND_UNAVAILABLE", f"the event stream is unavailable ({type(exc).__name__}); retry"
        ) from None
    data = json.loads(reply.data or b"{}")
    if "error" in data:
        raise Unavailable(
            "BACKEND_UNAVAILABLE",
            f"the event stream refused the event: {data['error'].get('description')}",
        )
    return PubAck(
        str(data.get("stream")), int(data.get("seq", 0)), bool(data.get("duplicate", False))
    )


def stream_seq_of(msg: Msg) -> int:
    """The stream sequence of a JetStream message (parsed from its ack subject)."""
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:  # noqa: BLE001 - not a JetStream message
        return 0


class StreamMsg:
    """One stream message as handlers see it."""

    __slots__ = ("data", "stream_seq", "subject")

    def __init__(self, data: bytes, stream_seq: int, subject: str) -> None:
        self.data = data
        self.stream_seq = stream_seq
        self.subject = subject


def _status(msg: Msg) -> str | None:
    headers = msg.headers or {}
    status = headers.get("Status")
    if status is None and not msg.data and msg.header is not None:
        status = msg.header.get("Status")
    return status


class PullConsumer:
    """A durable pull consumer processed in arrival-sized batches."""

    def __init__(
        self,
        nc: NATS,
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
    ) -> None:
        """Describes the consumer.

        Args:
            nc: Connection whose user may use the consumer API.
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
        """
        self.nc = nc
        self.stream = stream
        self.durable = durable
        self.handler = handler
        self.batch = batch
        self.ack_wait = ack_wait
        self.max_ack_pending = max_ack_pending
        self.filter_subject = filter_subject
        self.idle_heartbeat = idle_heartbeat
        self.expires = expires
        self.delivered = 0
        self.last_stream_seq = 0
        self._stopped = asyncio.Event()

    def config(self) -> dict[str, Any]:
        """The consumer's JetStream configuration."""
        cfg: dict[str, Any] = {
            "durable_name": self.durable,
            "deliver_policy": "all",
            "ack_policy": "all",
            "ack_wait": int(self.ack_wait * 1e9),
            "max_deliver": -1,
            "max_ack_pending": self.max_ack_pending,
            "max_waiting": 16,
            "replay_policy": "instant",
        }
        if self.filter_subject:
            cfg["filter_subject"] = self.filter_subject
        return cfg

    async def ensure(self, timeout: float = 30.0) -> dict[str, Any]:
        """Creates the durable consumer unless it exists; returns its info."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                return await js_api(
                    self.nc, f"$JS.API.CONSUMER.INFO.{self.stream}.{self.durable}", timeout=5
                )
            except JetStreamError as exc:
                if exc.err_code != 10014:  # consumer not found
                    logger.info("consumer %s/%s info: %s", self.stream, self.durable, exc)
            except (TimeoutError, APIError) as exc:
                logger.info("consumer %s/%s info: %r", self.stream, self.durable, exc)
            try:
                return await js_api(
                    self.nc,
                    f"$JS.API.CONSUMER.CREATE.{self.stream}.{self.durable}",
                    {"stream_name": self.stream, "config": self.config()},
                    timeout=5,
                )
            except (JetStreamError, TimeoutError) as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                logger.info("consumer %s/%s not created yet: %r", self.stream, self.durable, exc)
                await asyncio.sleep(0.25)

    def stop(self) -> None:
        """Makes :meth:`run` return after the current batch."""
        self._stopped.set()

    async def _direct_get(self, seq: int) -> StreamMsg | None:
        """Reads one message by stream sequence (None if it was deleted or expired)."""
        reply = await self.nc.request(
            f"$JS.API.DIRECT.GET.{self.stream}", json.dumps({"seq": seq}).encode(), timeout=5
        )
        headers = reply.headers or {}
        if headers.get("Status"):
            return None
        return StreamMsg(reply.data, seq, headers.get("Nats-Subject", ""))

    async def _fill(self, first_missing: int, up_to: int) -> list[StreamMsg]:
        """Messages ``first_missing``..``up_to`` read directly from the stream."""
        if up_to - first_missing > 1000:
            # Skip what the stream no longer has (age/size limits) rather than
            # asking for every missing sequence.
            info = await js_api(self.nc, f"$JS.API.STREAM.INFO.{self.stream}", timeout=5)
            first_missing = max(first_missing, int(info["state"]["first_seq"]))
        filled = []
        for seq in range(first_missing, up_to + 1):
            msg = await self._direct_get(seq)
            if msg is not None:
                filled.append(msg)
        logger.info("consumer %s/%s: read %d-%d directly from the stream (redelivery gap)",
                    self.stream, self.durable, first_missing, up_to)  # fmt: skip
        return filled

    async def run(self) -> None:
        """Consumes until :meth:`stop` (or the handler raises)."""
        info = await js_api(
            self.nc, f"$JS.API.CONSUMER.INFO.{self.stream}.{self.durable}", timeout=5
        )
        self.last_stream_seq = max(
            self.last_stream_seq, int((info.get("ack_floor") or {}).get("stream_seq", 0))
        )
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        inbox = self.nc.new_inbox()

        async def on_msg(msg: Msg) -> None:
            queue.put_nowait(msg)

        sub = await self.nc.subscribe(
            inbox, cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.durable}"
        outstanding = 0
        stop_wait = asyncio.ensure_future(self._stopped.wait())
        try:
            while not self._stopped.is_set():
                if outstanding <= self.batch // 2:
                    request = {
                        "batch": self.batch,
                        "expires": int(self.expires * 1e9),
                        "idle_heartbeat": int(self.idle_heartbeat * 1e9),
                    }
                    await self.nc.publish(subject, json.dumps(request).encode(), reply=inbox)
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
                received: list[Msg] = []
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
                for msg in sorted(received, key=stream_seq_of):
                    seq = stream_seq_of(msg)
                    expected = (batch[-1].stream_seq if batch else self.last_stream_seq) + 1
                    if seq < expected:
                        continue  # a redelivery of something already handled
                    if seq > expected:
                        batch += await self._fill(expected, seq - 1)
                    batch.append(StreamMsg(msg.data, seq, msg.subject))
                if batch:
                    await self.handler(batch)
                    self.delivered += len(batch)
                    self.last_stream_seq = batch[-1].stream_seq
                # Everything received is now handled (now or before): ack-all up to the newest.
                await max(received, key=stream_seq_of).ack()
        finally:
            stop_wait.cancel()
            await sub.unsubscribe()


def _drain(queue: asyncio.Queue[Msg]) -> list[Msg]:
    items = []
    while True:
        try:
            items.append(queue.get_nowait())
        except asyncio.QueueEmpty:
            return items
