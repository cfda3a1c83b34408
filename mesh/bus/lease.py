"""A write lease in NATS KV: at most one active instance of a service, the others on standby.

ADR-019: two Command Services (and two Fan-Out Services) run in the primary; the one
holding the lease key (``command``, ``fanout``) in the ``LEASES`` bucket serves,
the other waits. Every step is a compare-and-set on the key's revision, so two
instances can never both succeed at taking it:

* **acquire**: ``create`` (the key does not exist, or was released), or — when the
  holder stopped renewing — ``update(last=revision)`` of the revision the standby
  watched stay unchanged for ``ttl`` seconds *of its own clock* (no comparison of
  clocks between hosts);
* **renew**: ``update(last=my revision)`` every ``ttl / 4``; a wrong-revision answer
  means another instance took it: the lease is lost at once. A renewal that gets no
  answer (the bucket's stream is electing a leader) only lets the fence run out;
  the first renewal that succeeds again resumes the lease (its compare-and-set on
  our own revision proves nobody took it meanwhile);
* **validity** (the fence): the holder counts its lease valid until ``ttl *
  safety`` seconds after it *sent* its last successful renewal. A standby waits at
  least ``ttl`` after it first *saw* that revision, which is later than the send,
  so the old holder stops committing before a new one can start, even if it was
  paused (``SIGSTOP``, a long GC) with a commit in hand: it checks :meth:`held`
  right before it writes, and a paused process's clock has moved on when it resumes;
* **release** (graceful stop): ``delete(last=my revision)``, so the standby's next
  ``create`` succeeds without waiting out the ttl.

Example:
    >>> async def demo(nc) -> None:  # doctest: +SKIP
    ...     lease = Lease(await kv_lease_store(nc), "command", "command-us-east-1/ab12")
    ...     task = asyncio.create_task(lease.run(on_acquired=..., on_lost=...))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from nats.aio.client import Client as NATS

from mesh.topology import Topology

__all__ = [
    "LEASE_BUCKET",
    "Lease",
    "LeaseConflict",
    "LeaseStore",
    "NatsLeaseStore",
    "kv_lease_store",
    "lease_stream_config",
]

logger = logging.getLogger(__name__)

LEASE_BUCKET = "LEASES"
"""The KV bucket (stream ``KV_LEASES``) holding one key per active/standby service kind."""


class LeaseConflict(Exception):
    """A compare-and-set lost: the key's revision is not the one expected."""


class LeaseStore(Protocol):
    """The three compare-and-set operations a lease needs (NATS KV in production)."""

    async def get(self, key: str) -> tuple[bytes, int] | None:
        """``(value, revision)`` of the key, None if absent or deleted."""
        ...

    async def create(self, key: str, value: bytes) -> int:
        """Writes the key if absent; returns the revision. Raises LeaseConflict."""
        ...

    async def update(self, key: str, value: bytes, last: int) -> int:
        """Writes the key if its revision is ``last``; returns the new one. Raises LeaseConflict."""
        ...

    async def delete(self, key: str, last: int) -> None:
        """Deletes the key if its revision is ``last``. Raises LeaseConflict."""
        ...


class NatsLeaseStore:
    """:class:`LeaseStore` over a nats-py KV bucket."""

    def __init__(self, kv: Any, timeout: float) -> None:
        self._kv = kv
        self._timeout = timeout

    async def get(self, key: str) -> tuple[bytes, int] | None:
        from nats.js.errors import KeyDeletedError, KeyNotFoundError

        try:
            entry = await asyncio.wait_for(self._kv.get(key), self._timeout)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        return bytes(entry.value or b""), int(entry.revision)

    async def create(self, key: str, value: bytes) -> int:
        from nats.js.errors import KeyWrongLastSequenceError

        try:
            return int(await asyncio.wait_for(self._kv.create(key, value), self._timeout))
        except KeyWrongLastSequenceError as exc:
            raise LeaseConflict(str(exc)) from exc

    async def update(self, key: str, value: bytes, last: int) -> int:
        from nats.js.errors import KeyWrongLastSequenceError

        try:
            return int(await asyncio.wait_for(self._kv.update(key, value, last), self._timeout))
        except KeyWrongLastSequenceError as exc:
            raise LeaseConflict(str(exc)) from exc

    async def delete(self, key: str, last: int) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        try:
            await asyncio.wait_for(self._kv.delete(key, last=last), self._timeout)
        except KeyWrongLastSequenceError as exc:
            raise LeaseConflict(str(exc)) from exc


def lease_stream_config(topology: Topology) -> dict[str, Any]:
    """JetStream config (JSON API shape) of the lease bucket's stream, placed in the primary.

    The shape nats-py's ``create_key_value`` makes (history 1, rollups, direct gets),
    with the EVENTS stream's replicas: a lease must survive what EVENTS survives.
    """
    config: dict[str, Any] = {
        "name": f"KV_{LEASE_BUCKET}",
        "subjects": [f"$KV.{LEASE_BUCKET}.>"],
        "retention": "limits",
        "storage": "file",
        "num_replicas": topology.nats.events_replicas,
        "max_msgs_per_subject": 1,
        "discard": "new",
        "deny_delete": True,
        "deny_purge": False,
        "allow_rollup_hdrs": True,
        "allow_direct": True,
        "duplicate_window": 2 * 60 * 1_000_000_000,
        "placement": {"tags": [f"region:{topology.primary}"]},
    }
    if len(topology.regions) == 1 and topology.region(topology.primary).nats_nodes == 1:
        del config["placement"]
    return config


