r"""Sampling profiles of running services with py-spy, and what they say.

:func:`record` attaches ``py-spy record --format raw`` (collapsed stacks) to a
live process for a few seconds: nothing in the service changes, no restart.
py-spy samples only threads holding the GIL (Python doing work) and pauses
the process briefly for each sample (its ``--nonblocking`` mode cannot read
this interpreter's version), so profiles are taken in a separate load step
whose latencies are not reported. :func:`analyze` turns the stacks
into self/inclusive time per function and self time per package, and
:func:`summary_lines` into the three-line "where the time goes".

Example:
    >>> prof = analyze("main (a.py:1);f (pkg/b.py:2) 3\nmain (a.py:1) 1\n", rate=100, seconds=1)
    >>> prof["self"][0]["function"]
    'f (pkg/b.py)'
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

__all__ = ["analyze", "find_py_spy", "record", "summary_lines"]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# Leaf-frame files -> a package name people recognise. Order matters: first match wins.
_PACKAGES: list[tuple[str, str]] = [
    ("grpc/_cython", "grpc (C core bindings)"),
    ("grpc/aio", "grpc.aio"),
    ("grpc/", "grpc"),
    ("hypercorn/", "hypercorn (HTTP/2 server)"),
    ("h2/", "h2 (HTTP/2 framing)"),
    ("hpack/", "h2 (HTTP/2 framing)"),
    ("h11/", "h11"),
    ("connectrpc/", "connectrpc"),
    ("google/protobuf", "protobuf"),
    ("protovalidate", "protovalidate"),
    ("nats/", "nats-py"),
    ("asyncio/", "asyncio"),
    ("logging/", "logging"),
    ("prometheus_client/", "prometheus_client"),
    ("sqlite3/", "sqlite3"),
    ("valkey/", "valkey client"),
    ("jwt/", "pyjwt"),
    ("cryptography/", "cryptography"),
    ("json/", "json"),
    ("services/", "chatmesh services"),
    ("mesh/", "chatmesh mesh"),
    ("chatmesh/", "generated protos"),
]


def find_py_spy() -> str | None:
    """Path of the py-spy binary (the venv's, else PATH), or None."""
    candidate = Path(sys.executable).parent / "py-spy"
    if candidate.exists():
        return str(candidate)
    return shutil.which("py-spy")


async def record(pid: int, out: Path, seconds: float, rate: int = 100) -> tuple[bool, str]:
    """Samples ``pid`` for ``seconds`` into ``out`` (collapsed stacks).

    Returns:
        ``(ok, message)``: False with the reason when py-spy is missing or failed.
    """
    binary = find_py_spy()
    if binary is None:
        return False, "py-spy is not installed (pip install py-spy)"
    proc = await asyncio.create_subprocess_exec(
        binary,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        # --gil: only samples that hold the GIL, i.e. Python doing work; threads
        # parked in epoll (grpc's poller, the event loop's selector) are left out.
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--gil",
        "--output",
        str(out),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        await proc.wait()
        raise
    text = output.decode(errors="replace").strip()
    if proc.returncode != 0 or not await asyncio.to_thread(out.exists):
        return False, f"py-spy exited {proc.returncode}: {text[-300:]}"
    return True, text.splitlines()[-1] if text else "ok"


def _parse_frame(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    path = match.group("file")
    return f"{match.group('func')} ({path})", path


def _package(path: str) -> str:
    for needle, name in _PACKAGES:
        if needle in path:
            return name
    if path.startswith("<"):
        return "interpreter"
    return path.split("/", 1)[0] or "other"


def analyze(collapsed: str, *, rate: int, seconds: float, top: int = 15) -> dict[str, Any]:
    """Self time, inclusive time and self time by package from collapsed stacks.

    Percentages are of all samples taken while the process was running Python
    (py-spy leaves idle samples out), and ``busy_percent`` relates that sample
    count to the wall-clock window.
    """
    self_time: dict[str, int] = {}
    incl: dict[str, int] = {}
    pkgs: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_parse_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        leaf, leaf_path = frames[-1]
        self_time[leaf] = self_time.get(leaf, 0) + count
        pkg = _package(leaf_path)
        pkgs[pkg] = pkgs.get(pkg, 0) + count
        for name in {name for name, _ in frames}:
            incl[name] = incl.get(name, 0) + count

    def ranked(table: dict[str, int], key: str) -> list[dict[str, Any]]:
        rows = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [
            {key: name, "samples": n, "percent": round(100 * n / total, 1) if total else 0.0}
            for name, n in rows
        ]

    return {
        "samples": total,
        "busy_percent": round(100 * total / (rate * seconds), 1) if seconds else 0.0,
        "self": ranked(self_time, "function"),
        "inclusive": ranked(incl, "function"),
        "packages": ranked(pkgs, "package"),
    }


def _is_generic(function: str) -> bool:
    # Frames every stack shares (the event loop, the module entry) say nothing.
    generic = (
        "run_forever",
        "_run_once",
        "<module>",
        "_run_module",
        "run (asyncio",
        "_run (asyncio",
        "run_until_complete",
        "main (",
        "_run_code",
        "asyncio/runners.py",
        "asyncio/base_events.py",
    )
    return any(g in function for g in generic)


def summary_lines(
    service: str, cpu_percent: float, rate: float, machine_percent: float, prof: dict[str, Any]
) -> list[str]:
    """The three-line "where the time goes" for one profiled service."""
    pk = ", ".join(f"{p['percent']:.0f}% {p['package']}" for p in prof["packages"][:4])
    hot = ", ".join(f"{f['function']} {f['percent']:.0f}%" for f in prof["self"][:3])
    incl = [f for f in prof["inclusive"] if not _is_generic(f["function"])][:3]
    paths = ", ".join(f"{f['function']} {f['percent']:.0f}%" for f in incl)
    return [
        f"{service} was the hottest chatmesh process: {cpu_percent:.0f}% of a core at "
        f"{rate:g} msg/s (machine {machine_percent:.0f}% busy); self time by package: {pk}.",
        f"Hottest functions (self time): {hot}.",
        f"Biggest call paths (inclusive): {paths}.",
    ]
