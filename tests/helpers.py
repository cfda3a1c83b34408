"""Test helpers: polling instead of sleeping, token minting.

Status parsing lives in :mod:`mesh.rpc.status` (``from_rpc_error``); tests use it
rather than a copy of their own.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from mesh.core.auth import KeyDirectory, mint

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T] | T],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Polls ``check`` until it returns a truthy value (returned) or raises after ``timeout``.

    ``check`` is a coroutine function or a plain function (a condition on local state).
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - "not yet"; reported if it never succeeds
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)
        interval = min(interval * 1.5, 0.25)


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


class Auth:
    """Mints tokens for a mesh's key directory."""

    def __init__(self, keys: KeyDirectory) -> None:
        self.keys = keys

    def md(self, user: str, **claims: Any) -> tuple[tuple[str, str], ...]:
        """gRPC metadata carrying a fresh token for ``user``."""
        return (("authorization", f"Bearer {mint(self.keys, user, **claims)}"),)
