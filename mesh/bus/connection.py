"""Connecting to NATS with chatmesh's defaults, and the JetStream API's error type.

Example:
    >>> async def demo() -> None:  # doctest: +SKIP
    ...     nc = await connect(["nats://127.0.0.1:4222"], name="demo", user="u", password="p")
    ...     info = await js_api(nc, "$JS.API.STREAM.INFO.EVENTS")
"""

from __future__ import annotations

import json
import logging
from typing import Any

import nats
from nats.aio.client import Client as NATS

__all__ = ["JetStreamError", "connect", "js_api"]

logger = logging.getLogger(__name__)


class JetStreamError(RuntimeError):
    """A JetStream API call returned an error."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        self.code = code
        self.err_code = err_code
        super().__init__(f"JetStream error {code}/{err_code}: {description}")


async def connect(servers: str | list[str], *, name: str, **kwargs: Any) -> NATS:
    """Connects a nats-py client with chatmesh's defaults.

    Reconnects forever with a short wait, and routes errors to the logger
    instead of printing a traceback per failed reconnect (nats.py's default).
    """

    async def on_error(exc: Exception) -> None:
        logger.warning("nats %s: %s", name, exc)

    async def on_disconnect() -> None:
        logger.info("nats %s: disconnected", name)

    async def on_reconnect() -> None:
        logger.info("nats %s: reconnected", name)

    options: dict[str, Any] = {
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "connect_timeout": 5,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
    }
    options.update(kwargs)
    return await nats.connect(servers, **options)


async def js_api(
    nc: NATS, subject: str, body: dict[str, Any] | None = None, timeout: float = 10.0
) -> dict[str, Any]:
    """Calls a JetStream API subject and returns the JSON response.

    Raises:
        JetStreamError: The response carries an error.
    """
    payload = json.dumps(body).encode() if body is not None else b""
    msg = await nc.request(subject, payload, timeout=timeout)
    data: dict[str, Any] = json.loads(msg.data)
    if "error" in data:
        err = data["error"]
        raise JetStreamError(
            int(err.get("code", 0)), int(err.get("err_code", 0)), str(err.get("description"))
        )
    return data
