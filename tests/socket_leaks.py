"""Names where a leaked socket was opened, and tells our leaks from a driver's.

``filterwarnings = ["error"]`` turns an unclosed socket's ``ResourceWarning`` into a
test error, which is how a missing ``close()`` in our code gets caught. The warning
itself only prints the socket (``laddr=('127.0.0.1', 45304)``), raised whenever the
garbage collector happens to reach it, often tests later. This plugin records a
short stack for every socket the test process creates (the ``socket.__new__`` audit
event, far cheaper than ``tracemalloc``) and, when one is finalized unclosed:

* opened on a call path that passes through this repository's code: the error
  stands, and the stack of where it was opened is printed with it;
* opened entirely inside a third-party driver's own background machinery (for
  instance cassandra-driver's reconnection threads or PyMongo's monitors, with
  no frame of ours on the stack): we cannot close what we never held, so it is
  reported (printed and listed in the terminal summary), not failed.

Registered from ``tests/conftest.py`` (``pytest_plugins``).
"""

from __future__ import annotations

import socket
import sys
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

_ROOT = Path(__file__).resolve().parent.parent
_OURS = tuple(str(_ROOT / d) + "/" for d in ("mesh", "services", "tests", "tools"))
_KEEP = 20_000
"""Sockets remembered (oldest forgotten first); a run opens a few thousand."""

_stacks: OrderedDict[int, list[traceback.FrameSummary]] = OrderedDict()
_lock = threading.Lock()
_third_party: list[str] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event != "socket.__new__":
        return
    stack = traceback.extract_stack(limit=48)[:-1]
    with _lock:
        _stacks[id(args[0])] = stack
        if len(_stacks) > _KEEP:
            _stacks.popitem(last=False)


def _is_ours(stack: list[traceback.FrameSummary]) -> bool:
    return any(frame.filename.startswith(_OURS) for frame in stack)


def _wrap(previous: Callable[[Any], object]) -> Callable[[Any], object]:
    def hook(unraisable: Any) -> None:
        try:
            if _report(unraisable.object):
                return
        except Exception:  # noqa: BLE001 - never let the triage swallow the error itself
            pass
        previous(unraisable)

    return hook


def _report(obj: object) -> bool:
    """Prints where a leaked socket was opened; True if the leak is a driver's own."""
    if not isinstance(obj, socket.socket):
        return False
    with _lock:
        stack = _stacks.get(id(obj))
    where = "".join(traceback.format_list(stack)) if stack else "  (not recorded)\n"
    if stack is not None and not _is_ours(stack):
        _third_party.append(f"{obj!r} opened at:\n{where}")
        sys.stderr.write(f"\nthird-party socket leak (reported, not failed): {obj!r}\n{where}")
        return True
    sys.stderr.write(f"\nleaked socket {obj!r} was opened at:\n{where}")
    return False


_installed = False


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    # trylast: wraps the hook pytest's unraisableexception plugin installs.
    global _installed
    if not _installed:  # audit hooks cannot be removed; add one per process
        sys.addaudithook(_audit)
        _installed = True
    sys.unraisablehook = _wrap(sys.unraisablehook)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _third_party:
        terminalreporter.section("third-party socket leaks (reported, not failed)")
        for entry in _third_party:
            terminalreporter.write_line(entry)
