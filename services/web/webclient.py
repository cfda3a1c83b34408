"""The web client's dynamic endpoints, in front of its static files.

* ``GET /healthz``: 200 while the process serves (Envoy's active health check).
* ``GET /config.json``: which regional edges exist, so the page can offer a
  region picker: ``{"region": <this edge's region>, "edges": [{"region",
  "url", "primary"}, ...], "devToken": <bool>}``. The edge list comes from
  ``edges_file``, which the harness writes once every edge is up; the file is
  read per request (it is tiny) and a missing or unreadable one just means an
  empty list.
* ``GET /dev/token?user=NAME``: **development only**. Mints a one-hour token
  for whoever asks, with the deployment's private key (``dev_token_keys``).
  It exists only when that setting is non-empty, which only the local harness
  (``chatmesh up``, the test suite) does; the production shape never sets it
  (and its Envoy answers 404 for the path). Guards, each of which alone would
  stop a token leaving this machine:

  - :func:`check_dev_token` refuses to start with it unless both the web
    service's own listener and the edge listener in front of it are loopback;
  - the request must have arrived on that edge listener: Envoy sets
    ``x-chatmesh-edge-listener`` to the connection's real local address
    (clients' own ``x-chatmesh-*`` headers are removed at the edge), which must
    equal ``edge_listen``;
  - its ``Host`` must name that listener by a loopback name (``127.0.0.1:P``,
    ``localhost:P``, ``[::1]:P``): a DNS-rebinding page (``evil.example``
    resolving to 127.0.0.1) sends its own name and is refused;
  - an ``Origin``, if sent, must be the edge's own page, so another page in
    the browser (even an allowed CORS origin) cannot fetch tokens.

Everything else goes to the static files (or is a 404 without them).

Example:
    >>> app = WebClientApp(region="eu", static=None, edge_url="http://127.0.0.1:1", edge_listen="127.0.0.1:1")
    >>> app.dev_tokens
    False
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mesh.core.auth import DEFAULT_AUDIENCE, DEFAULT_ISSUER, USER_ID_RE, KeyDirectory, mint
from mesh.core.headers import EDGE_LISTENER
from services.web.asgi import ASGIApp, Receive, Scope, Send, header, plain_response
from services.web.config import WebConfig

__all__ = ["DEV_TOKEN_TTL", "WebClientApp", "check_dev_token", "is_loopback"]

logger = logging.getLogger(__name__)

DEV_TOKEN_TTL = 3600
"""Lifetime of a ``/dev/token`` token in seconds; the page fetches a new one when it expires."""

_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IP address, IPv6 possibly in brackets) is loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_of(address: str) -> str:
    return address.rpartition(":")[0]


def check_dev_token(cfg: WebConfig) -> None:
    """Refuses a ``dev_token_keys`` setting on a web service reachable from other machines.

    Raises:
        ValueError: ``dev_token_keys`` is set and ``edge_listen`` or ``http_listen`` is
            not a loopback address, or the key directory has no private key.
    """
    if not cfg.dev_token_keys:
        return
    for name, value in (("edge_listen", cfg.edge_listen), ("http_listen", cfg.http_listen)):
        if not value or not is_loopback(_host_of(value)):
            raise ValueError(
                f"web: dev_token_keys (GET /dev/token, development only) needs a loopback "
                f"{name}, not {value!r}"
            )
    if not KeyDirectory(Path(cfg.dev_token_keys)).private_key_path.is_file():
        raise ValueError(f"web: dev_token_keys {cfg.dev_token_keys!r} has no jwt-private.pem")


async def _json_response(send: Send, status: int, body: Any, *, head: bool = False) -> None:
    data = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        # Tokens must never be cached; the edge list changes with every mesh start.
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else data, "more_body": False})


class WebClientApp:
    """ASGI app: ``/healthz``, ``/config.json``, ``/dev/token`` (when enabled), else the static files."""

    def __init__(
        self,
        *,
        region: str,
        static: ASGIApp | None,
        edge_url: str,
        edge_listen: str,
        edges_file: Path | None = None,
        dev_keys: KeyDirectory | None = None,
        issuer: str = DEFAULT_ISSUER,
        audience: str = DEFAULT_AUDIENCE,
    ) -> None:
        """Args: edge_url is this edge's public URL; edge_listen the Envoy listener serving it."""
        self._region = region
        self._static = static
        self._edges_file = edges_file
        self._dev_keys = dev_keys
        self._issuer = issuer
        self._audience = audience
        self._edge_listen = edge_listen
        port = edge_listen.rpartition(":")[2]
        scheme = urlsplit(edge_url).scheme or "http"
        self._own_hosts = {f"{name}:{port}" for name in _LOOPBACK_NAMES}
        self._own_origins = {f"{scheme}://{host}" for host in self._own_hosts}

    @classmethod
    def from_config(cls, cfg: WebConfig, static: ASGIApp | None) -> WebClientApp:
        """The app a web service with configuration ``cfg`` serves."""
        return cls(
            region=cfg.region,
            static=static,
            edge_url=cfg.edge_url,
            edge_listen=cfg.edge_listen,
            edges_file=Path(cfg.edges_file) if cfg.edges_file else None,
            dev_keys=KeyDirectory(Path(cfg.dev_token_keys)) if cfg.dev_token_keys else None,
            issuer=cfg.jwt_issuer,
            audience=cfg.jwt_audience,
        )

    @property
    def dev_tokens(self) -> bool:
        """Whether ``GET /dev/token`` exists on this edge."""
        return self._dev_keys is not None

    def _edges(self) -> list[dict[str, Any]]:
        if self._edges_file is None:
            return []
        try:
            raw = json.loads(self._edges_file.read_text())
        except (OSError, ValueError):
            return []  # not written yet (the harness writes it once all edges are up)
        edges = raw.get("edges") if isinstance(raw, dict) else None
        if not isinstance(edges, list):
            return []
        return [
            {"region": e["region"], "url": e["url"], "primary": bool(e.get("primary", False))}
            for e in edges
            if isinstance(e, dict)
            and isinstance(e.get("region"), str)
            and isinstance(e.get("url"), str)
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        head = scope["method"] == "HEAD"
        if path == "/healthz":
            await plain_response(send, 200, "ok\n", head=head)
        elif path == "/config.json":
            edges = await asyncio.to_thread(self._edges)
            body = {"region": self._region, "edges": edges, "devToken": self.dev_tokens}
            await _json_response(send, 200, body, head=head)
        elif path == "/dev/token" and self._dev_keys is not None:
            await self._dev_token(scope, send, head=head)
        elif self._static is not None:
            await self._static(scope, receive, send)
        else:
            await plain_response(send, 404, "not found\n", head=head)

    def _refusal(self, scope: Scope) -> str | None:
        """Why this request may not have a token (None: it may)."""
        listener = header(scope, EDGE_LISTENER.encode())
        if listener is None or listener != self._edge_listen or not is_loopback(_host_of(listener)):
            return "dev tokens are served only on this edge's loopback listener"
        host = (header(scope, b"host") or "").lower()
        if host not in self._own_hosts:
            return f"Host {host!r} is not this edge (use {sorted(self._own_hosts)[0]})"
        origin = header(scope, b"origin")
        if origin is not None and origin.lower() not in self._own_origins:
            # Another page (even a CORS-allowed one) must not be able to mint tokens.
            return "dev tokens are for this edge's own page"
        return None

    async def _dev_token(self, scope: Scope, send: Send, *, head: bool) -> None:
        assert self._dev_keys is not None
        refused = self._refusal(scope)
        if refused is not None:
            logger.warning("refused a dev token: %s", refused)
            await plain_response(send, 403, refused + "\n", head=head)
            return
        query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"))
        user = (query.get("user") or [""])[0]
        if not USER_ID_RE.match(user):
            await plain_response(
                send,
                400,
                "user: 1-64 letters, digits, '_' or '-', starting with a letter or digit\n",
                head=head,
            )
            return
        keys = self._dev_keys
        now = time.time()
        token = await asyncio.to_thread(
            mint,
            keys,
            user,
            ttl_seconds=DEV_TOKEN_TTL,
            issuer=self._issuer,
            audience=self._audience,
            now=now,
        )
        logger.info("dev token minted for %s", user)
        body = {"user": user, "token": token, "expiresAt": int(now) + DEV_TOKEN_TTL}
        await _json_response(send, 200, body, head=head)
