"""Authentication: every call carries ``authorization: Bearer <JWT>``.

The verified identity is put in a context variable for the handler
(:func:`current_user`), so no handler parses metadata and no request field can
claim to be someone else.

Example:
    >>> from mesh.rpc.interceptors.auth import current_user  # inside a handler:
    >>> # user_id = current_user()
"""

from __future__ import annotations

import contextvars
from collections.abc import Collection
from typing import Any

import grpc

from mesh.core.auth import Identity, TokenVerifier
from mesh.core.errors import Unauthenticated
from mesh.rpc.interceptors._base import Interceptor, NextStream, NextUnary

__all__ = ["Authenticator", "current_identity", "current_user"]

_identity: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "chatmesh_identity", default=None
)


def current_identity() -> Identity:
    """The caller of the current RPC.

    Raises:
        Unauthenticated: Called outside an authenticated RPC.
    """
    identity = _identity.get()
    if identity is None:
        raise Unauthenticated("TOKEN_MISSING", "this call requires a bearer token")
    return identity


def current_user() -> str:
    """The user id of the current RPC's caller."""
    return current_identity().user_id


def _authorization(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The one ``authorization`` header of the call.

    Raises:
        Unauthenticated: More than one (which would a proxy check, which would we
            believe?); the edge refuses these too, this holds for direct calls.
    """
    found = [
        value if isinstance(value, str) else value.decode()
        for key, value in context.invocation_metadata() or ()
        if key == "authorization"
    ]
    if len(found) > 1:
        raise Unauthenticated("TOKEN_INVALID", "send exactly one authorization header")
    return found[0] if found else None


class Authenticator(Interceptor):
    """Rejects calls without a valid token (UNAUTHENTICATED) and records the identity."""

    def __init__(self, verifier: TokenVerifier, *, public_prefixes: Collection[str] = ()) -> None:
        """Args: verifier checks tokens; calls whose method starts with a public prefix skip it."""
        self._verifier = verifier
        self._public = tuple(public_prefixes)

    def _authenticate(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Identity | None:
        if method.startswith(self._public):
            return None
        return self._verifier.verify_header(_authorization(context))

    async def unary(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        call_next: NextUnary,
    ) -> Any:
        # Not reset afterwards: the access log, further out, names the caller from it.
        # Each RPC runs in its own task (its own context), so nothing leaks between calls.
        _identity.set(self._authenticate(method, context))
        return await call_next(request, context)

    async def stream(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        call_next: NextStream,
    ) -> None:
        _identity.set(self._authenticate(method, context))
        await call_next(request, context)
