"""The bus Protocols of :mod:`mesh.bus.interfaces`, implemented over one nats-py client.

Each JetStream operation goes through nats-py's own API (``nc.jetstream()`` for
acked publishes, :class:`~nats.js.manager.JetStreamManager` for direct gets,
stream and consumer info, consumer creation); the one hand-written JetStream
request left is the pull loop of :class:`~mesh.bus.eventbus.PullConsumer`
(its docstring says why).

Example:
    >>> async def demo() -> None:  # doctest: +SKIP
    ...     nc = await connect(["nats://127.0.0.1:4222"], name="demo")
    ...     bus = NatsBus(nc)
    ...     ack = await bus.publish_event("chatmesh.evt.ch.ch_1", b"...", "msg_1")
    ...     last = await bus.get_last_msg("EVENTS", "chatmesh.evt.ch.ch_1")
"""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.aio.subscription import DEFAULT_SUB_PENDING_BYTES_LIMIT, DEFAULT_SUB_PENDING_MSGS_LIMIT
from nats.js.api import ConsumerConfig, PubAck
from nats.js.errors import APIError, NotFoundError
from nats.js.manager import JetStreamManager

from mesh.bus.interfaces import Handler, Message, StreamMsg, Subscription
from mesh.bus.subjects import EVENTS_STREAM
from mesh.core.errors import Unavailable

__all__ = ["NatsBus"]

MSG_ID = "Nats-Msg-Id"


class NatsBus:
    """The bus Protocols over a connected nats-py client.

    Implements :class:`~mesh.bus.interfaces.Bus`, :class:`~mesh.bus.interfaces.EventPublisher`
    and :class:`~mesh.bus.interfaces.JetStream`.

    The caller owns the connection (and drains it on shutdown).
    """

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._js = nc.jetstream()

    def _jsm(self, timeout: float) -> JetStreamManager:
        # A manager holds nothing but the connection and its timeout: cheap per call,
        # and the only way to give get_msg/stream_info a per-call timeout.
        return JetStreamManager(self.nc, timeout=timeout)

    # -- Bus -------------------------------------------------------------------------

    async def publish(self, subject: str, payload: bytes = b"", *, reply: str = "") -> None:
        await self.nc.publish(subject, payload, reply=reply)

    async def request(self, subject: str, payload: bytes, *, timeout: float) -> Message:
        return await self.nc.request(subject, payload, timeout=timeout)

    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        pending_msgs_limit: int | None = None,
        pending_bytes_limit: int | None = None,
    ) -> Subscription:
        return await self.nc.subscribe(
            subject,
            cb=handler,
            pending_msgs_limit=(
                DEFAULT_SUB_PENDING_MSGS_LIMIT if pending_msgs_limit is None else pending_msgs_limit
            ),
            pending_bytes_limit=(
                DEFAULT_SUB_PENDING_BYTES_LIMIT
                if pending_bytes_limit is None
                else pending_bytes_limit
            ),
        )

    async def flush(self) -> None:
        await self.nc.flush()

    def new_inbox(self) -> str:
        return self.nc.new_inbox()

    # -- EventPublisher ----------------------------------------------------------------

    async def publish_event(
        self,
        subject: str,
        payload: bytes,
        msg_id: str,
        *,
        timeout: float = 5.0,
        expected_stream: str = EVENTS_STREAM,
    ) -> PubAck:
        try:
            return await self._js.publish(
                subject, payload, timeout=timeout, stream=expected_stream, headers={MSG_ID: msg_id}
            )
        except TimeoutError:
            raise Unavailable(
                "BACKEND_UNAVAILABLE", "the event stream did not acknowledge in time; retry"
            ) from None
        except APIError as exc:
            raise Unavailable(
                "BACKEND_UNAVAILABLE", f"the event stream refused the event: {exc.description}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - no responders, connection closed ...
            raise Unavailable(
                "BACKEND_UNAVAILABLE",
                f"the event stream is unavailable ({type(exc).__name__}); retry",
            ) from None

    # -- JetStream ---------------------------------------------------------------------

    async def get_msg(
        self, stream: str, seq: int, *, timeout: float = 5.0, leader: bool = False
    ) -> StreamMsg | None:
        try:
            raw = await self._jsm(timeout).get_msg(stream, seq, direct=not leader)
        except NotFoundError:
            return None
        return StreamMsg(raw.data or b"", raw.seq or seq, raw.subject or "")

    async def get_last_msg(
        self, stream: str, subject: str, *, timeout: float = 5.0
    ) -> StreamMsg | None:
        try:
            raw = await self._jsm(timeout).get_last_msg(stream, subject, direct=True)
        except NotFoundError:
            return None
        return StreamMsg(raw.data or b"", raw.seq or 0, raw.subject or subject)

    async def get_msgs_after(
        self, stream: str, subject: str, start_seq: int, *, batch: int = 200, timeout: float = 5.0
    ) -> list[StreamMsg]:
        # STREAM.MSG.GET (next_by_subj), not a batched direct get: a mirror inherits
        # its origin's allow_direct and answers direct gets for it from its own,
        # possibly lagging, copy (nats-server subscribes it, in the same queue group,
        # nearer than the origin). Only the stream's leader answers this API.
        jsm = self._jsm(timeout)
        got: list[StreamMsg] = []
        seq = max(1, start_seq)
        while len(got) < batch:
            try:
                raw = await jsm.get_msg(stream, seq, subject=subject, next=True)
            except NotFoundError:
                break
            except Exception as exc:  # noqa: BLE001 - timeout, no responders, closed
                if got:
                    break
                raise Unavailable(
                    "BACKEND_UNAVAILABLE",
                    f"stream {stream} did not answer a message get ({type(exc).__name__})",
                ) from None
            got.append(StreamMsg(raw.data or b"", raw.seq or seq, raw.subject or subject))
            seq = (raw.seq or seq) + 1
        return got

    async def first_seq(self, stream: str, *, timeout: float = 5.0) -> int:
        info = await self._jsm(timeout).stream_info(stream)
        return int(info.state.first_seq)

    async def ack_floor(self, stream: str, durable: str, *, timeout: float = 5.0) -> int | None:
        try:
            info = await self._jsm(timeout).consumer_info(stream, durable, timeout=timeout)
        except NotFoundError:
            return None
        return int(info.ack_floor.stream_seq) if info.ack_floor else 0

    async def add_consumer(
        self, stream: str, config: ConsumerConfig, *, timeout: float = 5.0
    ) -> None:
        await self._jsm(timeout).add_consumer(stream, config=config, timeout=timeout)
