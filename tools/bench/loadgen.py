r"""One load-generator process of the benchmark: ``python -m tools.bench.loadgen NAME``.

The orchestrator (:mod:`tools.bench.runner`) starts one of these per region, each
with its own asyncio loop and grpc.aio / nats-py clients, so the clients never
share an event loop (or a GIL) with the orchestrator or with each other. A
generator speaks chatmesh's public gRPC API through its region's entry (the
edge when the mesh has one, else the services directly) with :mod:`mesh.client`
(its connections, tokens and typed errors; no retries: a benchmark counts failures
instead of hiding them), bare NATS for the floor measurement, and the Fan-Out
Service's operator API for route lookups.

Protocol: JSON lines. The orchestrator writes ``{"id": 1, "cmd": "send",
"args": {...}}`` to stdin; the generator answers ``{"id": 1, "ok": true,
"result": {...}}`` or ``{"id": 1, "ok": false, "error": "..."}`` on stdout,
and may emit ``{"id": 1, "progress": {...}}`` while a command runs. Commands
run concurrently (streams keep reading while a send runs). The first line is
``{"ready": true, "pid": N}``; EOF on stdin or ``shutdown`` ends the process.

Clock: every timestamp is ``time.monotonic_ns()``, i.e. ``CLOCK_MONOTONIC``,
which on Linux is one system-wide clock: a send time taken in one process can
be subtracted from a receive time taken in another. The send time travels in
the message text (``bench <phase> <src-region> <t_ns> <n>``).

Example:
    >>> import subprocess, sys  # doctest: +SKIP
    >>> p = subprocess.Popen([sys.executable, "-m", "tools.bench.loadgen", "gen-eu"],
    ...                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    >>> p.stdout.readline()
    '{"ready": true, "pid": 1234}\n'
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from chatmesh.internal.v1 import routing_pb2
from chatmesh.v1 import (
    channel_pb2,
    fanout_service_pb2 as fpb,
    fanout_service_pb2_grpc as fgrpc,
    presence_pb2,
    query_service_pb2 as qpb,
)
from mesh.bus.connection import connect
from mesh.bus.subjects import Subjects
from mesh.client import ChatClient, RetryPolicy, Subscription
from mesh.core import loop as event_loop
from mesh.core.auth import KeyDirectory, mint
from mesh.core.errors import ChatmeshError
from mesh.core.pauses import PauseProbe, tune_gc
from mesh.harness.identity import internal_channel

__all__ = ["LoadGen", "main"]

logger = logging.getLogger("tools.bench.loadgen")

STREAMS_PER_CONNECTION = 200
"""Subscribe streams per HTTP/2 connection (the edge allows 1000 per connection)."""
UNARY_CONNECTIONS = 2
"""Connections per target for unary calls: one would be a single HTTP/2 connection
whose framing becomes the bottleneck."""
NO_RETRY = RetryPolicy.none()

Handler = Callable[[dict[str, Any], "Reporter"], Awaitable[dict[str, Any]]]


def _channel_options() -> list[tuple[str, Any]]:
    # A channel of its own per connection: grpc-core would otherwise share one
    # subchannel (TCP connection) between channels with equal arguments.
    return [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ]


def _stub(factory: Any, channel: grpc.aio.Channel) -> Any:
    """A generated stub (the ``_grpc`` modules are untyped)."""
    return factory(channel)


async def paced(
    count: int, rate: float, start_ns: int, lags_us: list[int] | None = None
) -> AsyncIterator[tuple[int, int]]:
    """An open-loop schedule: yields ``(n, now_ns)`` for each ``n`` in ``range(count)``.

    The n-th tick is ``n / rate`` seconds after ``start_ns`` (``time.monotonic_ns()``),
    never waiting for the caller's work (no coordinated omission). ``lags_us``
    collects how late each tick came (this process not keeping up).
    """
    interval = 1e9 / rate
    for n in range(count):
        due = start_ns + int(n * interval)
        now = time.monotonic_ns()
        if due > now:
            await asyncio.sleep((due - now) / 1e9)
            now = time.monotonic_ns()
        if lags_us is not None:
            lags_us.append(max(0, now - due) // 1000)
        yield n, now


def _percentile_ms(values_us: list[int], p: float) -> float:
    if not values_us:
        return float("nan")
    ordered = sorted(values_us)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k] / 1000.0


class Reporter:
    """Emits progress lines for one running command."""

    def __init__(self, gen: LoadGen, call_id: int) -> None:
        self._gen = gen
        self._id = call_id

    def progress(self, **values: Any) -> None:
        """Sends ``{"id": ..., "progress": values}`` to the orchestrator."""
        self._gen.emit({"id": self._id, "progress": values})


@dataclass
class BenchStream:
    """One Subscribe stream, read in the background."""

    user: str
    subscription: Subscription
    ready: asyncio.Future[int]
    task: asyncio.Task[None] | None = None
    error: str | None = None
    events: int = 0


@dataclass
class Watch:
    """A presence poller: polls GetPresence for ``user`` until it reports ONLINE."""

    user: str
    armed: asyncio.Future[str]
    task: asyncio.Task[dict[str, Any]] | None = None


@dataclass
class FakeInstance:
    """A notification instance impersonated on NATS (routing-table scenario)."""

    instance_id: str
    region: str
    user_ids: list[str]
    nc: NATS
    version: int = 1
    snapshot_ms: float = 0.0
    resyncs: int = 0


@dataclass
class LoadGen:
    """State of one generator process."""

    name: str
    out: Any = field(default=None)
    region: str = ""
    keys: KeyDirectory | None = None
    tokens: dict[str, str] = field(default_factory=dict)
    unary: dict[str, ChatClient] = field(default_factory=dict)
    """Target address -> a client on a small pool of connections for unary calls."""
    users: dict[tuple[str, str], ChatClient] = field(default_factory=dict)
    """(target, user) -> that user's client on the target's pooled connections."""
    stream_clients: list[ChatClient] = field(default_factory=list)
    """One client (one connection) per STREAMS_PER_CONNECTION streams."""
    notification_targets: list[str] = field(default_factory=list)
    command_target: str = ""
    query_target: str = ""
    streams: dict[str, BenchStream] = field(default_factory=dict)
    samples: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    """phase -> source region -> send->receive latencies in microseconds."""
    received: dict[str, int] = field(default_factory=dict)
    """phase -> deliveries received."""
    floor_samples: dict[str, dict[str, dict[str, list[int]]]] = field(default_factory=dict)
    """phase -> mode (direct/via) -> source region -> latencies (us)."""
    nats: NATS | None = None
    watches: dict[str, Watch] = field(default_factory=dict)
    fakes: list[FakeInstance] = field(default_factory=list)
    fake_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _opened_streams: int = 0
    fanout_nats: NATS | None = None
    """The bare-NATS fan-out floor's connection (single-region scenario)."""
    pauses: PauseProbe = field(default_factory=PauseProbe)
    """This process's GC pauses and loop lag: a receiver's stall is in its latencies."""

    # -- plumbing ------------------------------------------------------------------

    def emit(self, obj: dict[str, Any]) -> None:
        """Writes one JSON line to stdout."""
        self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self.out.flush()

    def token(self, user: str) -> str:
        """``user``'s token (minted once per user)."""
        token = self.tokens.get(user)
        if token is None:
            assert self.keys is not None, "init first"
            token = self.tokens[user] = mint(self.keys, user)
        return token

    def _user(self, target: str, user: str) -> ChatClient:
        # Created once per (target, user): a call costs a dict lookup, no new channel.
        client = self.users.get((target, user))
        if client is None:
            client = self.users[target, user] = self.unary[target].with_token(self.token(user))
        return client

    def command(self, user: str) -> ChatClient:
        """``user``'s client for CommandService calls (on the pooled connections)."""
        return self._user(self.command_target, user)

    def query(self, user: str) -> ChatClient:
        """``user``'s client for QueryService calls (on the pooled connections)."""
        return self._user(self.query_target, user)

    def _stream_client(self, user: str, per_connection: int = STREAMS_PER_CONNECTION) -> ChatClient:
        # The last connection takes streams until it holds ``per_connection`` of them.
        if not self.stream_clients or self._opened_streams >= per_connection:
            n = len(self.stream_clients)
            target = self.notification_targets[n % len(self.notification_targets)]
            self.stream_clients.append(
                ChatClient(
                    target, retry=NO_RETRY, stream_retry=NO_RETRY, options=_channel_options()
                )
            )
            self._opened_streams = 0
        self._opened_streams += 1
        return self.stream_clients[-1].with_token(self.token(user))

    # -- commands: set-up ----------------------------------------------------------------

    async def cmd_init(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Binds the generator to a region's entry points and key directory."""
        self.region = args["region"]
        self.keys = KeyDirectory(Path(args["keys_dir"]))
        self.command_target = args["command"]
        self.query_target = args["query"]
        self.notification_targets = list(args["notification"])
        self.unary = {
            t: ChatClient(
                t, retry=NO_RETRY, connections=UNARY_CONNECTIONS, options=_channel_options()
            )
            for t in {self.command_target, self.query_target}
        }
        return {"pid": os.getpid()}

    async def cmd_create_channels(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Creates channels (each by its creator) with bounded concurrency; returns their ids."""
        specs: list[dict[str, Any]] = args["channels"]
        sem = asyncio.Semaphore(int(args.get("concurrency", 16)))
        ids: list[str] = [""] * len(specs)
        done = 0

        async def one(i: int, spec: dict[str, Any]) -> None:
            nonlocal done
            async with sem:
                creator = spec["creator"]
                members = [m for m in spec["members"] if m != creator]
                resp = await self.command(creator).create_channel(
                    spec["name"],
                    members,
                    visibility=channel_pb2.CHANNEL_VISIBILITY_PRIVATE,
                    timeout=30,
                )
                ids[i] = str(resp.channel.channel_id)
                done += 1
                if done % 25 == 0:
                    rep.progress(created=done, total=len(specs))

        await asyncio.gather(*(one(i, s) for i, s in enumerate(specs)))
        return {"channel_ids": ids}

    async def _open(
        self, user: str, timeout: float, per_connection: int = STREAMS_PER_CONNECTION
    ) -> BenchStream:
        # No reconnects (a stream that ends is counted by stream_health) and no
        # heartbeat watchdog (one timer task per stream would cost the generator CPU).
        subscription = self._stream_client(user, per_connection).subscribe(
            reconnect=False, heartbeat_watchdog=False
        )
        loop = asyncio.get_running_loop()
        stream = BenchStream(user, subscription, loop.create_future())
        stream.task = asyncio.create_task(self._read(stream))
        try:
            await asyncio.wait_for(asyncio.shield(stream.ready), timeout)
        except BaseException:
            await self._close_stream(stream)
            raise
        return stream

    async def _read(self, stream: BenchStream) -> None:
        record = self._record
        try:
            async for item in stream.subscription.responses():
                now = time.monotonic_ns()  # first: the receive time of this item
                kind = item.WhichOneof("kind")
                if kind == "event":
                    event = item.event
                    if event.WhichOneof("payload") == "message_created":
                        text = event.message_created.message.text
                        if text.startswith("bench "):
                            record(text, now)
                    stream.events += 1
                elif kind == "replay_complete" and not stream.ready.done():
                    stream.ready.set_result(now)
            if not stream.subscription.closed():
                stream.error = "EOF"
        except ChatmeshError as exc:
            stream.error = exc.code
        except asyncio.CancelledError:
            pass
        finally:
            if not stream.ready.done():
                stream.ready.set_exception(RuntimeError(f"stream ended: {stream.error}"))

    def _record(self, text: str, now: int) -> None:
        _, phase, src, t_ns, _n = text.split(" ", 4)
        by_src = self.samples.get(phase)
        if by_src is None:
            by_src = self.samples[phase] = {}
        bucket = by_src.get(src)
        if bucket is None:
            bucket = by_src[src] = []
        bucket.append((now - int(t_ns)) // 1000)
        self.received[phase] = self.received.get(phase, 0) + 1

    async def _close_stream(self, stream: BenchStream) -> None:
        await stream.subscription.close()
        if stream.task is not None:
            stream.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stream.task
        if not stream.ready.done():
            stream.ready.cancel()
        else:
            with contextlib.suppress(BaseException):
                stream.ready.result()

    async def cmd_open_streams(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Opens one Subscribe stream per user (until ``budget_s`` runs out).

        A stream counts as open once ReplayComplete arrives: the notification
        instance has registered the route with the Fan-Out Service by then.
        ``per_connection`` streams share one HTTP/2 connection (1: each stream
        on a connection of its own, as separate client devices would be).
        """
        users: list[str] = args["users"]
        per_connection = max(1, int(args.get("per_connection", STREAMS_PER_CONNECTION)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(args["budget_s"])
        sem = asyncio.Semaphore(int(args.get("concurrency", 8)))
        durations_us: list[int] = []
        failed: dict[str, str] = {}
        skipped = 0
        t_start = time.monotonic_ns()

        async def one(user: str) -> None:
            nonlocal skipped
            async with sem:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    skipped += 1
                    return
                t0 = time.monotonic_ns()
                try:
                    stream = await self._open(
                        user, timeout=max(1.0, remaining + 5), per_connection=per_connection
                    )
                except Exception as exc:  # noqa: BLE001 - reported per user
                    failed[user] = repr(exc)[:200]
                    return
                self.streams[user] = stream
                durations_us.append((time.monotonic_ns() - t0) // 1000)

        async def ticker() -> None:
            while True:
                await asyncio.sleep(0.5)
                rep.progress(opened=len(durations_us), total=len(users))

        tick = asyncio.create_task(ticker())
        try:
            await asyncio.gather(*(one(u) for u in users))
        finally:
            tick.cancel()
        elapsed = (time.monotonic_ns() - t_start) / 1e9
        opened = [u for u in users if u in self.streams]
        return {
            "opened": opened,
            "failed": failed,
            "skipped": skipped,
            "elapsed_s": elapsed,
            "open_us": durations_us,
        }

    async def cmd_close_streams(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Closes the given users' streams (all when ``users`` is absent)."""
        users = args.get("users") or list(self.streams)
        for user in users:
            stream = self.streams.pop(user, None)
            if stream is not None:
                await self._close_stream(stream)
        return {"closed": len(users)}

    async def cmd_stream_health(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Streams that ended since they opened, by reason."""
        ended: dict[str, int] = {}
        for stream in self.streams.values():
            if stream.task is not None and stream.task.done():
                ended[stream.error or "?"] = ended.get(stream.error or "?", 0) + 1
        return {"open": len(self.streams), "ended": ended}

    # -- commands: load --------------------------------------------------------------

    async def cmd_send(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Sends messages open-loop at a fixed rate (evenly spaced) for a duration.

        Each message goes to a random ``(sender, channel)`` pair of ``choices``.
        The schedule never waits for answers (no coordinated omission); the
        schedule lag (how late each send started) shows when this process itself
        could not keep up.
        """
        phase = str(args["phase"])
        rate = float(args["rate"])
        duration = float(args["duration"])
        choices: list[list[str]] = args["choices"]
        rng = random.Random(int(args["seed"]))
        max_inflight = int(args.get("max_inflight", 4000))
        timeout = float(args.get("timeout", 10.0))
        count = max(1, int(rate * duration))
        ok_by_channel: dict[str, int] = {}
        errors: dict[str, int] = {}
        ack_us: list[int] = []
        lags_us: list[int] = []
        inflight: set[asyncio.Task[None]] = set()
        sent = 0
        region = self.region

        async def one(n: int, user: str, channel: str) -> None:
            t0 = time.monotonic_ns()
            text = f"bench {phase} {region} {t0} {n}"
            try:
                await self.command(user).send_message(channel, text, timeout=timeout)
            except ChatmeshError as exc:
                errors[exc.code] = errors.get(exc.code, 0) + 1
                return
            ack_us.append((time.monotonic_ns() - t0) // 1000)
            ok_by_channel[channel] = ok_by_channel.get(channel, 0) + 1

        start = time.monotonic_ns() + 20_000_000
        last_tick = start
        async for n, now in paced(count, rate, start, lags_us):
            if len(inflight) >= max_inflight:
                errors["CLIENT_INFLIGHT_LIMIT"] = errors.get("CLIENT_INFLIGHT_LIMIT", 0) + 1
                continue
            user, channel = choices[rng.randrange(len(choices))]
            task = asyncio.create_task(one(n, user, channel))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            sent += 1
            if now - last_tick > 500_000_000:
                last_tick = now
                rep.progress(sent=sent, ok=len(ack_us), total=count)
        send_end = time.monotonic_ns()
        if inflight:
            await asyncio.wait(set(inflight), timeout=timeout + 5)
        for task in list(inflight):
            task.cancel()
        return {
            "sent": sent,
            "ok": len(ack_us),
            "errors": errors,
            "ok_by_channel": ok_by_channel,
            "send_seconds": (send_end - start) / 1e9,
            "lag_p99_ms": _percentile_ms(lags_us, 99),
            # Acks in completion order: a rising trend means a backlog was building.
            "ack_first_quarter_p50_ms": _percentile_ms(ack_us[: max(1, len(ack_us) // 4)], 50),
            "ack_last_quarter_p50_ms": _percentile_ms(ack_us[-max(1, len(ack_us) // 4) :], 50),
            "lag_max_ms": max(lags_us, default=0) / 1000.0,
            "ack_us": ack_us,
        }

    async def cmd_pauses(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """This process's GC pauses and event-loop lag since the last call (then resets)."""
        return self.pauses.take()

    async def cmd_received(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Deliveries received so far in each phase."""
        return {"received": dict(self.received)}

    async def cmd_take_samples(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Returns (and forgets) a phase's latencies by source region."""
        phase = str(args["phase"])
        samples = self.samples.pop(phase, {})
        received = self.received.pop(phase, 0)
        return {"samples": samples, "received": received}

    # -- commands: history -------------------------------------------------------------

    async def cmd_seed_history(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Sends ``count`` messages to each channel (a few at a time per channel)."""
        user = str(args["user"])
        count = int(args["count"])
        last: dict[str, int] = {}

        async def send(channel: str, i: int) -> Any:
            # Seeding is set-up, not the measurement: one writer filling several
            # channels meets its own send bucket (the topology's send_burst), so it
            # waits as the server's RetryInfo says, with the same key.
            key = f"seed-{channel}-{i}"
            while True:
                try:
                    return await self.command(user).send_message(
                        channel, f"history message {i} " + "x" * 80, client_msg_id=key, timeout=30
                    )
                except ChatmeshError as err:
                    if err.reason != "RATE_LIMITED":
                        raise
                    await asyncio.sleep(err.retry_delay or 0.5)

        async def fill(channel: str) -> None:
            for start in range(0, count, 5):
                batch = await asyncio.gather(
                    *(send(channel, i) for i in range(start, min(count, start + 5)))
                )
                last[channel] = max(last.get(channel, 0), *(int(r.message.seq) for r in batch))

        await asyncio.gather(*(fill(ch) for ch in args["channels"]))
        return {"last_seq": last}

    async def cmd_wait_history(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Waits until this region's history has every channel up to its seq."""
        user = str(args["user"])
        want: dict[str, int] = {str(k): int(v) for k, v in args["last_seq"].items()}
        deadline = time.monotonic() + float(args["timeout"])
        t0 = time.monotonic()
        delay = 0.02
        while True:
            behind = 0
            for channel, seq in want.items():
                resp = await self.query(user).get_history(channel, limit=1, timeout=10)
                if int(resp.last_seq) < seq:
                    behind += 1
            if not behind:
                return {"seconds": time.monotonic() - t0}
            if time.monotonic() > deadline:
                raise TimeoutError(f"{behind} channels behind in {self.region} history")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    async def cmd_history(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Closed-loop GetHistory(limit) calls; returns latencies (us) and errors."""
        user = str(args["user"])
        channels: list[str] = args["channels"]
        total = int(args["requests"])
        limit = int(args.get("limit", 50))
        concurrency = int(args.get("concurrency", 1))
        latencies: list[int] = []
        sizes: list[int] = []
        errors: dict[str, int] = {}
        issued = 0

        async def client() -> None:
            nonlocal issued
            while issued < total:
                channel = channels[issued % len(channels)]
                issued += 1
                t0 = time.monotonic_ns()
                try:
                    resp = await self.query(user).get_history(channel, limit=limit, timeout=10)
                except ChatmeshError as exc:
                    errors[exc.code] = errors.get(exc.code, 0) + 1
                    continue
                latencies.append((time.monotonic_ns() - t0) // 1000)
                sizes.append(len(resp.messages))

        await asyncio.gather(*(client() for _ in range(concurrency)))
        return {
            "latency_us": latencies,
            "errors": errors,
            "min_messages": min(sizes, default=0),
        }

    # -- commands: presence --------------------------------------------------------------

    async def cmd_presence_arm(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Starts polling GetPresence for a user; returns once the first poll answered.

        The poller keeps polling every ``poll_ms`` until the user is ONLINE; the
        time recorded is when that answer arrived (what a client would see).
        """
        user = str(args["user"])
        viewer = str(args["viewer"])
        poll = float(args.get("poll_ms", 5)) / 1000
        deadline = time.monotonic() + float(args.get("timeout", 30))
        loop = asyncio.get_running_loop()
        watch = Watch(user, loop.create_future())
        self.watches[user] = watch

        async def run() -> dict[str, Any]:
            polls = 0
            errors: dict[str, int] = {}
            req = qpb.GetPresenceRequest(user_ids=[user])
            while True:
                try:
                    resp = await self.query(viewer).get_presence(req, timeout=10)
                except ChatmeshError as exc:
                    # A failed poll is counted and the polling goes on: one lost
                    # call must not lose the sample (the error count is reported).
                    errors[exc.code] = errors.get(exc.code, 0) + 1
                    if time.monotonic() > deadline:
                        return {"seen_ns": None, "polls": polls, "errors": errors}
                    await asyncio.sleep(poll)
                    continue
                now = time.monotonic_ns()
                polls += 1
                status = resp.presences[0].status if resp.presences else 0
                online = status == presence_pb2.PRESENCE_STATUS_ONLINE
                if not watch.armed.done():
                    watch.armed.set_result(presence_pb2.PresenceStatus.Name(status))
                if online:
                    return {"seen_ns": now, "polls": polls, "errors": errors}
                if time.monotonic() > deadline:
                    return {"seen_ns": None, "polls": polls, "errors": errors}
                await asyncio.sleep(poll)

        watch.task = asyncio.create_task(run())
        task = watch.task
        armed: asyncio.Future[Any] = watch.armed
        await asyncio.wait([task, armed], timeout=15, return_when=asyncio.FIRST_COMPLETED)
        if armed.done():
            return {"first_status": armed.result()}
        if task.done():
            task.result()  # raises the poller's error
        raise TimeoutError("first presence poll did not answer")

    async def cmd_presence_result(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Waits for a poller started by ``presence_arm``."""
        watch = self.watches.pop(str(args["user"]))
        assert watch.task is not None
        return await asyncio.wait_for(watch.task, float(args.get("timeout", 40)))

    async def cmd_presence_open(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Opens ``user``'s first stream; returns when the call started and when it was ready."""
        user = str(args["user"])
        self.token(user)  # mint before taking the start time
        t0 = time.monotonic_ns()
        stream = await self._open(user, timeout=30)
        self.streams[user] = stream
        return {"t0_ns": t0, "ready_ns": stream.ready.result()}

    # -- commands: bare NATS floor -------------------------------------------------------

    async def cmd_floor_listen(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Connects to the region's NATS as ``bench`` and subscribes the floor subjects.

        In the primary region it also relays ``bench.floor.up.<dst>.<src>`` to
        ``bench.floor.v.<dst>.<src>``: the same route chatmesh's events take
        (sender's region -> primary -> receiver's region), minus chatmesh.
        """
        self.nats = await connect(
            list(args["servers"]),
            name=f"bench-{self.name}",
            user=args["user"],
            password=args["password"],
            pending_size=64 * 1024 * 1024,
        )
        nc = self.nats
        region = self.region

        def recorder(mode: str) -> Callable[[Msg], Awaitable[None]]:
            async def on_msg(msg: Msg) -> None:
                now = time.monotonic_ns()
                phase, t_ns = msg.data.decode().split(" ", 1)
                src = msg.subject.rsplit(".", 1)[1]
                by_mode = self.floor_samples.setdefault(phase, {}).setdefault(mode, {})
                by_mode.setdefault(src, []).append((now - int(t_ns)) // 1000)

            return on_msg

        await nc.subscribe(
            f"bench.floor.d.{region}.*", cb=recorder("direct"), pending_msgs_limit=-1
        )
        await nc.subscribe(f"bench.floor.v.{region}.*", cb=recorder("via"), pending_msgs_limit=-1)
        if args.get("relay"):

            async def relay(msg: Msg) -> None:
                _, _, _, dst, src = msg.subject.split(".")
                await nc.publish(f"bench.floor.v.{dst}.{src}", msg.data)

            await nc.subscribe("bench.floor.up.*.*", cb=relay, pending_msgs_limit=-1)
        await nc.flush()
        return {}

    async def cmd_floor_send(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Publishes timestamped messages to every region, alternating direct and via-primary."""
        assert self.nats is not None, "floor_listen first"
        nc = self.nats
        phase = str(args["phase"])
        rate = float(args["rate"])
        duration = float(args["duration"])
        dsts: list[str] = args["regions"]
        count = max(2, int(rate * duration))
        src = self.region
        async for n, _ in paced(count, rate, time.monotonic_ns() + 10_000_000):
            dst = dsts[(n // 2) % len(dsts)]
            payload = f"{phase} {time.monotonic_ns()}".encode()
            if n % 2 == 0:
                await nc.publish(f"bench.floor.d.{dst}.{src}", payload)
            else:
                await nc.publish(f"bench.floor.up.{dst}.{src}", payload)
        await nc.flush()
        return {"published": count}

    async def cmd_floor_samples(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Returns (and forgets) a floor phase's latencies: mode -> source region -> us."""
        return {"samples": self.floor_samples.pop(str(args["phase"]), {})}

    # -- commands: single-region scenario ---------------------------------------------------

    async def cmd_unary_load(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Closed-loop SendMessage or GetHistory calls at a fixed concurrency for a duration.

        ``concurrency`` callers each issue one call after the other (a call starts
        when the previous one answered) for ``duration`` seconds; each call takes
        a random ``(user, channel)`` pair of ``choices``. Returns the latencies
        (us) of the calls that succeeded and the failures by code.
        """
        op = str(args["op"])
        duration = float(args["duration"])
        concurrency = int(args["concurrency"])
        choices: list[list[str]] = args["choices"]
        limit = int(args.get("limit", 50))
        rng = random.Random(int(args.get("seed", 1)))
        latencies: list[int] = []
        sizes: list[int] = []
        errors: dict[str, int] = {}
        t_start = time.monotonic_ns()
        end = t_start + int(duration * 1e9)

        async def caller() -> None:
            while time.monotonic_ns() < end:
                user, channel = choices[rng.randrange(len(choices))]
                t0 = time.monotonic_ns()
                try:
                    if op == "send":
                        await self.command(user).send_message(channel, f"load {t0}", timeout=10)
                    else:
                        resp = await self.query(user).get_history(channel, limit=limit, timeout=10)
                        sizes.append(len(resp.messages))
                except ChatmeshError as exc:
                    errors[exc.code] = errors.get(exc.code, 0) + 1
                    continue
                latencies.append((time.monotonic_ns() - t0) // 1000)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return {
            "latency_us": latencies,
            "errors": errors,
            "seconds": (time.monotonic_ns() - t_start) / 1e9,
            "min_messages": min(sizes, default=0),
        }

    async def cmd_nats_fanout_listen(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Subscribes ``subjects`` (one subscription per entry, repeats allowed) on bare NATS.

        Each received ``<phase> <t_ns>`` message is recorded like a chatmesh delivery
        (source ``nats``), so ``received`` and ``take_samples`` report both alike.
        """
        self.fanout_nats = nc = await connect(
            list(args["servers"]),
            name=f"bench-fanout-{self.name}",
            user=args["user"],
            password=args["password"],
            pending_size=64 * 1024 * 1024,
        )

        async def on_msg(msg: Msg) -> None:
            now = time.monotonic_ns()
            phase, t_ns = msg.data.decode().split(" ", 1)
            by_src = self.samples.setdefault(phase, {})
            by_src.setdefault("nats", []).append((now - int(t_ns)) // 1000)
            self.received[phase] = self.received.get(phase, 0) + 1

        for subject in args["subjects"]:
            await nc.subscribe(str(subject), cb=on_msg, pending_msgs_limit=-1)
        await nc.flush()
        return {"subscriptions": len(args["subjects"])}

    async def cmd_nats_fanout_send(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Publishes ``<phase> <t_ns>`` open-loop at ``rate`` msg/s to random ``subjects``."""
        if self.fanout_nats is None:
            self.fanout_nats = await connect(
                list(args["servers"]),
                name=f"bench-fanout-{self.name}",
                user=args["user"],
                password=args["password"],
            )
        nc = self.fanout_nats
        phase = str(args["phase"])
        rate = float(args["rate"])
        subjects: list[str] = args["subjects"]
        rng = random.Random(int(args.get("seed", 1)))
        count = max(1, int(rate * float(args["duration"])))
        lags_us: list[int] = []
        per_subject: dict[str, int] = {}
        async for _ in paced(count, rate, time.monotonic_ns() + 10_000_000, lags_us):
            subject = subjects[rng.randrange(len(subjects))]
            per_subject[subject] = per_subject.get(subject, 0) + 1
            await nc.publish(subject, f"{phase} {time.monotonic_ns()}".encode())
        await nc.flush()
        return {
            "published": count,
            "per_subject": per_subject,
            "lag_p99_ms": _percentile_ms(lags_us, 99),
        }

    # -- commands: routing table --------------------------------------------------------------

    async def cmd_load_memberships(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Writes synthetic channels straight into a SQLite metadata store.

        ``users`` users, each in ``per_user`` channels of ``channel_size``
        members: in each of ``per_user`` rounds the users are shuffled and cut
        into channels, so every user gets exactly ``per_user`` memberships.
        """
        t0 = time.monotonic()
        users = [f"{args['prefix']}u{i:06d}" for i in range(int(args["users"]))]
        per_user = int(args["per_user"])
        size = int(args["channel_size"])
        rng = random.Random(int(args["seed"]))
        now_ms = int(time.time() * 1000)
        # The schema is the SQLite metadata store's (mesh/stores/sqlite.py):
        # opening it through the store class creates any missing table.
        from mesh.stores.sqlite import SqliteMetadataStore

        store = SqliteMetadataStore(Path(args["db"]))
        await store.close()
        conn = sqlite3.connect(args["db"], isolation_level=None, timeout=30)
        channels = 0
        memberships = 0
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            for r in range(per_user):
                order = users[:]
                rng.shuffle(order)
                for start in range(0, len(order) - size + 1, size):
                    cid = f"ch_bench{r:02d}{start // size:019d}"  # matches ^ch_[0-9a-z]{26}$
                    members = order[start : start + size]
                    conn.execute(
                        "INSERT INTO channels (channel_id, name, created_by, created_at_ms, visibility, "
                        "last_seq, membership_seq, last_activity_ms) VALUES (?, ?, ?, ?, 1, 1, 1, ?)",
                        (cid, f"rt {r}-{start}", members[0], now_ms, now_ms),
                    )
                    conn.executemany(
                        "INSERT INTO members (channel_id, user_id) VALUES (?, ?)",
                        [(cid, m) for m in members],
                    )
                    channels += 1
                    memberships += len(members)
                rep.progress(round=r + 1, rounds=per_user)
            conn.execute("COMMIT")
        finally:
            conn.close()
        return {
            "channels": channels,
            "memberships": memberships,
            "seconds": time.monotonic() - t0,
        }

    async def cmd_fake_instances(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Registers synthetic notification instances' routes and keeps them alive.

        Each fake instance connects to its region's NATS (admin user), sends
        one RouteSnapshot request with its users (as a notification instance
        does after the Fan-Out's resync), then heartbeats every ``heartbeat_s``
        so the Fan-Out does not expire it; a reply asking for a resync gets a
        new snapshot, as the real instance would send.
        """
        prefix = str(args["prefix"])
        user_total = int(args["users"])
        instances: list[dict[str, Any]] = args["instances"]
        servers: dict[str, list[str]] = args["servers"]
        per = -(-user_total // len(instances))
        for i, spec in enumerate(instances):
            region = spec["region"]
            nc = await connect(
                servers[region],
                name=f"bench-fake-{spec['instance_id']}",
                user=args["user"],
                password=args["password"],
            )
            ids = [f"{prefix}u{j:06d}" for j in range(i * per, min(user_total, (i + 1) * per))]
            self.fakes.append(FakeInstance(spec["instance_id"], region, ids, nc))

        async def snapshot(fake: FakeInstance) -> None:
            snap = routing_pb2.RouteSnapshot(
                instance_id=fake.instance_id,
                region=fake.region,
                version=fake.version,
                user_ids=fake.user_ids,
            )
            t0 = time.monotonic_ns()
            reply = await fake.nc.request(
                Subjects.route_snapshot(fake.region, fake.instance_id),
                snap.SerializeToString(),
                timeout=60,
            )
            routing_pb2.RouteAck.FromString(reply.data)
            fake.snapshot_ms = (time.monotonic_ns() - t0) / 1e6

        t0 = time.monotonic()
        await asyncio.gather(*(snapshot(f) for f in self.fakes))
        registered = time.monotonic() - t0
        heartbeat = float(args.get("heartbeat_s", 1.0))

        async def beat(fake: FakeInstance) -> None:
            while True:
                await asyncio.sleep(heartbeat)
                hb = routing_pb2.InstanceHeartbeat(
                    instance_id=fake.instance_id,
                    region=fake.region,
                    version=fake.version,
                    user_count=len(fake.user_ids),
                )
                try:
                    reply = await fake.nc.request(
                        Subjects.route_heartbeat(fake.region, fake.instance_id),
                        hb.SerializeToString(),
                        timeout=5,
                    )
                    if routing_pb2.RouteAck.FromString(reply.data).resync_needed:
                        fake.resyncs += 1
                        await snapshot(fake)
                except Exception as exc:  # noqa: BLE001 - a missed beat is retried next second
                    logger.warning("fake instance %s heartbeat: %r", fake.instance_id, exc)

        self.fake_tasks = [asyncio.create_task(beat(f)) for f in self.fakes]
        return {
            "registered_s": registered,
            "snapshot_ms": {f.instance_id: f.snapshot_ms for f in self.fakes},
            "users_per_instance": per,
        }

    async def cmd_fake_stop(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Withdraws the fake instances' routes (as a stopping instance does) and disconnects.

        An empty snapshot makes the Fan-Out drop the routes quietly; merely going
        silent would make it expire the instances and announce every one of their
        users offline (tens of thousands of presence fan-outs).
        """
        for task in self.fake_tasks:
            task.cancel()
        for fake in self.fakes:
            fake.version += 1
            empty = routing_pb2.RouteSnapshot(
                instance_id=fake.instance_id, region=fake.region, version=fake.version
            )
            with contextlib.suppress(Exception):
                await fake.nc.request(
                    Subjects.route_snapshot(fake.region, fake.instance_id),
                    empty.SerializeToString(),
                    timeout=30,
                )
            with contextlib.suppress(Exception):
                await fake.nc.close()
        resyncs = sum(f.resyncs for f in self.fakes)
        self.fakes.clear()
        self.fake_tasks.clear()
        return {"resyncs": resyncs}

    async def cmd_get_route(self, args: dict[str, Any], rep: Reporter) -> dict[str, Any]:
        """Closed-loop FanoutService.GetRoute calls for random users; latencies in us."""
        rng = random.Random(int(args["seed"]))
        prefix = str(args["prefix"])
        users = int(args["users"])
        total = int(args["requests"])
        concurrency = int(args.get("concurrency", 1))
        latencies: list[int] = []
        routed = 0
        errors: dict[str, int] = {}
        issued = 0
        channel_to = internal_channel(
            args.get("fanout_identity"), args["fanout"], options=_channel_options()
        )
        async with channel_to as channel:
            stub = _stub(fgrpc.FanoutServiceStub, channel)

            async def client() -> None:
                nonlocal issued, routed
                while issued < total:
                    issued += 1
                    user = f"{prefix}u{rng.randrange(users):06d}"
                    t0 = time.monotonic_ns()
                    try:
                        resp = await stub.GetRoute(fpb.GetRouteRequest(user_id=user), timeout=10)
                    except grpc.aio.AioRpcError as exc:
                        errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                        continue
                    latencies.append((time.monotonic_ns() - t0) // 1000)
                    routed += 1 if resp.instances else 0

            await asyncio.gather(*(client() for _ in range(concurrency)))
        return {"latency_us": latencies, "routed": routed, "errors": errors}

    # -- lifecycle ---------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Closes every stream, channel and connection."""
        for task in self.fake_tasks:
            task.cancel()
        for fake in self.fakes:
            with contextlib.suppress(Exception):
                await fake.nc.close()
        for watch in self.watches.values():
            if watch.task is not None:
                watch.task.cancel()
        for stream in list(self.streams.values()):
            await self._close_stream(stream)
        self.streams.clear()
        for client in [*self.unary.values(), *self.stream_clients]:
            with contextlib.suppress(Exception):
                await client.close()
        for nc in (self.nats, self.fanout_nats):
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()

    def handlers(self) -> dict[str, Handler]:
        """Command name -> coroutine."""
        return {
            name[len("cmd_") :]: getattr(self, name)
            for name in dir(self)
            if name.startswith("cmd_")
        }


async def _serve(name: str) -> None:
    gen = LoadGen(name, out=sys.stdout)
    handlers = gen.handlers()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    running: set[asyncio.Task[None]] = set()

    async def run(call_id: int, cmd: str, args: dict[str, Any]) -> None:
        try:
            handler = handlers.get(cmd)
            if handler is None:
                raise ValueError(f"unknown command {cmd!r}")
            result = await handler(args, Reporter(gen, call_id))
            gen.emit({"id": call_id, "ok": True, "result": result})
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # every failure goes back to the caller
            logger.exception("command %s failed", cmd)
            gen.emit({"id": call_id, "ok": False, "error": f"{type(exc).__name__}: {exc}"})

    # A receiver holds a thousand streams: like the services, keep the collector
    # off what start-up made and collect the young generation less often (ADR-027).
    if os.environ.get("CHATMESH_GC", "tuned") != "default":
        tune_gc()
    gen.pauses.start()
    gen.emit({"ready": True, "pid": os.getpid()})
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            request = json.loads(line)
            if request.get("cmd") == "shutdown":
                break
            task = asyncio.create_task(
                run(int(request["id"]), request["cmd"], request.get("args") or {})
            )
            running.add(task)
            task.add_done_callback(running.discard)
    finally:
        for task in list(running):
            task.cancel()
        await gen.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m tools.bench.loadgen NAME``."""
    args = sys.argv[1:] if argv is None else argv
    name = args[0] if args else f"gen-{os.getpid()}"
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {name} %(name)s: %(message)s",
    )
    logging.getLogger("nats").setLevel(logging.WARNING)
    # The services' loop (uvloop): a receiver's CPU per delivery is mostly loop
    # callbacks and grpc.aio reads, and the bench reports it beside the servers'.
    event_loop.run(_serve(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
