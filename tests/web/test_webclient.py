"""The web service's /config.json and dev-only /dev/token (unit tests: nothing is started).

The end-to-end refusals through a real Envoy are in ``tests/edge/test_dev_token.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import MutableMapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mesh.core.auth import KeyDirectory, TokenVerifier
from services.web.config import WebConfig
from services.web.static import StaticFiles
from services.web.webclient import DEV_TOKEN_TTL, WebClientApp, check_dev_token

LISTEN = "127.0.0.1:8080"
OWN = "http://127.0.0.1:8080"
# What Envoy adds to a /dev/token request that arrived on its loopback listener.
FROM_EDGE = {"x-chatmesh-edge-listener": LISTEN, "host": "127.0.0.1:8080"}


@pytest.fixture
def keys(tmp_path: Path) -> KeyDirectory:
    directory = KeyDirectory(tmp_path / "keys")
    directory.ensure()
    return directory


def _app(**kw: Any) -> WebClientApp:
    return WebClientApp(region="eu", static=None, edge_url=OWN, edge_listen=LISTEN, **kw)


async def _get(
    app: WebClientApp, path: str, query: str = "", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": query.encode(),
        "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    await app(scope, receive, send)
    response_headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], response_headers, b"".join(m.get("body", b"") for m in sent[1:])


async def test_config_lists_the_edges_the_harness_wrote(tmp_path: Path) -> None:
    edges_file = tmp_path / "web-edges.json"
    app = _app(edges_file=edges_file)
    status, headers, body = await _get(app, "/config.json")
    # Before the harness wrote the file: only this edge is known.
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"region": "eu", "edges": [], "devToken": False}

    edges = [
        {"region": "us-east", "url": "http://127.0.0.1:1", "primary": True},
        {"region": "eu", "url": "http://127.0.0.1:2", "primary": False},
    ]
    edges_file.write_text(json.dumps({"edges": [*edges, {"region": 3}]}))
    _, headers, body = await _get(app, "/config.json")
    assert json.loads(body)["edges"] == edges  # the malformed entry is dropped
    assert headers["cache-control"] == "no-store"

    edges_file.write_text("{torn")
    assert json.loads((await _get(app, "/config.json"))[2])["edges"] == []
    assert (await _get(app, "/healthz"))[0] == 200


async def test_no_dev_token_endpoint_without_keys(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<title>chat</title>")
    app = WebClientApp(region="eu", static=StaticFiles(tmp_path), edge_url=OWN, edge_listen=LISTEN)
    status, _, _ = await _get(app, "/dev/token", "user=alice", FROM_EDGE)
    assert status == 404
    assert (await _get(app, "/"))[0] == 200  # other paths still reach the static files


async def test_dev_token_mints_a_token_the_services_accept(keys: KeyDirectory) -> None:
    app = _app(dev_keys=keys)
    status, headers, body = await _get(
        app, "/dev/token", "user=alice", {**FROM_EDGE, "origin": OWN}
    )
    assert status == 200 and headers["cache-control"] == "no-store"
    data = json.loads(body)
    identity = TokenVerifier(keys.public_key_pem()).verify(data["token"])
    assert (identity.user_id, data["user"]) == ("alice", "alice")
    assert data["expiresAt"] == int(identity.expires_at)
    assert abs(identity.expires_at - time.time() - DEV_TOKEN_TTL) < 60
    assert json.loads((await _get(app, "/config.json"))[2])["devToken"] is True
    # localhost names the same listener.
    status, _, _ = await _get(
        app, "/dev/token", "user=alice", {**FROM_EDGE, "host": "localhost:8080"}
    )
    assert status == 200


@pytest.mark.parametrize(
    ("query", "headers", "status", "why"),
    [
        ("user=a.b", FROM_EDGE, 400, "user"),  # not a user id (ids appear in NATS subjects)
        ("", FROM_EDGE, 400, "user"),
        # Another page, even a CORS-allowed one, or another edge's.
        ("user=alice", {**FROM_EDGE, "origin": "http://localhost:5173"}, 403, "own page"),
        ("user=alice", {**FROM_EDGE, "origin": "http://127.0.0.1:8081"}, 403, "own page"),
        # DNS rebinding: a foreign name resolving to 127.0.0.1.
        ("user=alice", {**FROM_EDGE, "host": "evil.example:8080"}, 403, "not this edge"),
        ("user=alice", {**FROM_EDGE, "host": "127.0.0.1:9999"}, 403, "not this edge"),
        ("user=alice", {k: v for k, v in FROM_EDGE.items() if k != "host"}, 403, "not this edge"),
        # Not through the edge's listener: no header, another listener, a public one.
        ("user=alice", {"host": "127.0.0.1:8080"}, 403, "loopback listener"),
        (
            "user=alice",
            {**FROM_EDGE, "x-chatmesh-edge-listener": "127.0.0.1:9"},
            403,
            "loopback listener",
        ),
        (
            "user=alice",
            {**FROM_EDGE, "x-chatmesh-edge-listener": "10.1.2.3:8080"},
            403,
            "loopback listener",
        ),
    ],
)
async def test_dev_token_refusals(
    keys: KeyDirectory, query: str, headers: dict[str, str], status: int, why: str
) -> None:
    got, _, body = await _get(_app(dev_keys=keys), "/dev/token", query, headers)
    assert got == status
    assert why in body.decode()
    assert b'"token"' not in body


def test_dev_tokens_only_on_loopback(keys: KeyDirectory) -> None:
    cfg = replace(WebConfig(), dev_token_keys=str(keys.path), edge_listen=LISTEN)
    check_dev_token(cfg)
    check_dev_token(replace(cfg, edge_listen="[::1]:8080"))
    check_dev_token(replace(WebConfig(), edge_listen="0.0.0.0:8080"))  # no keys: fine anywhere
    with pytest.raises(ValueError, match="loopback edge_listen"):
        check_dev_token(replace(cfg, edge_listen="0.0.0.0:8080"))
    with pytest.raises(ValueError, match="loopback edge_listen"):
        check_dev_token(replace(cfg, edge_listen=""))
    with pytest.raises(ValueError, match="loopback http_listen"):
        check_dev_token(replace(cfg, http_listen="0.0.0.0:8081"))
    with pytest.raises(ValueError, match=r"jwt-private\.pem"):
        check_dev_token(replace(cfg, dev_token_keys=str(keys.path / "missing")))
