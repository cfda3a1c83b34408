"""The bus as domain code sees it: three small Protocols and the data they carry.

The Command, Fan-Out and Notification services' domain classes and
:class:`~mesh.bus.eventbus.PullConsumer` take these instead of a live nats-py
client, so their ordering, idempotency and gap rules have unit tests that start
nothing (``tests/bus/fakes.py`` implements them in memory).
:class:`~mesh.bus.natsbus.NatsBus` implements all three over one nats-py client.

* :class:`Bus` — core NATS: publish, request/reply, subscribe, flush, inboxes.
* :class:`EventPublisher` — durable publishes into a stream, de-duplicated by a
  message id and acknowledged by JetStream.
* :class:`JetStream` — what the domain reads from JetStream directly (a message
  by stream seq, the last message on a subject, a stream's first seq) and the
  durable consumers it creates.

Example:
    >>> async def demo(bus: Bus, events: EventPublisher) -> None:  # doctest: +SKIP
    ...     ack = await events.publish_event("chatmesh.evt.ch.ch_1", b"...", "msg_1")
    ...     reply = await bus.request("chatmesh.route.hb.eu.n1", b"", timeout=1.0)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, PubAck

from mesh.bus.subjects import EVENTS_STREAM

__all__ = [
    "Bus",
    "ConsumerConfig",
    "EventPublisher",
    "Handler",
    "JetStream",
    "Message",
    "PubAck",
    "StreamMsg",
    "Subscription",
]


class Message(Protocol):
    """A message as a subscription or a request hands it over (nats-py's ``Msg`` is one).

    ``metadata`` and :meth:`ack` exist only for messages JetStream delivered to a
    consumer (their ``reply`` is a ``$JS.ACK`` subject).
    """

    @property
    def subject(self) -> str:
        """The subject it was published on."""
        ...

    @property
    def reply(self) -> str:
        """Where to answer ("" if nobody waits)."""
        ...

    @property
    def data(self) -> bytes:
        """The payload."""
        ...

    @property
    def headers(self) -> dict[str, str] | None:
        """Headers, including a status line's ``Status`` (``"100"``, ``"404"`` ...)."""
        ...

    @property
    def metadata(self) -> Msg.Metadata:
        """Stream and consumer sequences of a JetStream delivery (parsed from ``reply``)."""
        ...

    async def ack(self) -> None:
        """Acknowledges a JetStream delivery (with ``ack_policy: all``, everything before it too)."""
        ...


Handler = Callable[[Message], Awaitable[None]]
"""A subscription callback."""


class Subscription(Protocol):
    """What :meth:`Bus.subscribe` returns."""

    async def unsubscribe(self) -> None:
        """Stops the subscription."""
        ...


@dataclass(frozen=True, slots=True)
class StreamMsg:
    """One stream message as handlers see it."""

    data: bytes
    stream_seq: int
    subject: str


class Bus(Protocol):
    """Core NATS: fire-and-forget publishes, request/reply and subscriptions."""

    async def publish(self, subject: str, payload: bytes = b"", *, reply: str = "") -> None:
        """Publishes (no acknowledgement); ``reply`` names the answer's subject."""
        ...

    async def request(self, subject: str, payload: bytes, *, timeout: float) -> Message:
        """Publishes and waits for the first answer.

        Raises:
            TimeoutError: No answer in time.
            Exception: No responders, or the connection is closed.
        """
        ...

    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        pending_msgs_limit: int | None = None,
        pending_bytes_limit: int | None = None,
    ) -> Subscription:
        """Calls ``handler`` for each message on ``subject`` (wildcards allowed), in order.

        Args:
            subject: Subject or wildcard pattern.
            handler: Awaited for each message before the next is handed over.
            pending_msgs_limit: Messages buffered before the subscription is a
                slow consumer and drops; -1 unbounded; None the client's default.
            pending_bytes_limit: The same in bytes.
        """
        ...

    async def flush(self) -> None:
        """Returns once the server has processed everything published so far."""
        ...

    def new_inbox(self) -> str:
        """A unique subject to receive answers on."""
        ...


class EventPublisher(Protocol):
    """Durable, de-duplicated publishes into a stream."""

    async def publish_event(
        self,
        subject: str,
        payload: bytes,
        msg_id: str,
        *,
        timeout: float = 5.0,
        expected_stream: str = EVENTS_STREAM,
    ) -> PubAck:
        """Publishes to a stream subject and returns once JetStream acknowledged it.

        A second publish with the same ``msg_id`` within the stream's duplicate
        window is stored once: its ack carries the first one's ``seq`` and
        ``duplicate=True`` (nats-py leaves ``duplicate`` None otherwise).

        Args:
            subject: A subject the stream captures.
            payload: The serialized event.
            msg_id: The de-duplication id (``Nats-Msg-Id``).
            timeout: Seconds to wait for the ack.
            expected_stream: Fail if another stream captured the subject.

        Raises:
            mesh.core.errors.Unavailable: No ack in time, or JetStream refused it.
        """
        ...


class JetStream(Protocol):
    """Direct reads of a stream, and its durable consumers."""

    async def get_msg(
        self, stream: str, seq: int, *, timeout: float = 5.0, leader: bool = False
    ) -> StreamMsg | None:
        """The message at stream sequence ``seq`` (None if deleted, expired or not yet there).

        Args:
            stream: The stream.
            seq: Its stream sequence.
            timeout: Seconds to wait for an answer.
            leader: Ask the stream's leader (``STREAM.MSG.GET``) rather than any
                server holding a copy (a direct get, which a lagging replica or
                a mirror of the stream may answer from what it has).

        Raises:
            Exception: No server answered (a timeout, no responders): unknown, not absent.
        """
        ...

    async def get_last_msg(
        self, stream: str, subject: str, *, timeout: float = 5.0
    ) -> StreamMsg | None:
        """The newest message on ``subject`` in ``stream`` (None if there is none)."""
        ...

    async def get_msgs_after(
        self, stream: str, subject: str, start_seq: int, *, batch: int = 200, timeout: float = 5.0
    ) -> list[StreamMsg]:
        """Up to ``batch`` messages on ``subject`` with stream seq >= ``start_seq``, in order.

        Read from the stream's leader (never from a mirror of it), one message
        per request (``next_by_subj``).

        Returns:
            The messages; empty if there is none at or after ``start_seq``.

        Raises:
            Unavailable: No server answered within ``timeout`` (e.g. the link to the
                stream's region is down).
        """
        ...

    async def first_seq(self, stream: str, *, timeout: float = 5.0) -> int:
        """The sequence of the oldest message the stream still holds."""
        ...

    async def ack_floor(self, stream: str, durable: str, *, timeout: float = 5.0) -> int | None:
        """The stream seq up to which the durable consumer has everything acknowledged.

        Returns:
            The ack floor, or None if the consumer does not exist.
        """
        ...

    async def add_consumer(
        self, stream: str, config: ConsumerConfig, *, timeout: float = 5.0
    ) -> None:
        """Creates a durable consumer (a no-op if it exists with the same configuration)."""
        ...
