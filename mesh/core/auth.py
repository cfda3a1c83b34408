"""Identity: ES256 JWTs in ``authorization: Bearer <token>`` metadata.

The token's ``sub`` is the user id; no request field ever names the caller.
Keys live in a key directory (``jwt-private.pem`` for minting, ``jwt-public.pem``
and ``jwks.json`` for verifying; Envoy's ``jwt_authn`` reads the same JWKS).
``chatmesh token USER`` mints development tokens with the private key; the
services only ever hold the public key.

Example:
    >>> import tempfile, pathlib
    >>> keys = KeyDirectory(pathlib.Path(tempfile.mkdtemp()))
    >>> keys.ensure()
    >>> verifier = TokenVerifier(keys.public_key_pem(), issuer="chatmesh-dev", audience="chatmesh")
    >>> verifier.verify(mint(keys, "alice")).user_id
    'alice'
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mesh.core.errors import Unauthenticated

__all__ = [
    "DEFAULT_AUDIENCE",
    "DEFAULT_ISSUER",
    "MAX_TOKEN_LIFETIME",
    "USER_ID_RE",
    "Identity",
    "KeyDirectory",
    "TokenVerifier",
    "bearer_token",
    "mint",
]

DEFAULT_ISSUER = "chatmesh-dev"
DEFAULT_AUDIENCE = "chatmesh"
USER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
"""User ids appear in NATS subjects: no dots, no wildcards, no spaces."""
MAX_TOKEN_LIFETIME = 24 * 3600
"""Longest ``exp - iat`` a verifier accepts by default (seconds): a stolen token is
good for a day at most, however far its issuer set ``exp``. The edge's
``jwt_authn`` enforces the same bound (``max_lifetime``)."""


@dataclass(frozen=True)
class Identity:
    """The authenticated caller."""

    user_id: str
    """The token's ``sub``."""
    expires_at: float
    """The token's ``exp`` (epoch seconds)."""


class KeyDirectory:
    """The signing key pair and JWKS of one deployment."""

    def __init__(self, path: Path) -> None:
        """Points at ``path``; call :meth:`ensure` to create keys if missing."""
        self.path = path

    @property
    def private_key_path(self) -> Path:
        """PEM of the ES256 private key (minting only; mode 0600)."""
        return self.path / "jwt-private.pem"

    @property
    def public_key_path(self) -> Path:
        """PEM of the public key (verification)."""
        return self.path / "jwt-public.pem"

    @property
    def jwks_path(self) -> Path:
        """The public key as a JWKS document (for Envoy's jwt_authn)."""
        return self.path / "jwks.json"

    def ensure(self) -> None:
        """Creates a key pair and JWKS unless they exist."""
        if (
            self.private_key_path.exists()
            and self.public_key_path.exists()
            and self.jwks_path.exists()
        ):
            return
        self.path.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = self.private_key_path.with_suffix(".tmp")
        tmp.write_bytes(pem)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.private_key_path)
        pub = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key_path.write_bytes(pub)
        self.jwks_path.write_text(json.dumps(jwks_for(pub), indent=2))

    def public_key_pem(self) -> bytes:
        """The public key PEM."""
        return self.public_key_path.read_bytes()

    def private_key_pem(self) -> bytes:
        """The private key PEM."""
        return self.private_key_path.read_bytes()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_id(public_pem: bytes) -> str:
    """A stable key id: the first 16 hex digits of the SHA-256 of the public key PEM."""
    return hashlib.sha256(public_pem).hexdigest()[:16]


def jwks_for(public_pem: bytes) -> dict[str, Any]:
    """The JWKS document for an EC P-256 public key."""
    pub = serialization.load_pem_public_key(public_pem)
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    numbers = pub.public_numbers()
    return {
        "keys": [
            {
                "kty": "EC",
                "crv": "P-256",
                "alg": "ES256",
                "use": "sig",
                "kid": key_id(public_pem),
                "x": _b64url(numbers.x.to_bytes(32, "big")),
                "y": _b64url(numbers.y.to_bytes(32, "big")),
            }
        ]
    }


