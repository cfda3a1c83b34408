"""Free-port allocation for processes that must know their ports up front.

NATS gateways and Cassandra peers need each other's ports written into their
configuration before anything starts, so "bind to port 0 and read it back" is not
enough for them. :func:`allocate` asks the kernel for a free port, and remembers
every port it handed out in this process so two callers never get the same one.

Example:
    >>> from mesh.harness.ports import allocate
    >>> a, b = allocate(), allocate()
    >>> a != b
    True
"""

from __future__ import annotations

import socket
import threading

__all__ = ["allocate"]

_lock = threading.Lock()
_handed_out: set[tuple[str, int]] = set()


def allocate(host: str = "127.0.0.1") -> int:
    """Returns a TCP port on ``host`` that was free a moment ago and not handed out before.

    Args:
        host: The loopback address the port will be bound on.

    Returns:
        The port number.
    """
    with _lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if (host, port) not in _handed_out:
                _handed_out.add((host, port))
                return port
    raise RuntimeError(f"no free port found on {host}")
