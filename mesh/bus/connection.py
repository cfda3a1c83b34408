"""Connecting to NATS with chatmesh's defaults.

JetStream calls go through nats-py's own API (``nc.jetstream()``, ``nc.jsm()``);
services wrap the connection in :class:`mesh.bus.natsbus.NatsBus`.

Example:
    >>> async def demo() -> None:  # doctest: +SKIP
    ...     nc = await connect(["nats://127.0.0.1:4222"], name="demo", user="u", password="p")
    ...     info = await nc.jsm().stream_info("EVENTS")
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import nats
from nats.aio.client import Client as NATS

__all__ = ["connect", "tls_context"]

logger = logging.getLogger(__name__)


def tls_context(ca_file: str) -> ssl.SSLContext:
    """A client TLS context that trusts only ``ca_file`` (the deployment's internal CA)."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def connect(servers: str | list[str], *, name: str, tls_ca: str = "", **kwargs: Any) -> NATS:
    """Connects a nats-py client with chatmesh's defaults.

    Reconnects forever with a short wait, and routes errors to the logger
    instead of printing a traceback per failed reconnect (nats.py's default).

    Args:
        servers: NATS URLs (``tls://`` ones with ``tls_ca``).
        name: The connection's name (shown by the server's monitoring).
        tls_ca: PEM of the CA the servers' certificates chain to; set: TLS with
            the server's name verified, empty: plaintext.
        **kwargs: More ``nats.connect`` options (``user``, ``password`` ...).
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
    if tls_ca:
        options["tls"] = tls_context(tls_ca)
    options.update(kwargs)
    return await nats.connect(servers, **options)
