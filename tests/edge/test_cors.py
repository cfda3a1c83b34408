"""The edge's CORS policy and middleware (unit tests: nothing is started)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import pytest

from services.edge.cors import Cors, OriginPolicy
from services.edge.server import own_origins


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost:5173", True),
        ("http://localhost:80", True),
        ("http://localhost", True),  # default port 80 matches the wildcard
        ("http://127.0.0.1:43210", True),  # the edge's own origin
        ("HTTP://LOCALHOST:3000", True),
        ("https://localhost:5173", False),  # other scheme
        ("http://localhost.evil.example:5173", False),
        ("http://evil.example", False),
        ("http://127.0.0.1:43211", False),  # another port of the same host
        ("null", False),
        ("", False),
        ("http://localhost:5173/path", False),
    ],
)
def test_origin_policy(origin: str, allowed: bool) -> None:
    policy = OriginPolicy(["http://localhost:*", "http://127.0.0.1:43210"])
    assert policy.allows(origin) is allowed


def test_bad_policy_entries_are_refused() -> None:
    with pytest.raises(ValueError, match="not an origin"):
        OriginPolicy(["localhost:5173"])


def test_own_origins_cover_localhost_aliases() -> None:
    assert own_origins("127.0.0.1", 8080) == ["http://127.0.0.1:8080", "http://localhost:8080"]


async def _call(
    app: Any, method: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    scope = {
        "type": "http",
        "method": method,
        "path": "/chatmesh.v1.QueryService/GetHistory",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


class _Inner:
    """The wrapped app: records whether a request got through."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"grpc-status", b"0")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})


async def test_middleware_preflight_actual_and_refusal() -> None:
    inner = _Inner()
    app = Cors(inner, OriginPolicy(["http://localhost:*"]), max_age=60)

    status, headers, _ = await _call(
        app, "OPTIONS", {"origin": "http://localhost:5173", "access-control-request-method": "POST"}
    )
    assert status == 204
    assert headers["access-control-allow-origin"] == "http://localhost:5173"
    assert headers["access-control-max-age"] == "60"
    assert inner.calls == 0  # answered by the middleware

    status, headers, body = await _call(app, "POST", {"origin": "http://localhost:5173"})
    assert (status, body) == (200, b"ok")
    assert headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "grpc-status-details-bin" in headers["access-control-expose-headers"]
    assert headers["vary"] == "Origin"

    for method in ("OPTIONS", "POST"):
        status, headers, body = await _call(
            app, method, {"origin": "https://evil.example", "access-control-request-method": "POST"}
        )
        assert status == 403
        assert not [h for h in headers if h.startswith("access-control-")]
        assert b"not allowed" in body
    assert inner.calls == 1

    # No Origin (native gRPC, curl): untouched, no CORS headers.
    status, headers, _ = await _call(app, "POST", {})
    assert status == 200
    assert "access-control-allow-origin" not in headers
    assert inner.calls == 2
