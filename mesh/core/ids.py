"""Identifiers: time-ordered, lowercase, safe in NATS subjects and URLs.

``<prefix>_`` + 26 characters of Crockford base32 in lowercase: 48 bits of
milliseconds then 80 random bits (the ULID layout), so ids sort by creation
time. Deterministic ids (:func:`derived`) hash their inputs instead, for
idempotency: the same ``(sender, client_msg_id)`` always names the same message.

Example:
    >>> new("ch").startswith("ch_") and len(new("ch")) == 29
    True
    >>> derived("msg", "alice", "k1") == derived("msg", "alice", "k1")
    True
"""

from __future__ import annotations

import hashlib
import os
import time

__all__ = ["derived", "new"]

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new(prefix: str) -> str:
    """A fresh time-ordered id such as ``ch_01hzx...``."""
    millis = int(time.time() * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    return f"{prefix}_{_encode((millis << 80) | rand, 26)}"


def derived(prefix: str, *parts: str) -> str:
    """A deterministic id from ``parts`` (length-prefixed, so parts cannot run together)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode()
        h.update(len(data).to_bytes(4, "big"))
        h.update(data)
    return f"{prefix}_{_encode(int.from_bytes(h.digest()[:17], 'big') >> 6, 26)}"
