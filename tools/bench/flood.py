"""``python -m tools.bench.flood TARGET TOKEN CHANNEL SECONDS CONCURRENCY``: one flooding user.

Run as its own process by the ``flood`` scenario, so the flood's client work does not
share an event loop (or a GIL) with the user whose latency is measured. Prints one JSON
object: the count of each outcome (``accepted``, ``RESOURCE_EXHAUSTED/RATE_LIMITED`` ...).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from mesh.client import ChatClient, RetryPolicy
from mesh.core.errors import ChatmeshError

__all__ = ["flood"]


async def flood(
    target: str, token: str, channel_id: str, seconds: float, concurrency: int
) -> dict[str, int]:
    """Keeps ``concurrency`` sends in flight for ``seconds``, no retries; counts outcomes."""
    client = ChatClient(target, token=token, retry=RetryPolicy.none())
    outcomes: dict[str, int] = {}
    deadline = time.monotonic() + seconds

    async def worker(w: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            i += 1
            try:
                await client.send_message(channel_id, f"flood {w}.{i}", timeout=10)
                key = "accepted"
            except ChatmeshError as err:
                key = f"{err.code}/{err.reason}"
            outcomes[key] = outcomes.get(key, 0) + 1

    try:
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    finally:
        await client.close()
    return outcomes


def main(argv: list[str]) -> int:
    """Entry point (see the module docstring)."""
    target, token, channel_id, seconds, concurrency = argv
    result = asyncio.run(flood(target, token, channel_id, float(seconds), int(concurrency)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
