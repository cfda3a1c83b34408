"""Static files of the web client, served under ``/`` by the edge.

Only regular files inside the configured directory are served, for GET and
HEAD: ``/`` and directory paths map to their ``index.html``; dot-files, paths
escaping the directory (``..``, symlinks pointing out) and everything else are
404. No directory listings. Content types come from a fixed table of web types
(not the host's ``/etc/mime.types``, so every machine answers the same), with
``X-Content-Type-Options: nosniff`` so browsers never guess.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (root / "app.js").write_text("console.log(1)")
    >>> StaticFiles(root).resolve("/app.js") == (root / "app.js").resolve()
    True
    >>> StaticFiles(root).resolve("/../etc/passwd") is None
    True
"""

from __future__ import annotations

import asyncio
import mimetypes
from pathlib import Path
from urllib.parse import unquote

from services.web.asgi import Receive, Scope, Send, plain_response

__all__ = ["CONTENT_TYPES", "StaticFiles"]

CONTENT_TYPES: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".wasm": "application/wasm",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}
"""Content type by file suffix; others fall back to :mod:`mimetypes`, then octet-stream."""


def content_type(path: Path) -> str:
    """The ``Content-Type`` of a file."""
    known = CONTENT_TYPES.get(path.suffix.lower())
    if known:
        return known
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


class StaticFiles:
    """An ASGI app serving one directory read-only."""

    def __init__(self, directory: Path) -> None:
        """Args: directory is the root (it need not exist yet; missing files are 404)."""
        self._root = directory.resolve()

    def resolve(self, url_path: str) -> Path | None:
        """The file a URL path names, or None if it names nothing servable."""
        path = unquote(url_path)
        if "\x00" in path or "\\" in path:
            return None
        parts = [p for p in path.split("/") if p]
        if any(p.startswith(".") for p in parts):
            return None
        target = self._root.joinpath(*parts)
        if path.endswith("/") or not parts or target.is_dir():
            target = target / "index.html"
        try:
            resolved = target.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not resolved.is_relative_to(self._root) or not resolved.is_file():
            return None
        return resolved

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await plain_response(send, 405, "method not allowed\n", [(b"allow", b"GET, HEAD")])
            return
        target = self.resolve(scope["path"])
        if target is None:
            await plain_response(send, 404, "not found\n", head=method == "HEAD")
            return
        try:
            body = await asyncio.to_thread(target.read_bytes)
        except OSError:
            await plain_response(send, 404, "not found\n", head=method == "HEAD")
            return
        headers = [
            (b"content-type", content_type(target).encode()),
            (b"content-length", str(len(body)).encode()),
            # The page and its scripts change with each deploy; revalidate.
            (b"cache-control", b"no-cache"),
            (b"x-content-type-options", b"nosniff"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {
                "type": "http.response.body",
                "body": b"" if method == "HEAD" else body,
                "more_body": False,
            }
        )
