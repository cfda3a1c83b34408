"""Static files of the web client (unit tests: nothing is started)."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest

from services.web.static import StaticFiles


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "web"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>chat</title>")
    (root / "app.mjs").write_text("export {}")
    (root / "assets" / "style.css").write_text("body{}")
    (root / "assets" / "index.html").write_text("assets index")
    (root / "logo.svg").write_text("<svg/>")
    (root / "chat.wasm").write_bytes(b"\0asm")
    (root / ".env").write_text("SECRET=1")
    (tmp_path / "outside.txt").write_text("private")
    os.symlink(tmp_path / "outside.txt", root / "leak.txt")
    return root


async def _get(
    app: StaticFiles, path: str, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": method, "path": path, "headers": []}, receive, send)
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        ("/", "text/html; charset=utf-8", b"<!doctype html><title>chat</title>"),
        ("/index.html", "text/html; charset=utf-8", b"<!doctype html><title>chat</title>"),
        ("/app.mjs", "text/javascript; charset=utf-8", b"export {}"),
        ("/assets/style.css", "text/css; charset=utf-8", b"body{}"),
        ("/assets/", "text/html; charset=utf-8", b"assets index"),
        ("/assets", "text/html; charset=utf-8", b"assets index"),
        ("/logo.svg", "image/svg+xml", b"<svg/>"),
        ("/chat.wasm", "application/wasm", b"\0asm"),
    ],
)
async def test_files_are_served_with_their_content_type(
    site: Path, path: str, content_type: str, body: bytes
) -> None:
    status, headers, got = await _get(StaticFiles(site), path)
    assert (status, headers["content-type"], got) == (200, content_type, body)
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-length"] == str(len(body))


@pytest.mark.parametrize(
    "path",
    [
        "/missing.js",
        "/.env",
        "/../outside.txt",
        "/%2e%2e/outside.txt",
        "/assets/../../outside.txt",
        "/leak.txt",  # a symlink pointing out of the directory
        "/index.html%00.js",
    ],
)
async def test_nothing_else_is_exposed(site: Path, path: str) -> None:
    status, _, body = await _get(StaticFiles(site), path)
    assert status == 404
    assert b"private" not in body and b"SECRET" not in body


async def test_head_and_methods(site: Path) -> None:
    status, headers, body = await _get(StaticFiles(site), "/app.mjs", "HEAD")
    assert (status, body, headers["content-length"]) == (200, b"", "9")
    status, headers, _ = await _get(StaticFiles(site), "/app.mjs", "POST")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"
