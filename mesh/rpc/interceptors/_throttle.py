"""Per-client log throttling: a client sending garbage must not be able to flood the logs.

Example:
    >>> throttle = Throttle(interval=10.0)
    >>> throttle.admit(("alice", "INVALID_ARGUMENT"))  # first one: log it
    0
    >>> throttle.admit(("alice", "INVALID_ARGUMENT")) is None  # within 10 s: suppressed
    True
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import grpc

__all__ = ["Throttle", "client_of"]


class Throttle:
    """Admits one event per key per interval and counts the ones it suppressed."""

    def __init__(
        self,
        interval: float = 10.0,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Args: interval in seconds; at most ``max_keys`` keys remembered (oldest forgotten)."""
        self.interval = interval
        self._max_keys = max_keys
        self._clock = clock
        self._keys: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()
        """Key -> (when one was last admitted, how many were suppressed since)."""

    def admit(self, key: Hashable) -> int | None:
        """None if this event should not be logged; else how many were suppressed before it."""
        now = self._clock()
        last = self._keys.get(key)
        if last is not None and now - last[0] < self.interval:
            self._keys[key] = (last[0], last[1] + 1)
            return None
        self._keys[key] = (now, 0)
        self._keys.move_to_end(key)
        while len(self._keys) > self._max_keys:
            self._keys.popitem(last=False)
        return last[1] if last is not None else 0


def client_of(
    user_id: str | None, context: grpc.aio.ServicerContext[Any, Any], peer: str = ""
) -> str:
    """Who a call came from, for throttling: the authenticated user, else the peer's host.

    Args:
        user_id: The caller's verified user id, if the call got that far.
        context: The call (its peer is read only when ``peer`` is not given).
        peer: The peer address if already read (``ipv4:127.0.0.1:5000``).
    """
    if user_id:
        return f"user:{user_id}"
    if not peer and not (context.cancelled() or context.done()):
        peer = str(context.peer())
    host = peer.rsplit(":", 1)[0] if peer.count(":") > 1 else peer
    return f"peer:{host or '-'}"
