"""Build and run FerretDB (MongoDB wire protocol on SQLite) for tests and local stores.

chatmesh's metadata store speaks the MongoDB wire protocol. Real MongoDB cannot be
installed from the registries this project may use, so tests and the local
"production stores" mode run FerretDB v1.24.2 (the last 1.x release, the last one
that runs on SQLite) instead. This module builds it once per machine from the Go
module proxy and manages one server process: free loopback ports, data, state and
log under one directory, readiness by a real ``ping`` over the wire protocol, and a
stop that leaves no process behind.

The server announces itself as the primary of a one-member replica set (``rs0``
unless told otherwise), so the store can use the same connection string shape as
production (``replicaSet=...&readPreference=nearest``); ``directConnection=true``
works too.

Example:
    >>> import asyncio, tempfile
    >>> from pathlib import Path
    >>> from mesh.harness.servers.ferretdb import FerretDB
    >>> async def main() -> str:
    ...     with tempfile.TemporaryDirectory() as tmp:
    ...         async with FerretDB(Path(tmp)) as server:
    ...             return server.uri
    >>> asyncio.run(main()).startswith("mongodb://127.0.0.1:")  # doctest: +SKIP
    True

Command line: ``python -m mesh.harness.servers.ferretdb build`` builds (or finds) the binary and
prints its path; ``python -m mesh.harness.servers.ferretdb run DIR`` serves until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Coroutine, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from mesh.core.versions import FERRETDB_VERSION
from mesh.harness.paths import cache_dir
from mesh.harness.ports import allocate
from mesh.harness.process import die_with_parent

__all__ = [
    "FERRETDB_VERSION",
    "FerretDB",
    "FerretDBBuildError",
    "FerretDBError",
    "cached_ferretdb",
    "ensure_ferretdb",
    "wire_ping",
]

logger = logging.getLogger(__name__)


_MODULE = "github.com/FerretDB/FerretDB"
_MIN_GO = (1, 24)  # FerretDB v1.24.2's go.mod says "go 1.24"
_BUILD_TIMEOUT_S = 900.0  # a cold build on 2 cores with module downloads took ~75 s
_LOCK_WAIT_S = _BUILD_TIMEOUT_S + 60.0
_LOCK_POLL_S = 0.25
_LOG_TAIL_LINES = 25

# OP_MSG (MongoDB wire protocol) constants used by the readiness ping.
_OP_MSG = 2013
_HEADER = struct.Struct("<iiii")
_MAX_REPLY_BYTES = 16 * 1024 * 1024


class FerretDBError(RuntimeError):
    """FerretDB could not be started, did not become ready, or failed while running."""


class FerretDBBuildError(FerretDBError):
    """The FerretDB binary could not be built (Go missing or too old, build failed)."""


# --------------------------------------------------------------------------- build


def ensure_ferretdb(cache: Path | None = None) -> Path:
    """Returns the FerretDB binary, building it from the Go module proxy on first use.

    The binary lives at ``<cache>/bin/ferretdb-v1.24.2``. It is built into a temporary
    directory and moved into place with one ``rename``, so a reader never sees a half
    written file; a lock file keeps two processes from building at the same time (the
    second one waits and then reuses the first one's result).

    Args:
        cache: The per-machine cache root; defaults to :func:`mesh.harness.paths.cache_dir`.

    Returns:
        Path of the executable.

    Raises:
        FerretDBBuildError: ``go`` is not on ``PATH`` or is older than 1.24, the build
            failed or timed out, another build held the lock for too long, or the
            built binary does not report the pinned version.
    """
    target = _binary_path(cache)
    if _is_executable(target):
        return target
    bin_dir = target.parent
    bin_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(bin_dir / f".ferretdb-{FERRETDB_VERSION}.lock", _LOCK_WAIT_S):
        # Another process may have finished the build while we waited for the lock.
        if _is_executable(target):
            return target
        go = _find_go()
        started = time.monotonic()
        logger.info("building FerretDB %s with %s (takes about a minute)", FERRETDB_VERSION, go)
        with tempfile.TemporaryDirectory(prefix=".ferretdb-build-", dir=bin_dir) as tmp:
            built = _build(go, Path(tmp))
            os.replace(built, target)
        logger.info("built %s in %.1f s", target, time.monotonic() - started)
    return target


def cached_ferretdb(cache: Path | None = None) -> Path | None:
    """Returns the FerretDB binary if it is built already, else None (never builds).

    Args:
        cache: The per-machine cache root; defaults to :func:`mesh.harness.paths.cache_dir`.
    """
    target = _binary_path(cache)
    return target if _is_executable(target) else None


def _binary_path(cache: Path | None) -> Path:
    root = cache if cache is not None else cache_dir()
    return root / "bin" / f"ferretdb-{FERRETDB_VERSION}"


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


@contextlib.contextmanager
def _exclusive_lock(path: Path, wait_s: float) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``path``, waiting at most ``wait_s`` for it."""
    with path.open("a") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # A blocking flock cannot time out; poll so a stuck builder cannot hang us.
                if time.monotonic() >= deadline:
                    raise FerretDBBuildError(
                        f"another process has held {path} for over {wait_s:.0f} s"
                    ) from None
                time.sleep(_LOCK_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _find_go() -> str:
    go = shutil.which("go")
    if go is None:
        raise FerretDBBuildError(
            "FerretDB is built from source and needs the Go toolchain (>= 1.24), "
            "but `go` is not on PATH; install Go (e.g. /usr/local/go/bin) and retry"
        )
    out = _run([go, "env", "GOVERSION"], cwd=None, env=None, timeout=60.0).strip()
    match = re.match(r"go(\d+)\.(\d+)", out)
    if match is None or (int(match[1]), int(match[2])) < _MIN_GO:
        raise FerretDBBuildError(
            f"FerretDB {FERRETDB_VERSION} needs Go >= {_MIN_GO[0]}.{_MIN_GO[1]}, "
            f"but {go} is {out or 'of unknown version'}"
        )
    return go


def _build(go: str, workdir: Path) -> Path:
    """Builds ``cmd/ferretdb`` under ``workdir`` and returns the binary's path."""
    env = dict(os.environ)
    env.update(
        {
            "GOFLAGS": "-mod=readonly",
            "GOWORK": "off",
            # The SQLite driver (modernc.org/sqlite) is pure Go: a static binary
            # needs no C toolchain and survives libc upgrades of the machine.
            "CGO_ENABLED": "0",
        }
    )
    info = json.loads(
        _run(
            [go, "mod", "download", "-json", f"{_MODULE}@{FERRETDB_VERSION}"],
            cwd=workdir,
            env=env,
            timeout=_BUILD_TIMEOUT_S,
        )
    )
    if "Error" in info or "Dir" not in info:
        raise FerretDBBuildError(f"go mod download {_MODULE}@{FERRETDB_VERSION}: {info}")

    # `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2` compiles, but the
    # binary panics at start-up ("Invalid build/version/version.txt file content"):
    # version.txt is generated from `git describe` and is not part of the module zip
    # (FerretDB issue #2982), and the module cache is read-only (and -overlay may not
    # replace files in it). So build from a copy of the module with the file written.
    src = workdir / "src"
    shutil.copytree(info["Dir"], src, copy_function=shutil.copyfile)
    for dirpath, _, _ in os.walk(src):
        # copytree copies the cache's read-only directory modes; we need to write one
        # file, and TemporaryDirectory needs to delete the tree afterwards.
        os.chmod(dirpath, 0o755)
    (src / "build" / "version" / "version.txt").write_text(FERRETDB_VERSION + "\n")

    gobin = workdir / "gobin"
    env["GOBIN"] = str(gobin)
    _run([go, "install", "-trimpath", "./cmd/ferretdb"], cwd=src, env=env, timeout=_BUILD_TIMEOUT_S)
    built = gobin / "ferretdb"

    version = _run([str(built), "--version"], cwd=workdir, env=env, timeout=60.0)
    if f"version: {FERRETDB_VERSION}" not in version:
        raise FerretDBBuildError(f"built binary reports an unexpected version:\n{version}")
    return built


def _run(args: list[str], *, cwd: Path | None, env: dict[str, str] | None, timeout: float) -> str:
    """Runs a build step and returns its stdout; raises FerretDBBuildError with stderr."""
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise FerretDBBuildError(f"`{' '.join(args)}` timed out after {timeout:.0f} s") from exc
    except OSError as exc:
        raise FerretDBBuildError(f"`{' '.join(args)}` could not run: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-30:])
        raise FerretDBBuildError(f"`{' '.join(args)}` exited with {proc.returncode}:\n{tail}")
    return proc.stdout


# ------------------------------------------------------------------ wire-level ping


def _bson_ping() -> bytes:
    """Encodes ``{"ping": 1, "$db": "admin"}`` as BSON."""
    elements = b"\x10ping\x00" + struct.pack("<i", 1)
    elements += b"\x02$db\x00" + struct.pack("<i", len(b"admin") + 1) + b"admin\x00"
    return struct.pack("<i", 4 + len(elements) + 1) + elements + b"\x00"


# Fixed payload sizes of the BSON element types a reply may contain before "ok".
_BSON_FIXED = {0x01: 8, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16}


def _bson_ok(doc: bytes) -> float:
    """Returns the top-level ``ok`` field of a BSON reply document (0.0 if absent)."""
    end = struct.unpack_from("<i", doc, 0)[0] - 1
    pos = 4
    while pos < end:
        kind = doc[pos]
        name_end = doc.index(b"\x00", pos + 1)
        name = doc[pos + 1 : name_end]
        pos = name_end + 1
        if name == b"ok":
            if kind == 0x01:
                return float(struct.unpack_from("<d", doc, pos)[0])
            if kind in (0x10, 0x12):
                return float(struct.unpack_from("<i" if kind == 0x10 else "<q", doc, pos)[0])
            if kind == 0x08:
                return float(doc[pos])
        if kind in _BSON_FIXED:
            pos += _BSON_FIXED[kind]
        elif kind == 0x02:  # string: int32 length (with NUL) + bytes
            pos += 4 + struct.unpack_from("<i", doc, pos)[0]
        elif kind in (0x03, 0x04):  # embedded document or array: int32 total size
            pos += struct.unpack_from("<i", doc, pos)[0]
        elif kind == 0x05:  # binary: int32 length + subtype byte + bytes
            pos += 5 + struct.unpack_from("<i", doc, pos)[0]
        else:
            raise ValueError(f"unexpected BSON element type 0x{kind:02x} in ping reply")
    return 0.0


async def wire_ping(host: str, port: int, within: float) -> None:
    """Sends ``ping`` to a MongoDB-protocol server over one fresh connection.

    This is the readiness signal: the server accepted a connection, parsed an
    ``OP_MSG`` and answered ``ok: 1``. Only the standard library is used, so the
    harness needs no driver.

    Args:
        host: Server address.
        port: Server port.
        within: Bound for connect, send and reply together, in seconds.

    Raises:
        OSError: The connection failed (for example, nothing listens yet).
        TimeoutError: No complete reply within ``within`` seconds.
        FerretDBError: The server answered something other than ``ok: 1``.
    """

    async def exchange() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            body = struct.pack("<I", 0) + b"\x00" + _bson_ping()  # flagBits, section kind 0
            writer.write(_HEADER.pack(_HEADER.size + len(body), 1, 0, _OP_MSG) + body)
            await writer.drain()
            length, _, response_to, opcode = _HEADER.unpack(await reader.readexactly(_HEADER.size))
            if (
                opcode != _OP_MSG
                or response_to != 1
                or not _HEADER.size < length <= _MAX_REPLY_BYTES
            ):
                raise FerretDBError(f"unexpected reply header: opcode={opcode} length={length}")
            payload = await reader.readexactly(length - _HEADER.size)
            if payload[4] != 0:
                raise FerretDBError(f"unexpected OP_MSG section kind {payload[4]}")
            ok = _bson_ok(payload[5:])
            if ok != 1.0:
                raise FerretDBError(f"ping answered ok={ok}")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    await asyncio.wait_for(exchange(), within)


# ------------------------------------------------------------------------- process


class FerretDB:
    """One FerretDB process with the SQLite backend, bound to loopback.

    Layout under ``directory``: ``data/`` (SQLite files, one per database), ``state/``
    (FerretDB's ``state.json``), ``ferretdb.log`` (stdout and stderr, appended) and
    ``ferretdb.pid`` while running.

    Use as ``async with FerretDB(dir) as server:`` (start, wait until ready, stop on
    exit), or call :meth:`start`, :meth:`wait_ready` and :meth:`stop` yourself.
    """

    def __init__(
        self,
        directory: Path,
        *,
        binary: Path | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        debug_port: int | None = None,
        repl_set_name: str | None = "rs0",
        log_level: str = "info",
        stop_timeout: float = 10.0,
    ) -> None:
        """Describes a server; nothing is started until :meth:`start`.

        Args:
            directory: Holds data, state, log and pid file; created if missing.
            binary: The FerretDB executable; defaults to :func:`ensure_ferretdb`,
                which may build it (about a minute, once per machine).
            host: Loopback address to listen on (127.0.0.0/8 or ::1 only).
            port: Wire-protocol port; a free one is allocated if not given.
            debug_port: Port of the HTTP debug handler (``/debug/metrics``,
                ``/debug/livez``, ``/debug/readyz``); allocated if not given.
            repl_set_name: Replica-set name the server reports in ``hello`` so
                drivers can connect with ``replicaSet=<name>``; None for a plain
                standalone.
            log_level: FerretDB's log level: debug, info, warn or error.
            stop_timeout: Seconds :meth:`stop` waits after SIGTERM before SIGKILL.

        Raises:
            ValueError: ``host`` is not a loopback address or ``log_level`` is unknown.
        """
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"FerretDB must listen on a loopback address, not {host!r}")
        if log_level.lower() not in {"debug", "info", "warn", "error"}:
            raise ValueError(f"unknown FerretDB log level {log_level!r}")
        self.directory = directory
        self.host = host
        self.repl_set_name = repl_set_name
        self._binary = binary
        self._port = port
        self._debug_port = debug_port
        self._log_level = log_level.upper()
        self._stop_timeout = stop_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._log_offset = 0

    # Paths -----------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        """Directory of the SQLite database files."""
        return self.directory / "data"

    @property
    def state_dir(self) -> Path:
        """FerretDB's state directory (``state.json``: instance id, telemetry choice)."""
        return self.directory / "state"

    @property
    def log_file(self) -> Path:
        """The server's log (stdout and stderr), appended across restarts."""
        return self.directory / "ferretdb.log"

    @property
    def pid_file(self) -> Path:
        """Holds the pid while the server runs; guards against two servers per directory."""
        return self.directory / "ferretdb.pid"

    # Addresses -------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The wire-protocol port (allocated on first use if none was given)."""
        if self._port is None:
            self._port = allocate(self.host)
        return self._port

    @property
    def debug_port(self) -> int:
        """The HTTP debug handler's port (allocated on first use if none was given)."""
        if self._debug_port is None:
            self._debug_port = allocate(self.host)
        return self._debug_port

    @property
    def address(self) -> str:
        """``host:port`` as a driver and FerretDB's ``hello`` spell it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def uri(self) -> str:
        """Connection string without options, e.g. ``mongodb://127.0.0.1:40123/``."""
        return f"mongodb://{self.address}/"

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs, else None."""
        if self._proc is None or self._proc.returncode is not None:
            return None
        return self._proc.pid

    def rss_bytes(self) -> int:
        """Returns the server's resident set size, read from ``/proc``.

        Raises:
            FerretDBError: The server is not running.
        """
        pid = self.pid
        if pid is None:
            raise FerretDBError("FerretDB is not running")
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise FerretDBError(f"no VmRSS in /proc/{pid}/status")

    # Lifecycle -------------------------------------------------------------------

    def command(self, binary: Path) -> list[str]:
        """Returns the command line that :meth:`start` runs."""
        # FerretDB wants a URI naming a directory, with a trailing slash.
        sqlite_url = "file:" + urllib.parse.quote(str(self.data_dir.resolve())) + "/"
        args = [
            str(binary),
            "--handler=sqlite",
            f"--sqlite-url={sqlite_url}",
            f"--listen-addr={self.address}",
            f"--debug-addr={self.address.rsplit(':', 1)[0]}:{self.debug_port}",
            f"--state-dir={self.state_dir.resolve()}",
            f"--log-level={self._log_level}",
            "--log-format=console",
            # Telemetry is the only thing that would reach out to the internet; turn
            # it off, and point its URL at a closed loopback port in case a later
            # state file or flag ever turns it back on.
            "--telemetry=disable",
            "--test-telemetry-url=http://127.0.0.1:9/",
        ]
        if self.repl_set_name:
            args.append(f"--repl-set-name={self.repl_set_name}")
        return args

    async def start(self) -> None:
        """Launches the server process; returns once it runs, not once it is ready.

        Raises:
            FerretDBError: It is already running, another live FerretDB owns this
                directory, or the binary could not be executed.
            FerretDBBuildError: No binary was given and building one failed.
        """
        if self.pid is not None:
            raise FerretDBError(f"FerretDB already running as pid {self.pid}")
        binary = self._binary
        if binary is None:
            binary = await asyncio.to_thread(ensure_ferretdb)
            self._binary = binary
        for path in (self.directory, self.data_dir, self.state_dir):
            path.mkdir(parents=True, exist_ok=True)
        self._refuse_if_owned_by_live_process()

        # Flags win over FERRETDB_* variables, but an inherited one could still switch
        # on something we did not ask for (TLS, OpenTelemetry export, auth); drop them.
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERRETDB_")}
        env["DO_NOT_TRACK"] = "1"
        args = self.command(binary)
        logger.info(
            "starting FerretDB %s on %s (data %s)", FERRETDB_VERSION, self.address, self.data_dir
        )
        # The server writes its log straight to the file, not through a pipe we
        # would have to keep draining: it must not block or die if we stop reading.
        with self.log_file.open("ab") as log:
            # The log is appended across restarts; readiness only reads this run's part.
            self._log_offset = log.tell()
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *die_with_parent(args),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    cwd=self.directory,
                    env=env,
                )
            except OSError as exc:
                raise FerretDBError(f"cannot execute {binary}: {exc}") from exc
        self.pid_file.write_text(f"{self._proc.pid}\n")

    def _refuse_if_owned_by_live_process(self) -> None:
        """Raises if the pid file names a live FerretDB, which would share the SQLite files."""
        try:
            old_pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{old_pid}/cmdline").read_bytes().split(b"\x00")
        except (OSError, ValueError):
            return  # no pid file, garbage in it, or that process is gone
        data_arg = f"--sqlite-url=file:{urllib.parse.quote(str(self.data_dir.resolve()))}/".encode()
        if data_arg in cmdline:
            raise FerretDBError(
                f"FerretDB pid {old_pid} is still serving {self.data_dir}; stop it first"
            )

    # The deadline is enforced inside (polls bounded by it), so a `timeout` argument
    # is the clearer contract here than asking callers for asyncio.timeout().
    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Waits until this server listens on its address and answers ``ping``.

        Ready means both: the server's own log says ``Listening on TCP <address>``
        (since this start), and a ``ping`` over the wire protocol gets ``ok: 1``. The
        log line proves that the process answering is ours, not another one that
        held the port; the ping proves it serves requests. Every wait in here
        (between polls, and during a ping) ends early when the process exits, so a
        server that dies (port taken, bad flags) fails this call at once.

        Args:
            timeout: Overall bound in seconds.

        Raises:
            FerretDBError: The process was not started, or exited; the message
                carries the end of its log.
            TimeoutError: Not ready before the deadline.
        """
        proc = self._proc
        if proc is None:
            raise FerretDBError("FerretDB was not started")
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout
        listening = f"Listening on TCP {self.address}..."
        backoff = 0.01
        last_error: BaseException | None = None
        while True:
            remaining = deadline - loop.time()
            if proc.returncode is None and remaining > 0 and listening in self._log_since_start():
                try:
                    await self._unless_exited(
                        proc, wire_ping(self.host, self.port, within=5.0), remaining
                    )
                except (OSError, TimeoutError, EOFError) as exc:
                    last_error = exc
                else:
                    if proc.returncode is None:
                        logger.info(
                            "FerretDB on %s ready in %.3f s", self.address, loop.time() - started
                        )
                        return
            if proc.returncode is not None:
                raise FerretDBError(
                    f"FerretDB exited with code {proc.returncode} before it was ready; "
                    f"log {self.log_file}:\n{self.log_tail()}"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"FerretDB on {self.address} not ready after {timeout:.1f} s "
                    f"(last error: {last_error!r}); log {self.log_file}:\n{self.log_tail()}"
                )
            # Poll again after the back-off, or as soon as the process exits.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout=min(backoff, remaining))
            backoff = min(backoff * 2, 0.2)

    @staticmethod
    async def _unless_exited(
        proc: asyncio.subprocess.Process, step: Coroutine[Any, Any, None], limit: float
    ) -> None:
        """Runs ``step``, abandoning it (without error) if ``proc`` exits first."""
        task = asyncio.ensure_future(step)
        exited = asyncio.ensure_future(proc.wait())
        try:
            done, _ = await asyncio.wait(
                {task, exited}, timeout=limit, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for pending in (task, exited):
                pending.cancel()
            await asyncio.gather(task, exited, return_exceptions=True)
        if task in done:
            task.result()
        elif not done:
            raise TimeoutError(f"no answer within {limit:.1f} s")

    def _log_since_start(self) -> str:
        """Returns what the server logged since the last :meth:`start`."""
        try:
            with self.log_file.open("rb") as handle:
                handle.seek(self._log_offset)
                return handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    async def stop(self) -> int | None:
        """Stops the server: SIGTERM, then SIGKILL after ``stop_timeout``; reaps it.

        Safe to call more than once or on a server that never started.

        Returns:
            The exit code (negative for a signal), or None if nothing was running.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=self._stop_timeout)
            except TimeoutError:
                logger.warning(
                    "FerretDB pid %d ignored SIGTERM for %.1f s; killing it",
                    proc.pid,
                    self._stop_timeout,
                )
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                # SIGKILL cannot be ignored; the bound only guards against a wedged kernel.
                await asyncio.wait_for(proc.wait(), timeout=10.0)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        logger.info("FerretDB on %s stopped with code %s", self.address, proc.returncode)
        return proc.returncode

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Returns the last ``lines`` lines of the server log (empty if there is none)."""
        try:
            with self.log_file.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 64 * 1024))
                text = handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def __aenter__(self) -> FerretDB:
        # A port from allocate() was free a moment ago but may have been taken since;
        # if so FerretDB exits at once, and we try again with a fresh port.
        retry_ports = self._port is None
        for attempt in range(3):
            await self.start()
            try:
                await self.wait_ready()
            except FerretDBError:
                await self.stop()
                if not (
                    retry_ports and attempt < 2 and "address already in use" in self.log_tail()
                ):
                    raise
                logger.warning("port %d was taken before FerretDB bound it; retrying", self.port)
                self._port = allocate(self.host)
            except BaseException:
                await self.stop()
                raise
            else:
                return self
        raise AssertionError("unreachable")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


# ---------------------------------------------------------------------------- CLI


async def _serve(directory: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with FerretDB(directory) as server:
        print(f"{server.uri}?replicaSet={server.repl_set_name}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m mesh.harness.servers.ferretdb``."""
    parser = argparse.ArgumentParser(
        prog="python -m mesh.harness.servers.ferretdb",
        description="Build or run FerretDB for chatmesh.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build (or find) the binary and print its path")
    run = sub.add_parser("run", help="serve DIR on a free loopback port until interrupted")
    run.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.cmd == "build":
            print(ensure_ferretdb())
        else:
            asyncio.run(_serve(args.dir))
    except FerretDBError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
