"""Service identities: who a peer on an internal gRPC port is (its client certificate's name).

Every internal port requires mutual TLS with the deployment's internal CA
(:class:`mesh.deploy.tls.ServicePki` makes it). A certificate's common name is
``<role>/<name>``; the role decides what the peer may do
(:mod:`mesh.rpc.interceptors.peer`).

Example:
    >>> parse_identity(identity_name("edge", "eu"))
    ('edge', 'eu')
    >>> parse_identity("chatmesh edge") is None
    True
"""

from __future__ import annotations

__all__ = ["EDGE", "OPERATOR", "ROLES", "SERVICE", "identity_name", "parse_identity"]

EDGE = "edge"
"""A regional Envoy: the only peer whose ``x-chatmesh-*`` headers are believed."""
SERVICE = "service"
"""A chatmesh service process."""
OPERATOR = "operator"
"""People and tools (the harness, the benchmark) allowed the internal operator RPCs."""

ROLES: tuple[str, ...] = (EDGE, SERVICE, OPERATOR)
"""Service identity roles, the first part of a certificate's common name (``edge/eu``).

``edge``: a regional Envoy (the only peer whose ``x-chatmesh-*`` headers are
believed); ``service``: a chatmesh service process; ``operator``: people and
tools (the harness, the benchmark) allowed the internal operator RPCs."""


def identity_name(role: str, name: str) -> str:
    """The common name of a service identity: ``<role>/<name>``.

    Raises:
        ValueError: Unknown role, or a name with a ``/``.
    """
    if role not in ROLES or not name or "/" in name:
        raise ValueError(f"bad service identity {role!r}/{name!r}: role one of {ROLES}")
    return f"{role}/{name}"


def parse_identity(common_name: str) -> tuple[str, str] | None:
    """``(role, name)`` of a certificate common name, or None if it is not a service identity."""
    role, sep, name = common_name.partition("/")
    if not sep or role not in ROLES or not name or "/" in name:
        return None
    return role, name
