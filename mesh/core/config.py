"""Typed service configuration, loaded in one place from a file plus environment.

Each service has a frozen dataclass (``services/<name>/config.py``) that extends
:class:`CommonConfig`; every field has a default and a docstring. :func:`load`
reads a JSON file (the harness writes one per process) and then applies
``CHATMESH_<FIELD>`` environment variables on top, converting to the field's
type. Unknown keys are errors, so a typo never silently falls back to a default.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Demo(CommonConfig):
    ...     batch: int = 10
    ...     '''Items per batch.'''
    >>> load(Demo, env={"CHATMESH_BATCH": "32", "CHATMESH_REGION": "eu"}).batch
    32
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["WRITES_EVERY_REGION", "WRITES_PRIMARY", "CommonConfig", "ConfigError", "load"]

T = TypeVar("T", bound="CommonConfig")


class ConfigError(ValueError):
    """The configuration file or environment holds a bad value."""


WRITES_PRIMARY = "primary"
"""Write mode: every write goes to the primary region (ADR-010; the default)."""
WRITES_EVERY_REGION = "every-region"
"""Write mode: every region takes its own users' writes (ADR-026)."""


@dataclass(frozen=True)
class CommonConfig:
    """Settings every chatmesh service has."""

    region: str = "us-east"
    """The region this process serves."""
    primary_region: str = "us-east"
    """The region that takes writes (``writes = "primary"``)."""
    writes: str = WRITES_PRIMARY
    """Write mode: ``"primary"`` (every write goes to ``primary_region``, ADR-010) or
    ``"every-region"`` (each region takes its own users' writes, ADR-026)."""
    instance_id: str = ""
    """Unique id of this process (generated when empty)."""
    grpc_listen: str = "127.0.0.1:0"
    """host:port the gRPC server binds (port 0: any free port)."""
    metrics_listen: str = "127.0.0.1:0"
    """host:port of the Prometheus metrics HTTP endpoint (empty: disabled)."""
    ready_file: str = ""
    """When set, the process writes its bound addresses here (JSON) once serving."""
    nats_servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    """NATS URLs of this region's cluster."""
    nats_user: str = ""
    """NATS user (each service has its own, with least-privilege permissions)."""
    nats_password: str = ""
    """NATS password."""
    nats_tls_ca: str = ""
    """PEM of the CA the NATS servers' certificates chain to: set, the connection
    uses TLS (``tls://`` servers); empty: plaintext."""
    jwt_public_key: str = ""
    """Path of the PEM public key that verifies client tokens."""
    jwt_issuer: str = "chatmesh-dev"
    """Expected ``iss`` claim."""
    jwt_audience: str = "chatmesh"
    """Expected ``aud`` claim."""
    tls_cert: str = ""
    """PEM certificate of this service's identity (internal CA). Set: the gRPC port
    speaks mutual TLS only and refuses peers without a certificate of
    ``tls_client_ca``; empty: plaintext, and no peer's internal headers are believed."""
    tls_key: str = ""
    """PEM private key of ``tls_cert``."""
    tls_client_ca: str = ""
    """PEM of the internal CA whose client certificates the gRPC port accepts."""
    log_level: str = "INFO"
    """Root log level."""
    access_log: bool = True
    """Log one line per RPC."""
    default_timeout: float = 10.0
    """Deadline (seconds) for unary calls that arrive without one."""
    shutdown_grace: float = 5.0
    """Seconds in-flight calls get to finish on SIGTERM."""

    def __post_init__(self) -> None:
        if self.writes not in (WRITES_PRIMARY, WRITES_EVERY_REGION):
            raise ConfigError(
                f"writes: {self.writes!r} must be {WRITES_PRIMARY!r} or {WRITES_EVERY_REGION!r}"
            )


def _convert(name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        ):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{name}: {value!r} is not a boolean")
    if hint in (int, float):
        try:
            return hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: {value!r} is not a number") from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: {value!r} is not a string")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}: {value!r} is not a list")
        return tuple(str(v) for v in value)
    if origin in (types.UnionType, typing.Union):
        return value
    return value


def load(
    cls: type[T], path: str | Path | None = None, *, env: Mapping[str, str] | None = None
) -> T:
    """Builds ``cls`` from defaults, then the JSON file at ``path``, then the environment.

    Raises:
        ConfigError: Unknown key or a value of the wrong type.
    """
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if path:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        unknown = sorted(set(raw) - fields)
        if unknown:
            raise ConfigError(f"{path}: unknown keys {unknown}; known: {sorted(fields)}")
        for key, value in raw.items():
            values[key] = _convert(key, value, hints[key])
    for key in fields:
        env_value = env.get(f"CHATMESH_{key.upper()}")
        if env_value is not None:
            values[key] = _convert(f"CHATMESH_{key.upper()}", env_value, hints[key])
    return cls(**values)
