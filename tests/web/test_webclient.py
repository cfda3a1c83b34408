"""The web client's /config.json and dev-only /dev/token (unit tests: nothing is started)."""

from __future__ import annotations

import json
import time
from collections.abc import MutableMapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mesh.core.auth import KeyDirectory, TokenVerifier
from services.edge.config import EdgeConfig
from services.edge.static import StaticFiles
from services.edge.webclient import DEV_TOKEN_TTL, WebClientApp, check_dev_token

OWN = "http://127.0.0.1:8080"


@pytest.fixture
def keys(tmp_path: Path) -> KeyDirectory:
    directory = KeyDirectory(tmp_path / "keys")
    directory.ensure()
    return directory


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
    app = WebClientApp(region="eu", static=None, own_origins=[OWN], edges_file=edges_file)
    status, headers, body = await _get(app, "/config.json")
    # Before the harness wrote the file (edges still starting): only this edge is known.
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


async def test_no_dev_token_endpoint_without_keys(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<title>chat</title>")
    app = WebClientApp(region="eu", static=StaticFiles(tmp_path), own_origins=[OWN])
    status, _, _ = await _get(app, "/dev/token", "user=alice")
    assert status == 404
    assert (await _get(app, "/"))[0] == 200  # other paths still reach the static files


async def test_dev_token_mints_a_token_the_services_accept(keys: KeyDirectory) -> None:
    app = WebClientApp(region="eu", static=None, own_origins=[OWN], dev_keys=keys)
    status, headers, body = await _get(app, "/dev/token", "user=alice", {"origin": OWN})
    assert status == 200 and headers["cache-control"] == "no-store"
    data = json.loads(body)
    identity = TokenVerifier(keys.public_key_pem()).verify(data["token"])
    assert (identity.user_id, data["user"]) == ("alice", "alice")
    assert data["expiresAt"] == int(identity.expires_at)
    assert abs(identity.expires_at - time.time() - DEV_TOKEN_TTL) < 60
    assert json.loads((await _get(app, "/config.json"))[2])["devToken"] is True


@pytest.mark.parametrize(
    ("query", "headers", "status"),
    [
        ("user=a.b", {}, 400),  # not a user id (ids appear in NATS subjects)
        ("", {}, 400),
        (
            "user=alice",
            {"origin": "http://localhost:5173"},
            403,
        ),  # another page, even a CORS-allowed one
        ("user=alice", {"origin": "http://127.0.0.1:8081"}, 403),
    ],
)
async def test_dev_token_refusals(
    keys: KeyDirectory, query: str, headers: dict[str, str], status: int
) -> None:
    app = WebClientApp(region="eu", static=None, own_origins=[OWN], dev_keys=keys)
    got, _, body = await _get(app, "/dev/token", query, headers)
    assert got == status
    assert b'"token"' not in body


def test_dev_tokens_only_on_loopback(keys: KeyDirectory) -> None:
    cfg = replace(EdgeConfig(), dev_token_keys=str(keys.path))
    check_dev_token(replace(cfg, grpc_listen="127.0.0.1:0"))
    check_dev_token(replace(cfg, grpc_listen="[::1]:0"))
    check_dev_token(replace(EdgeConfig(), grpc_listen="0.0.0.0:8080"))  # no keys: fine anywhere
    with pytest.raises(ValueError, match="loopback"):
        check_dev_token(replace(cfg, grpc_listen="0.0.0.0:8080"))
    with pytest.raises(ValueError, match=r"jwt-private\.pem"):
        check_dev_token(replace(cfg, dev_token_keys=str(keys.path / "missing")))