def mint(
    keys: KeyDirectory,
    user_id: str,
    *,
    ttl_seconds: int = 24 * 3600,
    issuer: str = DEFAULT_ISSUER,
    audience: str = DEFAULT_AUDIENCE,
    now: float | None = None,
) -> str:
    """Mints a development token for ``user_id``.

    Raises:
        ValueError: ``user_id`` is not a valid user id.
    """
    if not USER_ID_RE.match(user_id):
        raise ValueError(
            f"invalid user id {user_id!r}: 1-64 letters, digits, '_' or '-', starting alphanumeric"
        )
    issued = int(now if now is not None else time.time())
    claims = {
        "sub": user_id,
        "iss": issuer,
        "aud": audience,
        "iat": issued,
        "exp": issued + ttl_seconds,
    }
    return jwt.encode(
        claims,
        keys.private_key_pem(),
        algorithm="ES256",
        headers={"kid": key_id(keys.public_key_pem())},
    )


def bearer_token(authorization: str | None) -> str:
    """Extracts the token from an ``authorization`` header value.

    Raises:
        Unauthenticated: Missing or not ``Bearer <token>``.
    """
    if not authorization:
        raise Unauthenticated("TOKEN_MISSING", "missing 'authorization: Bearer <token>' metadata")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("TOKEN_MISSING", "authorization metadata must be 'Bearer <token>'")
    return token.strip()


class TokenVerifier:
    """Verifies bearer tokens against one public key."""

    def __init__(
        self,
        public_key_pem: bytes,
        *,
        issuer: str = DEFAULT_ISSUER,
        audience: str = DEFAULT_AUDIENCE,
        leeway_seconds: float = 30.0,
        max_lifetime_seconds: float = MAX_TOKEN_LIFETIME,
    ) -> None:
        """Prepares a verifier for tokens signed by the matching private key.

        Args:
            public_key_pem: The issuer's public key.
            issuer: Expected ``iss``.
            audience: Expected ``aud``.
            leeway_seconds: Clock skew allowed on ``exp`` and ``iat``.
            max_lifetime_seconds: Tokens whose ``exp - iat`` is longer are refused
                (TOKEN_INVALID), as are tokens without ``iat`` or issued in the future.
        """
        self._key = serialization.load_pem_public_key(public_key_pem)
        self._max_lifetime = max_lifetime_seconds
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        # Clients send the same token on every call: remember verified ones (an
        # ES256 verification costs ~0.2 ms of CPU per call otherwise).
        self._verified: OrderedDict[str, Identity] = OrderedDict()
        self._cache_size = 4096

    def verify(self, token: str) -> Identity:
        """Checks signature, issuer, audience, expiry and subject.

        Raises:
            Unauthenticated: With reason TOKEN_EXPIRED or TOKEN_INVALID.
        """
        cached = self._verified.get(token)
        if cached is not None:
            if cached.expires_at + self._leeway > time.time():
                self._verified.move_to_end(token)
                return cached
            del self._verified[token]
        try:
            claims = jwt.decode(
                token,
                self._key,  # type: ignore[arg-type]
                algorithms=["ES256"],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["sub", "exp", "iat", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("TOKEN_EXPIRED", "the token has expired; get a new one") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated("TOKEN_INVALID", f"invalid token: {exc}") from None
        lifetime = float(claims["exp"]) - float(claims["iat"])
        if lifetime > self._max_lifetime:
            raise Unauthenticated(
                "TOKEN_INVALID",
                f"invalid token: lifetime {lifetime:.0f}s exceeds the maximum "
                f"{self._max_lifetime:.0f}s; get a shorter-lived token",
            )
        sub = claims.get("sub")
        if not isinstance(sub, str) or not USER_ID_RE.match(sub):
            raise Unauthenticated("TOKEN_INVALID", "invalid token: 'sub' is not a valid user id")
        identity = Identity(sub, float(claims["exp"]))
        self._verified[token] = identity
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return identity

    def verify_header(self, authorization: str | None) -> Identity:
        """:meth:`verify` on an ``authorization`` header value."""
        return self.verify(bearer_token(authorization))
