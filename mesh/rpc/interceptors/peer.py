"""Service identity: which peer is calling, what its role allows, which headers it may set.

On a mutual-TLS port (``tls_cert`` set) the transport has already refused every
peer without a certificate of the internal CA; this interceptor reads the
verified certificate's common name (``<role>/<name>``, :mod:`mesh.core.identity`),
puts it in a context variable for the handler (:func:`current_peer`) and refuses
methods the role may not call (PERMISSION_DENIED, ``PEER_NOT_ALLOWED``): the
Fan-Out Service's operator RPCs need an ``operator``.

Internal headers (``x-chatmesh-*``, :mod:`mesh.core.headers`) are believed only
from the edge: :func:`trusts_internal_headers` is True only for a peer whose
role is ``edge``. On a plaintext port there is no verified peer, so nothing is
believed there either.

Example:
    >>> from mesh.rpc.interceptors.peer import trusts_internal_headers  # in a handler:
    >>> # region = header(context) if trusts_internal_headers() else own_region
"""

from __future__ import annotations

import contextvars
from collections.abc import Collection, Mapping
from typing import Any

import grpc

from mesh.core.errors import PermissionDenied, Unauthenticated
from mesh.core.identity import EDGE, parse_identity
from mesh.rpc.interceptors._base import Interceptor, NextStream, NextUnary

__all__ = ["Peer", "PeerIdentity", "current_peer", "peer_of", "trusts_internal_headers"]

Peer = tuple[str, str]
"""``(role, name)`` of a verified peer."""

_peer: contextvars.ContextVar[Peer | None] = contextvars.ContextVar("chatmesh_peer", default=None)


def current_peer() -> Peer | None:
    """The verified service identity of the current RPC's peer (None on a plaintext port)."""
    return _peer.get()


def trusts_internal_headers() -> bool:
    """Whether the current RPC's ``x-chatmesh-*`` headers may be believed (the peer is an edge)."""
    peer = _peer.get()
    return peer is not None and peer[0] == EDGE


def peer_of(context: grpc.aio.ServicerContext[Any, Any]) -> Peer | None:
    """The service identity of a call's verified client certificate, if it has one."""
    auth = context.auth_context() or {}
    names = list(auth.get("x509_common_name") or ())
    if len(names) != 1:
        return None
    raw = names[0]
    return parse_identity(raw.decode() if isinstance(raw, bytes) else str(raw))


class PeerIdentity(Interceptor):
    """Records the peer's identity; refuses peers without one and roles a method does not allow."""

    def __init__(self, allowed: Mapping[str, Collection[str]]) -> None:
        """Prepares the check.

        Args:
            allowed: Method prefix -> roles that may call it (first match wins); a
                method matching no prefix is open to every verified peer.
        """
        self._allowed = [(prefix, frozenset(roles)) for prefix, roles in allowed.items()]

    def _check(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Peer:
        peer = peer_of(context)
        if peer is None:
            # The CA signed it, but it names no service identity.
            raise Unauthenticated("TOKEN_MISSING", "this port needs a chatmesh service identity")
        for prefix, roles in self._allowed:
            if method.startswith(prefix):
                if peer[0] not in roles:
                    raise PermissionDenied(
                        "PEER_NOT_ALLOWED",
                        f"{method} needs a peer of role {' or '.join(sorted(roles))}, "
                        f"not {peer[0]}",
                    )
                break
        return peer

    async def unary(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        call_next: NextUnary,
    ) -> Any:
        # Each RPC runs in its own task (its own context), so nothing leaks between calls.
        _peer.set(self._check(method, context))
        return await call_next(request, context)

    async def stream(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        call_next: NextStream,
    ) -> None:
        _peer.set(self._check(method, context))
        await call_next(request, context)
