"""Where one delivery's time goes, hop by hop: ``python -m tools.bench.hops``.

Starts the ``single`` topology (the bench's limits, the real edge), opens one
Subscribe stream per member of a few channels through the edge, and listens on
NATS as the admin user to the channel events (the Command Service's JetStream
publish) and the delivery subjects (the Fan-Out's publish to the notification
instance). Then it sends open-loop at ``--rate`` messages/s and reports, for
every send, when each hop was seen (all clocks ``CLOCK_MONOTONIC``, one clock
for every process of the machine): the edge/command path up to the event on
NATS, the Fan-Out's hop, the notification instance + edge + client hop, and the
SendMessage ack. The NATS observer adds its own dispatch (~0.3 ms, the floor's
figure) to the middle hops. ADR-027 records what it showed.

Example:
    $ flock /tmp/bench.lock .venv/bin/python -m tools.bench.hops --rate 20 --count 200
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from chatmesh.internal.v1 import routing_pb2
from chatmesh.v1 import channel_pb2, events_pb2
from mesh.client import ChatClient, RetryPolicy
from mesh.core.auth import KeyDirectory, mint
from mesh.harness.daemon import default_hooks
from mesh.harness.services import ServiceSettings
from mesh.harness.supervisor import Mesh
from mesh.topology import load
from tools.bench import single
from tools.bench.stats import summarize

__all__ = ["main"]

NO_RETRY = RetryPolicy.none()


def _text_of(event: events_pb2.Event) -> str | None:
    if event.WhichOneof("payload") == "message_created":
        return str(event.message_created.message.text)
    return None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Starts the mesh, measures, returns per-hop summaries (ms)."""
    topology = load("single")
    topology = dataclasses.replace(topology, limits=single.bench_limits(topology.limits))
    run_dir = Path(tempfile.mkdtemp(prefix="chatmesh-hops-"))
    seen: dict[str, dict[str, int]] = {}
    async with Mesh(topology, run_dir, hooks=default_hooks("embedded", ServiceSettings())) as mesh:
        region = mesh.topology.region_names[0]
        edge = mesh.endpoints[region]["edge"]
        keys = KeyDirectory(run_dir / "keys")
        users = [f"u{i:03d}" for i in range(args.channels * args.size)]
        groups = [users[i : i + args.size] for i in range(0, len(users), args.size)]

        def client(user: str) -> ChatClient:
            return ChatClient.from_edge(
                edge, token=mint(keys, user), retry=NO_RETRY, stream_retry=NO_RETRY
            )

        creators = [client(g[0]) for g in groups]
        channels = [
            str(
                (
                    await c.create_channel(
                        f"hops {i}", g[1:], visibility=channel_pb2.CHANNEL_VISIBILITY_PRIVATE
                    )
                ).channel.channel_id
            )
            for i, (c, g) in enumerate(zip(creators, groups, strict=True))
        ]
        nc = await mesh.nats_client(region)

        async def on_event(msg: Any) -> None:
            now = time.monotonic_ns()
            text = _text_of(events_pb2.Event.FromString(msg.data))
            if text and text in seen:
                seen[text].setdefault("js", now)

        async def on_delivery(msg: Any) -> None:
            now = time.monotonic_ns()
            text = _text_of(routing_pb2.Delivery.FromString(msg.data).event)
            if text and text in seen:
                seen[text].setdefault("dlv", now)

        await nc.subscribe("chatmesh.evt.ch.>", cb=on_event)
        await nc.subscribe("chatmesh.dlv.>", cb=on_delivery)
        await nc.flush()
        readers = []
        ready: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        for user in users:
            sub = client(user).subscribe(reconnect=False, heartbeat_watchdog=False)
            fut: asyncio.Future[None] = loop.create_future()
            ready.append(fut)

            async def read(sub: Any = sub, fut: asyncio.Future[None] = fut) -> None:
                async for item in sub.responses():
                    now = time.monotonic_ns()
                    kind = item.WhichOneof("kind")
                    if kind == "replay_complete" and not fut.done():
                        fut.set_result(None)
                    elif kind == "event":
                        text = _text_of(item.event)
                        if text and text in seen:
                            seen[text]["last_client"] = now
                            seen[text].setdefault("first_client", now)

            readers.append(asyncio.create_task(read()))
        await asyncio.wait_for(asyncio.gather(*ready), 60)
        senders = [client(g[0]) for g in groups]
        acks: list[asyncio.Task[None]] = []

        async def send(n: int) -> None:
            text = f"hops {n}"
            t0 = time.monotonic_ns()
            seen[text] = {"t0": t0}
            await senders[n % len(senders)].send_message(channels[n % len(channels)], text)
            seen[text]["ack"] = time.monotonic_ns()

        start = time.monotonic_ns() + 50_000_000
        for n in range(args.count):
            due = start + int(n * 1e9 / args.rate)
            delay = (due - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            acks.append(asyncio.create_task(send(n)))
        await asyncio.gather(*acks)
        await asyncio.sleep(0.5)
        for task in readers:
            task.cancel()

    def hop(a: str, b: str) -> dict[str, Any]:
        return summarize(
            [(v[b] - v[a]) // 1000 for v in seen.values() if a in v and b in v and v[b] >= v[a]]
        )

    return {
        "rate": args.rate,
        "count": args.count,
        "send -> event on NATS (edge, command: auth, checks, log append, JetStream publish)": hop(
            "t0", "js"
        ),
        "event -> delivery on NATS (fan-out)": hop("js", "dlv"),
        "delivery -> first client (notification, edge, client)": hop("dlv", "first_client"),
        "first -> last client of the channel": hop("first_client", "last_client"),
        "send -> ack (SendMessage)": hop("t0", "ack"),
        "send -> first client": hop("t0", "first_client"),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m tools.bench.hops")
    parser.add_argument("--rate", type=float, default=20.0, help="sends per second")
    parser.add_argument("--count", type=int, default=200, help="sends")
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--size", type=int, default=10, help="members per channel")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    for name, value in result.items():
        if isinstance(value, dict):
            print(
                f"{name}: p50 {value.get('p50_ms')} / p99 {value.get('p99_ms')} ms (n={value.get('n')})"
            )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
