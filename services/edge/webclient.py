"""The web client's two dynamic endpoints, in front of its static files.

* ``GET /config.json``: which regional edges exist, so the page can offer a
  region picker: ``{"region": <this edge's region>, "edges": [{"region",
  "url", "primary"}, ...], "devToken": <bool>}``. The edge list comes from
  ``edges_file``, which the harness writes once every edge is up (edges bind
  port 0 and start in parallel, so no edge knows the others' addresses at
  start-up); the file is read per request (it is tiny) and a missing or
  unreadable one just means an empty list.
* ``GET /dev/token?user=NAME``: **development only**. Mints a one-hour token
  for whoever asks, with the deployment's private key (``dev_token_keys``).
  It exists only when that setting is non-empty, which only the local harness
  (``chatmesh up``, the test suite) does; the production shape (Envoy in
  front, keys in secrets) never sets it. Two guards keep it from becoming an
  accident elsewhere: :func:`check_dev_token` refuses to start an edge with it
  unless the edge listens on loopback, and a request carrying an ``Origin``
  that is not the edge's own is refused with 403, so another page in the
  browser (even an allowed CORS origin) cannot fetch tokens.

Everything else goes to the static files (or is a 404 without them).

Example:
    >>> app = WebClientApp(region="eu", static=None, own_origins=["http://127.0.0.1:1"])
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
from urllib.parse import parse_qs

from mesh.core.auth import DEFAULT_AUDIENCE, DEFAULT_ISSUER, USER_ID_RE, KeyDirectory, mint
from services.edge.asgi import ASGIApp, Receive, Scope, Send, header, plain_response
from services.edge.config import EdgeConfig

__all__ = ["DEV_TOKEN_TTL", "WebClientApp", "check_dev_token"]

logger = logging.getLogger(__name__)

DEV_TOKEN_TTL = 3600
"""Lifetime of a ``/dev/token`` token in seconds; the page fetches a new one when it expires."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_dev_token(cfg: EdgeConfig) -> None:
    """Refuses a ``dev_token_keys`` setting on an edge reachable from other machines.

    Raises:
        ValueError: ``dev_token_keys`` is set and ``grpc_listen`` is not a loopback address,
            or the key directory has no private key.
    """
    if not cfg.dev_token_keys:
        return
    host = cfg.grpc_listen.rpartition(":")[0]
    if not _is_loopback(host):
        raise ValueError(
            f"edge: dev_token_keys (GET /dev/token, development only) needs a loopback "
            f"grpc_listen, not {cfg.grpc_listen!r}"
        )
    if not KeyDirectory(Path(cfg.dev_token_keys)).private_key_path.is_file():
        raise ValueError(f"edge: dev_token_keys {cfg.dev_token_keys!r} has no jwt-private.pem")


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
    """ASGI app: ``/config.json``, ``/dev/token`` (when enabled), else the static files."""

    def __init__(
        self,
        *,
        region: str,
        static: ASGIApp | None,
        own_origins: list[str],
        edges_file: Path | None = None,
        dev_keys: KeyDirectory | None = None,
        issuer: str = DEFAULT_ISSUER,
        audience: str = DEFAULT_AUDIENCE,
    ) -> None:
        """Args: own_origins are the edge's own page origins (the only ones allowed to get tokens)."""
        self._region = region
        self._static = static
        self._own_origins = {o.lower() for o in own_origins}
        self._edges_file = edges_file
        self._dev_keys = dev_keys
        self._issuer = issuer
        self._audience = audience

    @classmethod
    def from_config(
        cls, cfg: EdgeConfig, static: ASGIApp | None, own_origins: list[str]
    ) -> WebClientApp:
        """The app an edge with configuration ``cfg`` serves."""
        return cls(
            region=cfg.region,
            static=static,
            own_origins=own_origins,
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
        path = scope["path"]
        head = scope["method"] == "HEAD"
        if path == "/config.json":
            edges = await asyncio.to_thread(self._edges)
            body = {"region": self._region, "edges": edges, "devToken": self.dev_tokens}
            await _json_response(send, 200, body, head=head)
        elif path == "/dev/token" and self._dev_keys is not None:
            await self._dev_token(scope, send, head=head)
        elif self._static is not None:
            await self._static(scope, receive, send)
        else:
            await plain_response(send, 404, "not found\n", head=head)

    async def _dev_token(self, scope: Scope, send: Send, *, head: bool) -> None:
        assert self._dev_keys is not None
        origin = header(scope, b"origin")
        if origin is not None and origin.lower() not in self._own_origins:
            # Another page (even a CORS-allowed one) must not be able to mint tokens.
            await plain_response(send, 403, "dev tokens are for this edge's own page\n", head=head)
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
