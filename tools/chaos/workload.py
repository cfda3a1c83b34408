"""The chaos workload: retrying senders and resuming subscribers in every region.

Everything enters through the regional edges with :mod:`mesh.client`, as an
application would:

* **Senders** (``senders_per_region`` per region) send into the shared channels
  at a fixed total rate, *open loop*: a send is issued on every tick whether or not
  earlier ones have returned (up to ``max_in_flight`` per sender), so traffic keeps
  flowing through a fault and its healing instead of pausing with it. Each logical
  send is one :meth:`~mesh.client.ChatClient.send_message` call: the client
  retries with the same ``client_msg_id`` and jittered backoff within its budget.
* **Subscribers** (``subscribers_per_region`` per region) are members of every
  channel and read one auto-resuming :class:`~mesh.client.Subscription` each. A
  gRPC interceptor on the subscriber's connection records what the *server* sent
  (before the client drops duplicates), and the loop records what the *client*
  handed to the application; both feed the checker. If a Subscription gives up
  (its reconnect budget is spent) the subscriber opens a new one from its
  positions, as an application would.

Example:
    >>> async def demo(edges, tokens) -> None:  # doctest: +SKIP
    ...     recording = Recording("dev", ["us-east", "eu"], "us-east", [])
    ...     workload = Workload(edges, tokens, recording, WorkloadConfig(rate=30))
    ...     await workload.setup()
    ...     workload.start_traffic()
    ...     await asyncio.sleep(10)
    ...     await workload.stop_traffic()
    ...     await workload.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message

from chatmesh.v1 import events_pb2, notification_service_pb2 as npb
from mesh.client import DEFAULT_RETRY, ChatClient, RetryPolicy, Subscription
from mesh.core.errors import ChatmeshError
from mesh.rpc.status import from_rpc_error
from tools.chaos.recording import (
    HistoryRow,
    Notice,
    RawEvent,
    Receipt,
    Recording,
    Send,
    StreamEnd,
    SubscriberLog,
    key_of,
    message_text,
)

__all__ = ["Workload", "WorkloadConfig"]

logger = logging.getLogger(__name__)

_CHANNEL_ID = re.compile(r"^ch_[0-9a-z]{26}$")
_ROUTINE_KINDS = frozenset({"event", "heartbeat", "replay_complete"})


@dataclass(frozen=True)
class WorkloadConfig:
    """Size and pace of the workload."""

    rate: float = 30.0
    """Messages per second, all senders together."""
    senders_per_region: int = 2
    subscribers_per_region: int = 2
    channels: int = 3
    """Shared channels; every sender and subscriber is a member of all of them."""
    max_in_flight: int = 100
    """Per sender: sends waiting for their reply; a tick beyond it is skipped (and counted)."""
    send_retry: RetryPolicy = DEFAULT_RETRY
    """The senders' retry policy (the client's default: what applications get)."""
    seed: int = 1


@dataclass
class _Subscriber:
    log: SubscriberLog
    client: ChatClient
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    subscription: Subscription | None = None
    task: asyncio.Task[None] | None = None


def _message_of(event: events_pb2.Event) -> tuple[str, str | None]:
    kind = event.WhichOneof("payload")
    if kind == "message_created":
        msg = event.message_created.message
        return msg.message_id, key_of(msg.text)
    return "", None


def _channels_named(message: Message) -> dict[str, list[int] | None]:
    """Every channel id anywhere in ``message`` (fields or map keys), whole range."""
    found: dict[str, list[int] | None] = {}

    def visit(value: object) -> None:
        if isinstance(value, Message):
            walk(value)
        elif isinstance(value, str) and _CHANNEL_ID.match(value):
            found[value] = None

    def walk(msg: Message) -> None:
        for fd, value in msg.ListFields():
            if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                for k in value:
                    visit(k)
                    visit(value[k])
            elif fd.is_repeated:
                for v in value:
                    visit(v)
            else:
                visit(value)

    walk(message)
    return found


class _Tap(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    """Records every Subscribe item as the server sent it, and how each call ended."""

    def __init__(self, log: SubscriberLog, clock: Callable[[], float]) -> None:
        self.log = log
        self.clock = clock

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        call = await continuation(client_call_details, request)
        conn = self.log.connections
        self.log.connections += 1
        return self._tap(call, conn)

    async def _tap(self, call: Any, conn: int) -> AsyncIterator[npb.SubscribeResponse]:
        log = self.log
        replay = True
        try:
            async for item in call:
                kind = item.WhichOneof("kind")
                if kind == "event":
                    event = item.event
                    if event.seq > 0 and event.channel_id:
                        message_id, key = _message_of(event)
                        log.raw.append(
                            RawEvent(
                                event.channel_id,
                                event.seq,
                                message_id,
                                key,
                                self.clock(),
                                conn,
                                replay,
                            )
                        )
                elif kind == "replay_complete":
                    replay = False
                elif kind not in _ROUTINE_KINDS:
                    # Something the suite does not know yet: issue 12's "could not deliver".
                    log.notices.append(
                        Notice(
                            self.clock(), conn, str(kind), _channels_named(item), str(item)[:500]
                        )
                    )
                yield item
        except grpc.aio.AioRpcError as exc:
            err = from_rpc_error(exc)
            log.ends.append(StreamEnd(self.clock(), conn, err.code, err.reason, str(err)[:300]))
            named: dict[str, list[int] | None] = {
                k: None
                for k, v in err.metadata.items()
                if _CHANNEL_ID.match(str(k)) or _CHANNEL_ID.match(str(v))
            }
            if named:
                log.notices.append(
                    Notice(self.clock(), conn, f"status:{err.reason}", named, str(err)[:300])
                )
            raise
        except asyncio.CancelledError:
            log.ends.append(StreamEnd(self.clock(), conn, "CANCELLED"))
            raise
        else:
            log.ends.append(StreamEnd(self.clock(), conn, "OK"))


class Workload:
    """Senders and subscribers over the regional edges, recording into a :class:`Recording`."""

    def __init__(
        self,
        edges: Mapping[str, Mapping[str, Any]],
        token: Callable[[str], str],
        recording: Recording,
        config: WorkloadConfig,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """Plans the workload; nothing connects until :meth:`setup`.

        Args:
            edges: Region -> its edge endpoint (``mesh.endpoints[region]["edge"]``).
            token: Mints a bearer token for a user id.
            recording: Where sends, streams and histories are recorded.
            config: Size and pace.
            clock: Seconds since the run's start (default: monotonic minus ``recording.t0``).
        """
        self.edges = edges
        self.token = token
        self.rec = recording
        self.config = config
        self.clock = clock or (lambda: time.monotonic() - recording.t0)
        self.regions = list(recording.regions)
        self.primary = recording.primary
        self._rng = random.Random(config.seed)
        self._sender_clients: dict[str, ChatClient] = {}
        self._senders: list[tuple[str, str, ChatClient]] = []
        """(user, region, client)."""
        self._subscribers: list[_Subscriber] = []
        self._sender_tasks: list[asyncio.Task[None]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stop_sending = asyncio.Event()
        self._closing = False
        self._issued: dict[str, float] = {}
        self.last_ack_issued: dict[str, float] = {}
        """Region -> issue time of the newest acknowledged send (the schedule's health probe)."""

    # -- setup ---------------------------------------------------------------------------

    async def setup(self, timeout: float = 90.0) -> None:
        """Creates the channels, waits until every region has them, starts the subscribers.

        Raises:
            TimeoutError: A region never caught up with the channels, or a stream never
                completed its first replay.
        """
        cfg = self.config
        tag = f"{self._rng.getrandbits(32):08x}"
        for region in self.regions:
            client = ChatClient.from_edge(self.edges[region], retry=cfg.send_retry, connections=2)
            self._sender_clients[region] = client
            for i in range(1, cfg.senders_per_region + 1):
                user = f"chaos-{tag}-{region}-s{i}"
                self._senders.append((user, region, client.with_token(self.token(user))))
            for i in range(1, cfg.subscribers_per_region + 1):
                user = f"chaos-{tag}-{region}-r{i}"
                log = SubscriberLog(user=user, region=region, start={})
                tap = _Tap(log, self.clock)
                client = ChatClient.from_edge(
                    self.edges[region], token=self.token(user), interceptors=[tap]
                )
                self._subscribers.append(_Subscriber(log, client))
        self.rec.subscribers = [s.log for s in self._subscribers]
        creator = next(c for u, r, c in self._senders if r == self.primary)
        members = [u for u, _, _ in self._senders] + [s.log.user for s in self._subscribers]
        channels = []
        for i in range(cfg.channels):
            created = await creator.create_channel(f"chaos-{tag}-{i}", members, timeout=60)
            channels.append(created.channel.channel_id)
        self.rec.channels = channels
        start = await asyncio.wait_for(self._replicated(channels), timeout)
        for sub in self._subscribers:
            sub.log.start = dict(start)
            sub.task = asyncio.create_task(self._subscribe(sub), name=f"sub-{sub.log.user}")
        await asyncio.wait_for(
            asyncio.gather(*(sub.ready.wait() for sub in self._subscribers)), timeout
        )

    async def _replicated(self, channels: list[str]) -> dict[str, int]:
        """Waits until every region's history of every channel is at the primary's last seq."""
        readers = {s.log.region: s.client for s in self._subscribers}
        primary_reader = readers[self.primary]
        want = {ch: (await primary_reader.get_history(ch, limit=1)).last_seq for ch in channels}
        for region, reader in readers.items():
            for ch in channels:
                while True:
                    try:
                        if (await reader.get_history(ch, limit=1)).last_seq >= want[ch]:
                            break
                    except ChatmeshError:
                        pass  # NOT_FOUND / NOT_A_MEMBER until the region has the channel
                    await asyncio.sleep(0.2)
            logger.debug("region %s has the channels", region)
        return want

    # -- subscribers ---------------------------------------------------------------------

    async def _subscribe(self, sub: _Subscriber) -> None:
        positions = dict(sub.log.start)
        log = sub.log
        while not self._closing:
            subscription = sub.client.subscribe(positions)
            sub.subscription = subscription
            try:
                async for item in subscription.responses():
                    kind = item.WhichOneof("kind")
                    if kind == "event":
                        event = item.event
                        if event.seq > 0 and event.channel_id:
                            message_id, key = _message_of(event)
                            log.delivered.append(
                                Receipt(event.channel_id, event.seq, message_id, key, self.clock())
                            )
                    elif kind == "replay_complete":
                        sub.ready.set()
            except ChatmeshError as exc:
                log.resubscribes += 1
                logger.warning(
                    "%s: subscription gave up (%s %s); opening a new one",
                    log.user,
                    exc.code,
                    exc.reason,
                )
            except Exception:  # a client bug must not silently end this subscriber
                log.resubscribes += 1
                logger.exception("%s: subscription failed; opening a new one", log.user)
            finally:
                positions = subscription.positions.snapshot()
                log.client_duplicates += subscription.duplicates
                log.client_gaps += subscription.gaps
            if not self._closing:
                await asyncio.sleep(1.0)

    # -- senders -------------------------------------------------------------------------

    def start_traffic(self) -> None:
        """Starts every sender's open loop."""
        per_sender = self.config.rate / max(1, len(self._senders))
        for user, region, client in self._senders:
            rng = random.Random(f"{self.config.seed}-{user}")
            self._sender_tasks.append(
                asyncio.create_task(
                    self._send_loop(user, region, client, per_sender, rng), name=f"send-{user}"
                )
            )

    async def _send_loop(
        self, user: str, region: str, client: ChatClient, rate: float, rng: random.Random
    ) -> None:
        interval = 1.0 / rate
        next_at = self.clock() + rng.uniform(0, interval)
        n = 0
        mine: set[asyncio.Task[None]] = set()
        while not self._stop_sending.is_set():
            delay = next_at - self.clock()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_sending.wait(), delay)
                if self._stop_sending.is_set():
                    break
            next_at += interval
            if len(mine) >= self.config.max_in_flight:
                self.rec.skipped_ticks += 1
                continue
            n += 1
            channel = rng.choice(self.rec.channels)
            task = asyncio.create_task(self._send(user, region, client, channel, n, rng))
            for group in (mine, self._in_flight):
                group.add(task)
                task.add_done_callback(group.discard)

    async def _send(
        self, user: str, region: str, client: ChatClient, channel: str, n: int, rng: random.Random
    ) -> None:
        key = f"{rng.getrandbits(64):016x}{n:06d}"
        send = Send(user, region, channel, key, issued=self.clock())
        self.rec.sends.append(send)
        self._issued[key] = send.issued
        try:
            response = await client.send_message(
                channel, message_text(user, n, key), client_msg_id=key
            )
        except ChatmeshError as exc:
            send.error = f"{exc.code} {exc.reason}: {exc}"[:300]
        except Exception as exc:  # noqa: BLE001 - recorded as a failed send, never fatal
            send.error = f"{type(exc).__name__}: {exc}"[:300]
        else:
            send.ok = True
            send.message_id = response.message.message_id
            send.seq = response.message.seq
            send.duplicate = response.duplicate
            self.last_ack_issued[region] = max(self.last_ack_issued.get(region, 0.0), send.issued)
        finally:
            send.done = self.clock()

    async def stop_traffic(self) -> None:
        """Stops issuing sends and waits for the ones in flight (each ends within its budget)."""
        self._stop_sending.set()
        await asyncio.gather(*self._sender_tasks, return_exceptions=True)
        if self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)
        self.rec.traffic_end = self.clock()

    # -- probes the schedule uses --------------------------------------------------------

    def caught_up(self, since: float) -> dict[str, bool]:
        """What works again since ``since``, probe by probe.

        Per sending region: a send issued after ``since`` was acknowledged. Per
        subscriber: its newest receipt is of a message issued after ``since``.
        """
        state = {
            f"send@{r}": self.last_ack_issued.get(r, -1.0) >= since
            for r in {region for _, region, _ in self._senders}
        }
        for sub in self._subscribers:
            last = sub.log.delivered[-1] if sub.log.delivered else None
            issued = self._issued.get(last.key, -1.0) if last and last.key else -1.0
            state[f"recv@{sub.log.user}"] = issued >= since
        return state

    # -- the end -------------------------------------------------------------------------

    async def last_seqs(self) -> dict[str, dict[str, int]]:
        """Region -> channel -> the newest seq its history knows (errors: -1)."""
        result: dict[str, dict[str, int]] = {}
        for region, reader in self._readers().items():
            result[region] = {}
            for ch in self.rec.channels:
                try:
                    page = await reader.get_history(ch, limit=1, timeout=10)
                    result[region][ch] = page.last_seq
                except ChatmeshError:
                    result[region][ch] = -1
        return result

    def stream_tops(self) -> dict[str, dict[str, int]]:
        """Subscriber -> channel -> the highest seq the server sent it."""
        tops: dict[str, dict[str, int]] = {}
        for sub in self._subscribers:
            top = dict(sub.log.start)
            for e in sub.log.raw:
                top[e.channel] = max(top.get(e.channel, 0), e.seq)
            tops[f"{sub.log.user}@{sub.log.region}"] = top
        return tops

    def subscriber_regions(self) -> dict[str, str]:
        """Subscriber (``user@region``) -> region."""
        return {f"{s.log.user}@{s.log.region}": s.log.region for s in self._subscribers}

    def _readers(self) -> dict[str, ChatClient]:
        return {s.log.region: s.client for s in self._subscribers}

    async def fetch_histories(self) -> None:
        """Reads every channel's whole history in every region into the recording."""
        for region, reader in self._readers().items():
            self.rec.histories[region] = {}
            for ch in self.rec.channels:
                rows: list[HistoryRow] = []
                after = 0
                while True:
                    page = await reader.get_history(ch, after_seq=after, limit=200, timeout=30)
                    for m in page.messages:
                        rows.append(HistoryRow(m.seq, m.message_id, key_of(m.text)))
                    if not page.messages or not page.has_more:
                        break
                    after = page.messages[-1].seq
                self.rec.histories[region][ch] = rows

    async def close(self) -> None:
        """Ends the subscriptions and closes every connection."""
        self._closing = True
        self._stop_sending.set()
        for sub in self._subscribers:
            if sub.subscription is not None:
                await sub.subscription.close()
        for sub in self._subscribers:
            if sub.task is not None:
                sub.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sub.task
            await sub.client.close()
        for task in self._sender_tasks:
            task.cancel()
        for client in self._sender_clients.values():
            await client.close()
