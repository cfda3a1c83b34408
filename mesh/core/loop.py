"""How every service process runs its event loop: uvloop, in one place.

uvloop's loop (libuv, in C) schedules callbacks, timers and socket I/O for a
fraction of the CPU the pure-Python default loop spends; on the streaming path
every delivery is several loop callbacks. ``CHATMESH_EVENT_LOOP=asyncio`` runs
the default loop instead (to compare, or to debug with asyncio's own tools).

Example:
    >>> async def main() -> int:
    ...     return 7
    >>> run(main())
    7
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

__all__ = ["run"]

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Runs ``main`` to completion on a new event loop (uvloop unless disabled) and returns its result."""
    if os.environ.get("CHATMESH_EVENT_LOOP", "uvloop") == "asyncio":
        return asyncio.run(main)
    return uvloop.run(main)
