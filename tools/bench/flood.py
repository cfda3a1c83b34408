"""``python -m tools.bench.flood TARGET TOKEN CHANNEL SECONDS RATE``: one flooding user.

Run as its own process by the ``flood`` scenario, so the flood's client work does not
share an event loop (or a GIL) with the user whose latency is measured. The flood is
open-loop: a send every ``1/RATE`` seconds whatever the answers (at most
:data:`MAX_IN_FLIGHT` at once; a send that would exceed it is counted as ``skipped``),
without retries. A fixed rate, not a closed loop, so the flood is the same on a fast
and a slow machine and the generator does not take a whole core of a shared 2-core
machine. Prints two JSON lines: ``{"ready": true, "pid": N}`` once its
connection through the edge is up (a read: no command token spent), just before the
first send, so the caller can start measuring as the flood (and the burst its bucket
admits) begins, not while this process is still importing; then ``outcomes``, the
count of each (``accepted``, ``RESOURCE_EXHAUSTED/RATE_LIMITED at the edge``,
``RESOURCE_EXHAUSTED/RATE_LIMITED`` from the Command Service ...), ``cpu_s`` (this
process's CPU seconds) and ``seconds``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from mesh.client import ChatClient, RetryPolicy
from mesh.core.errors import ChatmeshError
from tools.bench.loadgen import paced

__all__ = ["MAX_IN_FLIGHT", "flood"]

MAX_IN_FLIGHT = 256
"""Sends of the flood in flight at once, at most."""


async def flood(
    target: str, token: str, channel_id: str, seconds: float, rate: float
) -> dict[str, Any]:
    """Sends at ``rate`` per second for ``seconds``, no retries; counts outcomes."""
    client = ChatClient(target, token=token, retry=RetryPolicy.none())
    outcomes: dict[str, int] = {}
    in_flight: set[asyncio.Task[None]] = set()

    def count(key: str) -> None:
        outcomes[key] = outcomes.get(key, 0) + 1

    async def send(i: int) -> None:
        try:
            await client.send_message(channel_id, f"flood {i}", timeout=10)
            count("accepted")
        except ChatmeshError as err:
            # The edge's refusals say so (mesh.deploy.envoy's local replies).
            where = " at the edge" if "at this edge" in err.message else ""
            count(f"{err.code}/{err.reason}{where}")

    try:
        await client.get_channel(channel_id, timeout=10)
        print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
        cpu0, t0 = time.process_time(), time.perf_counter()
        async for i, _ in paced(int(seconds * rate), rate, time.monotonic_ns()):
            if len(in_flight) >= MAX_IN_FLIGHT:
                count("skipped")
                continue
            task = asyncio.create_task(send(i))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight)
    finally:
        await client.close()
    return {
        "outcomes": outcomes,
        "cpu_s": round(time.process_time() - cpu0, 3),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def main(argv: list[str]) -> int:
    """Entry point (see the module docstring)."""
    target, token, channel_id, seconds, rate = argv
    result = asyncio.run(flood(target, token, channel_id, float(seconds), float(rate)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
