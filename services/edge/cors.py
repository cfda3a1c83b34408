"""CORS for browser clients (gRPC-Web and Connect from another origin).

connectrpc has no CORS of its own, so :class:`Cors` wraps the whole edge:

* a request without ``Origin`` (native gRPC, curl, grpcurl) passes untouched;
* a preflight (``OPTIONS`` + ``Access-Control-Request-Method``) from an
  allowed origin is answered here (204) with the allowed methods, request
  headers and max age; from any other origin it gets 403 and no CORS
  headers, so the browser reports a clear CORS failure;
* an actual request from an allowed origin gets ``Access-Control-Allow-Origin``
  and ``Access-Control-Expose-Headers`` (``grpc-status``, ``grpc-message``,
  ``grpc-status-details-bin``: gRPC-Web clients must read them from
  trailers-only responses); from any other origin it is refused with 403
  before it reaches any handler.

Allowed origins are exact ``scheme://host:port`` strings or patterns with
``*`` as the port (``http://localhost:*``). Credentials (cookies) are never
allowed: the API authenticates with bearer tokens.

Example:
    >>> policy = OriginPolicy(["http://localhost:*", "https://chat.example.com"])
    >>> policy.allows("http://localhost:5173"), policy.allows("http://localhost.evil.com:80")
    (True, False)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, MutableMapping
from typing import Any

from services.edge.asgi import ASGIApp, Receive, Scope, Send, header, plain_response

__all__ = ["ALLOW_HEADERS", "EXPOSE_HEADERS", "Cors", "OriginPolicy"]

logger = logging.getLogger(__name__)

ALLOW_HEADERS: tuple[str, ...] = (
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "connect-protocol-version",
    "connect-timeout-ms",
    "connect-accept-encoding",
    "connect-content-encoding",
)
"""Request headers browsers may send (those of gRPC-Web and Connect, plus the token)."""
EXPOSE_HEADERS: tuple[str, ...] = ("grpc-status", "grpc-message", "grpc-status-details-bin")
"""Response headers browser code may read."""
_METHODS = "GET, POST"

_ORIGIN_RE = re.compile(r"^(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(\d{1,5}|\*))?$")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _parse(origin: str, *, pattern: bool) -> tuple[str, str, str] | None:
    match = _ORIGIN_RE.match(origin.strip().lower())
    if match is None:
        return None
    scheme, host, port = match.groups()
    if port == "*" and not pattern:
        return None
    return scheme, host, port or _DEFAULT_PORTS[scheme]


class OriginPolicy:
    """Which browser origins may call the edge."""

    def __init__(self, origins: Iterable[str]) -> None:
        """Args: origins are exact origins or ``scheme://host:*`` patterns.

        Raises:
            ValueError: An entry is not an origin.
        """
        self._allowed: list[tuple[str, str, str]] = []
        for origin in origins:
            parsed = _parse(origin, pattern=True)
            if parsed is None:
                raise ValueError(f"not an origin (scheme://host[:port|:*]): {origin!r}")
            self._allowed.append(parsed)

    def allows(self, origin: str) -> bool:
        """Whether a request with this ``Origin`` header may proceed."""
        parsed = _parse(origin, pattern=False)
        if parsed is None:
            return False  # includes "null" (sandboxed frames, file://)
        return any(
            parsed[0] == scheme and parsed[1] == host and port in ("*", parsed[2])
            for scheme, host, port in self._allowed
        )


class Cors:
    """ASGI middleware applying an :class:`OriginPolicy`."""

    def __init__(self, app: ASGIApp, policy: OriginPolicy, *, max_age: int = 7200) -> None:
        """Args: app is wrapped; max_age is how long browsers may cache a preflight."""
        self._app = app
        self._policy = policy
        self._max_age = str(max_age).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        origin = header(scope, b"origin")
        if origin is None:
            await self._app(scope, receive, send)
            return
        allowed = self._policy.allows(origin)
        preflight = (
            scope["method"] == "OPTIONS"
            and header(scope, b"access-control-request-method") is not None
        )
        if not allowed:
            logger.info(
                "refused %s %s from origin %r",
                "preflight" if preflight else scope["method"],
                scope["path"],
                origin,
            )
            await plain_response(
                send, 403, f"origin {origin} is not allowed by this edge's CORS policy\n"
            )
            return
        vary = (b"vary", b"Origin")
        if preflight:
            await plain_response(
                send,
                204,
                headers=[
                    (b"access-control-allow-origin", origin.encode("latin-1")),
                    (b"access-control-allow-methods", _METHODS.encode()),
                    (b"access-control-allow-headers", ", ".join(ALLOW_HEADERS).encode()),
                    (b"access-control-expose-headers", ", ".join(EXPOSE_HEADERS).encode()),
                    (b"access-control-max-age", self._max_age),
                    (
                        b"vary",
                        b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
                    ),
                ],
            )
            return
        extra = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-expose-headers", ", ".join(EXPOSE_HEADERS).encode()),
            vary,
        ]

        async def send_with_cors(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self._app(scope, receive, send_with_cors)
