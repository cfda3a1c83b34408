"""The orchestrator's handle on a load-generator process (:mod:`tools.bench.loadgen`).

Example:
    >>> async def demo(log: Path) -> None:  # doctest: +SKIP
    ...     gen = LoadGenProcess("gen-eu", "eu", log)
    ...     await gen.start()
    ...     try:
    ...         await gen.call("init", {...}, timeout=10)
    ...     finally:
    ...         await gen.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from mesh.harness.paths import repo_root

__all__ = ["LoadGenError", "LoadGenProcess"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[dict[str, Any]], None]


class LoadGenError(RuntimeError):
    """A generator command failed, or the generator process died."""


class LoadGenProcess:
    """One ``python -m tools.bench.loadgen`` child speaking JSON lines."""

    def __init__(self, name: str, region: str, log_path: Path) -> None:
        """Describes the process; :meth:`start` launches it.

        Args:
            name: Shown in logs and CPU tables (``gen-eu``).
            region: Region whose clients it plays.
            log_path: Receives the process's stderr (its log).
        """
        self.name = name
        self.region = region
        self.log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._progress: dict[int, ProgressCallback] = {}
        self._next_id = 0
        self._ready: asyncio.Future[int] | None = None

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    async def start(self, timeout: float = 30.0) -> None:
        """Launches the process and waits for its ``ready`` line."""
        root = repo_root()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(root), str(root / "gen" / "python")]),
            "PYTHONUNBUFFERED": "1",
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115, ASYNC230 - closed in close(); a local file
        self._ready = asyncio.get_running_loop().create_future()
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tools.bench.loadgen",
            self.name,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
            cwd=root,
            env=env,
            # Own session: a Ctrl-C in the terminal reaches only the orchestrator,
            # which then closes the generators in order instead of racing them.
            start_new_session=True,
            limit=256 * 1024 * 1024,
        )
        self._reader = asyncio.create_task(self._read(), name=f"{self.name}-reader")
        await asyncio.wait_for(asyncio.shield(self._ready), timeout)

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            while True:
                line = await self._proc.stdout.readline()
                if not line:
                    break
                msg = json.loads(line)
                if msg.get("ready"):
                    if self._ready is not None and not self._ready.done():
                        self._ready.set_result(int(msg["pid"]))
                    continue
                call_id = int(msg.get("id", -1))
                if "progress" in msg:
                    callback = self._progress.get(call_id)
                    if callback is not None:
                        callback(msg["progress"])
                    continue
                future = self._pending.pop(call_id, None)
                self._progress.pop(call_id, None)
                if future is None or future.done():
                    continue
                if msg.get("ok"):
                    future.set_result(msg.get("result") or {})
                else:
                    future.set_exception(LoadGenError(f"{self.name}: {msg.get('error')}"))
        finally:
            error = LoadGenError(f"{self.name} exited (see {self.log_path})")
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(error)
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)
            self._pending.clear()

    async def call(
        self,
        cmd: str,
        args: dict[str, Any] | None = None,
        *,
        timeout: float,
        progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """Runs a generator command and returns its result.

        Raises:
            LoadGenError: The command failed or the process died.
            TimeoutError: No answer within ``timeout`` seconds.
        """
        if self._proc is None or self._proc.stdin is None or self._proc.returncode is not None:
            raise LoadGenError(f"{self.name} is not running")
        self._next_id += 1
        call_id = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        if progress is not None:
            self._progress[call_id] = progress
        line = json.dumps({"id": call_id, "cmd": cmd, "args": args or {}}) + "\n"
        self._proc.stdin.write(line.encode())
        await self._proc.stdin.drain()
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(call_id, None)
            self._progress.pop(call_id, None)

    async def close(self, timeout: float = 15.0) -> None:
        """Asks the process to exit (closing its streams), then terminates it if needed."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(Exception):
                assert proc.stdin is not None
                proc.stdin.write(b'{"cmd": "shutdown"}\n')
                await proc.stdin.drain()
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                logger.warning("%s did not exit; killing it", self.name)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._log is not None:
            self._log.close()
            self._log = None
