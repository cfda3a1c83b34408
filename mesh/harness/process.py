"""Child processes of the harness: started with a log file, stopped for certain.

Every server the harness runs (nats-server, valkey-server, Toxiproxy, Cassandra,
FerretDB, the chatmesh services) is a :class:`ManagedProcess`. It starts in its
own process group, writes stdout and stderr to one log file, and :meth:`stop`
sends SIGTERM, waits a bounded time, then SIGKILLs the whole group, so nothing
outlives the harness.

Example:
    >>> import asyncio, sys, tempfile, pathlib
    >>> async def demo() -> int:
    ...     log = pathlib.Path(tempfile.mkdtemp()) / "echo.log"
    ...     proc = ManagedProcess("echo", [sys.executable, "-c", "print('hi')"], log)
    ...     await proc.start()
    ...     return await proc.wait()
    >>> asyncio.run(demo())
    0
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["ManagedProcess", "ProcessFailed", "Supervised", "die_with_parent", "wait_until"]

logger = logging.getLogger(__name__)


_SETPRIV = shutil.which("setpriv")


def die_with_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped so the kernel SIGKILLs the process when the harness dies.

    A killed pytest or supervisor (even by SIGKILL) then leaves no servers
    behind. ``setpriv --pdeathsig`` (util-linux) sets the flag and execs the
    program, so no Python runs between fork and exec (a ``preexec_fn`` would,
    which is unsafe in a threaded parent). Without setpriv, ``argv`` unchanged.
    """
    if _SETPRIV is None or sys.platform != "linux":
        return list(argv)
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]


class ProcessFailed(RuntimeError):
    """A managed process exited or did not become ready; the message quotes its log."""


class ManagedProcess:
    """One child process with a log file and a guaranteed stop."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """Describes the process; nothing runs until :meth:`start`.

        Args:
            name: Short name used in logs and errors (e.g. ``nats-us-east-1``).
            argv: Program and arguments.
            log_path: File that receives stdout and stderr (appended).
            env: Extra environment variables on top of the harness's own.
            cwd: Working directory.
        """
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env or {})
        self.cwd = cwd
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        """The process id while running, else None."""
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    @property
    def returncode(self) -> int | None:
        """The exit status once exited, else None."""
        return self._proc.returncode if self._proc else None

    @property
    def running(self) -> bool:
        """True while the process has not exited."""
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        """Starts the process in its own process group.

        Raises:
            ProcessFailed: The program could not be executed.
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        with self.log_path.open("ab") as log:
            log.write(
                f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {self.name}: {' '.join(self.argv)}\n".encode()
            )
            log.flush()
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *die_with_parent(self.argv),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                    cwd=self.cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ProcessFailed(f"{self.name}: cannot execute {self.argv[0]}: {exc}") from exc
        logger.debug("started %s pid=%s", self.name, self._proc.pid)

    async def wait(self) -> int:
        """Waits for the process to exit and returns its status."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return await self._proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the log, for error messages."""
        try:
            data = self.log_path.read_bytes()[-64_000:]
        except OSError:
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raises ProcessFailed (with the log tail) if the process has exited."""
        if self._proc is not None and self._proc.returncode is not None:
            raise ProcessFailed(
                f"{self.name} exited with status {self._proc.returncode}; last log lines "
                f"({self.log_path}):\n{self.log_tail()}"
            )

    def signal(self, sig: int) -> None:
        """Sends ``sig`` to the process group (no-op if it has exited)."""
        if self._proc is None or self._proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stops the process: SIGTERM, then SIGKILL to its group after ``timeout`` seconds."""
        if self._proc is None:
            return
        if self._proc.returncode is None:
            self.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._proc.wait(), timeout)
            except TimeoutError:
                logger.warning("%s did not stop within %.0fs; killing it", self.name, timeout)
                self.signal(signal.SIGKILL)
                await self._proc.wait()
        # Whatever the leader left behind in its group goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)

    async def kill(self) -> None:
        """Kills the process group at once (SIGKILL), as a crash would."""
        if self._proc is None:
            return
        self.signal(signal.SIGKILL)
        await self._proc.wait()


class Supervised:
    """A server the harness keeps running: restarted when it dies unexpectedly, crashes counted.

    Subclasses set :attr:`name` and :attr:`process` and implement :meth:`start`
    (start the process and wait until it is ready). A process that crashes (a
    bug in a C extension, an out-of-memory kill) comes back with the same
    configuration; the log says it crashed and :attr:`crashes` counts it, so the
    test suite can fail on crashes nobody intended. Exits caused by
    :meth:`stop` or :meth:`kill` are left alone.
    """

    name: str
    process: ManagedProcess
    max_crashes = 5
    """Restarts before the watchdog gives up and leaves the process down."""

    def __init__(self) -> None:
        self.crashes = 0
        """Unexpected exits the watchdog restarted."""
        self._expected_exit = False
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 60.0) -> None:
        """Starts the process and waits until it is ready."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stops the process (SIGTERM, then SIGKILL)."""
        self._expected_exit = True
        await self.process.stop(timeout=15)

    async def kill(self) -> None:
        """Kills the process at once, as a crash would (the watchdog leaves it down)."""
        self._expected_exit = True
        await self.process.kill()

    async def restart(self, timeout: float = 60.0) -> None:
        """Starts the process again with the same config (after stop or kill)."""
        await self.start(timeout)

    def watch(self) -> None:
        """Restarts the process if it dies unexpectedly, as a process supervisor would."""
        self._expected_exit = False
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch(), name=f"watch-{self.name}")

    async def _watch(self) -> None:
        while True:
            status = await self.process.wait()
            if self._expected_exit:
                return
            self.crashes += 1
            logger.error("%s exited unexpectedly (status %s, crash #%d); restarting it. Log: %s",
                         self.name, status, self.crashes, self.process.log_path)  # fmt: skip
            if self.crashes > self.max_crashes:
                logger.error("%s keeps crashing; leaving it down", self.name)
                return
            try:
                await self.start()
            except Exception:  # reported; the next crash (if any) tries again
                logger.exception("restarting %s failed", self.name)
                return
            self._expected_exit = False


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    alive: Callable[[], None] | None = None,
) -> None:
    """Polls ``check`` until it returns True.

    Args:
        check: Async predicate; exceptions count as "not yet".
        timeout: Seconds before giving up.
        what: Description for the error message.
        interval: Pause between polls (grows to at most 0.5 s).
        alive: Called each round; raises if the awaited process died.

    Raises:
        TimeoutError: ``check`` stayed false for ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if alive is not None:
            alive()
        try:
            if await check():
                return
        except Exception as exc:  # noqa: BLE001 - any failure just means "not ready yet"
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"{what} not ready after {timeout:.1f}s{detail}")
        await asyncio.sleep(interval)
        interval = min(interval * 1.5, 0.5)
