"""Server interceptors, one concern per module, and the standard chain.

Outermost first: :class:`~mesh.rpc.interceptors.logging.AccessLog` (one line per RPC),
:class:`~mesh.rpc.interceptors.metrics.Metrics`, :class:`~mesh.rpc.interceptors.errors.ErrorMapper`
(domain errors -> gRPC status, internal errors masked), :class:`~mesh.rpc.interceptors.deadline.Deadlines`,
:class:`~mesh.rpc.interceptors.peer.PeerIdentity` (mutual-TLS ports only),
:class:`~mesh.rpc.interceptors.auth.Authenticator`, :class:`~mesh.rpc.interceptors.validation.Validator`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import grpc

from mesh.core.auth import TokenVerifier
from mesh.rpc.interceptors.auth import Authenticator
from mesh.rpc.interceptors.deadline import Deadlines
from mesh.rpc.interceptors.errors import ErrorMapper
from mesh.rpc.interceptors.logging import AccessLog
from mesh.rpc.interceptors.metrics import Metrics
from mesh.rpc.interceptors.peer import PeerIdentity
from mesh.rpc.interceptors.validation import Validator

__all__ = [
    "AccessLog",
    "Authenticator",
    "Deadlines",
    "ErrorMapper",
    "Metrics",
    "PeerIdentity",
    "Validator",
    "standard_chain",
]


def standard_chain(
    service: str,
    verifier: TokenVerifier | None,
    *,
    public_prefixes: Collection[str] = (),
    default_timeout: float = 10.0,
    access_log: bool = True,
    peer_roles: Mapping[str, Collection[str]] | None = None,
) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    """The interceptors every chatmesh gRPC server runs, in order.

    Args:
        service: Label for metrics and logs (``command``, ``query`` ...).
        verifier: Token verifier; None disables authentication (internal services).
        public_prefixes: Method prefixes that need no token (health, reflection).
        default_timeout: Deadline for unary calls that arrive without one.
        access_log: Whether to log one line per RPC.
        peer_roles: On a mutual-TLS port: method prefix -> roles that may call it
            (see :class:`PeerIdentity`); None on a plaintext port.
    """
    chain: list[grpc.aio.ServerInterceptor[Any, Any]] = []
    if access_log:
        chain.append(AccessLog(service))
    chain += [Metrics(service), ErrorMapper(), Deadlines(default_timeout)]
    if peer_roles is not None:
        chain.append(PeerIdentity(peer_roles))
    if verifier is not None:
        chain.append(Authenticator(verifier, public_prefixes=public_prefixes))
    chain.append(Validator())
    return chain