async def kv_lease_store(nc: NATS, *, timeout: float = 1.0, wait: float = 30.0) -> NatsLeaseStore:
    """The lease bucket (created by the deployment) as a :class:`LeaseStore`; waits for it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            kv = await nc.jetstream(timeout=timeout).key_value(LEASE_BUCKET)
            return NatsLeaseStore(kv, timeout)
        except Exception:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.25)


Callback = Callable[[], Awaitable[None]]


class Lease:
    """One instance's side of a lease key (see the module docstring for the protocol)."""

    def __init__(
        self,
        store: LeaseStore,
        key: str,
        holder: str,
        *,
        ttl: float = 2.0,
        safety: float = 0.75,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Describes the lease; nothing happens until :meth:`step` or :meth:`run`.

        Args:
            store: The KV bucket.
            key: What is leased (``command``, ``fanout``).
            holder: This instance's name, unique per process (name/random).
            ttl: Seconds a standby waits, after it first saw a revision unchanged, before
                it takes over.
            safety: Fraction of ``ttl`` the holder counts its lease valid after it sent
                a renewal (below 1: it stops before anyone else can start).
            clock: Monotonic seconds.
        """
        if not 0 < safety < 1:
            raise ValueError("safety must be between 0 and 1")
        self.store = store
        self.key = key
        self.holder = holder
        self.ttl = ttl
        self.safety = safety
        self._clock = clock
        self.revision: int | None = None
        """The revision this instance wrote last while holding the lease."""
        self._valid_until = 0.0
        self._seen: tuple[int, float] | None = None
        self._suspended = False
        self.acquisitions = 0
        """Times this instance took the lease."""

    def held(self) -> bool:
        """Whether this instance may write now (the fence: check it right before a commit)."""
        return self.revision is not None and self._clock() < self._valid_until

    async def step(self) -> bool | None:
        """One round: renew, or watch and maybe take over.

        Returns:
            True if the lease was acquired in this round, False if it was lost, None if
            nothing changed.
        """
        if self.revision is not None:
            sent = self._clock()
            try:
                self.revision = await self.store.update(
                    self.key, self.holder.encode(), self.revision
                )
            except LeaseConflict:
                logger.warning("lease %s: taken by another instance; standing down", self.key)
                return self._lose()
            except Exception as exc:  # noqa: BLE001 - NATS down: the fence runs out by itself
                # Suspended, not lost: held() is false once the validity has run out, and
                # the next renewal that succeeds (compare-and-set on our own revision,
                # so nobody took it meanwhile) resumes without a takeover's wait.
                if not self.held() and not self._suspended:
                    self._suspended = True
                    logger.warning("lease %s: could not renew in time (%s); suspended until "
                                   "a renewal succeeds", self.key, exc)  # fmt: skip
                return None
            if self._suspended:
                self._suspended = False
                logger.info("lease %s: renewed again; resumed", self.key)
            self._valid_until = sent + self.ttl * self.safety
            return None
        sent = self._clock()
        try:
            current = await self.store.get(self.key)
            if current is None:
                revision = await self.store.create(self.key, self.holder.encode())
                return self._acquire(revision, sent, "free")
            value, revision = current
            if self._seen is None or self._seen[0] != revision:
                self._seen = (revision, sent)
                return None
            if sent - self._seen[1] < self.ttl:
                return None
            revision = await self.store.update(self.key, self.holder.encode(), revision)
            return self._acquire(revision, sent, f"expired (was {value.decode(errors='replace')})")
        except LeaseConflict:
            self._seen = None
            return None
        except Exception as exc:  # noqa: BLE001 - retried next round
            logger.debug("lease %s: %s", self.key, exc)
            return None

    def _acquire(self, revision: int, sent: float, why: str) -> bool:
        self.revision = revision
        self._valid_until = sent + self.ttl * self.safety
        self._seen = None
        self.acquisitions += 1
        logger.info(
            "lease %s acquired by %s (%s), revision %d", self.key, self.holder, why, revision
        )
        return True

    def _lose(self) -> bool:
        self._suspended = False
        self.revision = None
        self._valid_until = 0.0
        self._seen = None
        return False

    async def release(self) -> None:
        """Gives the lease up (graceful stop) so a standby takes it without waiting."""
        revision, self.revision = self.revision, None
        self._valid_until = 0.0
        if revision is not None:
            with contextlib.suppress(Exception):
                await self.store.delete(self.key, revision)

    async def run(self, *, on_acquired: Callback, on_lost: Callback) -> None:
        """Steps every ``ttl / 4`` seconds forever, calling back on every change."""
        while True:
            changed = await self.step()
            if changed is True:
                await on_acquired()
            elif changed is False:
                await on_lost()
            await asyncio.sleep(self.ttl / 4)
