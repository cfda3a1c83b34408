"""A development certificate authority and the edge's server certificate.

``chatmesh up --tls`` and the compose secrets use it: one CA per run directory
(or deployment), and one server certificate signed by it for the names the
edges answer on (``127.0.0.1``, ``localhost`` and, in compose, the service
names). Clients trust the CA file (grpcurl ``-cacert``, the SDKs' CA option);
Chromium is pinned to the server key with
``--ignore-certificate-errors-spki-list=<spki_pin>`` (only that key is accepted
without a trusted chain; every other certificate error still fails).

Example:
    >>> import tempfile, pathlib
    >>> tls = DevTls(pathlib.Path(tempfile.mkdtemp()))
    >>> tls.ensure()
    >>> tls.ca_path.read_text().startswith("-----BEGIN CERTIFICATE-----")
    True
    >>> len(tls.spki_pin())
    44
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.core.identity import identity_name

__all__ = [
    "DEFAULT_NAMES",
    "DevTls",
    "IdentityFiles",
    "ServicePki",
]

DEFAULT_NAMES: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
"""Names (IP addresses or DNS names) the local edges' certificate is valid for."""

_VALID_DAYS = 30
_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _new_ca(cn: str, now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _sans(names: Sequence[str]) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    return sans


@dataclass(frozen=True)
class IdentityFiles:
    """One service identity's files: its certificate (leaf), key, and the CA to trust."""

    cert: Path
    key: Path
    ca: Path


class ServicePki:
    """The internal CA of one deployment and a certificate per service identity.

    Separate from the edge's public CA (:class:`DevTls`): a certificate the
    public edge presents can never pass for an internal identity. Every leaf is
    good for both ends of mutual TLS (server and client authentication) and
    names ``<role>/<name>`` (:mod:`mesh.core.identity`) as its common name;
    :mod:`mesh.rpc.interceptors.peer`
    reads it from the verified peer.

    Example:
        >>> import tempfile, pathlib
        >>> pki = ServicePki(pathlib.Path(tempfile.mkdtemp()))
        >>> files = pki.issue("edge", "eu")
        >>> files.cert.name, oct(files.key.stat().st_mode & 0o777)
        ('edge-eu.pem', '0o600')
    """

    def __init__(self, path: Path, names: Sequence[str] = DEFAULT_NAMES) -> None:
        """Points at ``path``; certificates are made on demand.

        Args:
            path: The directory (0700).
            names: Subject alternative names every leaf carries (the addresses
                the services answer on; :meth:`issue` adds more per identity).
        """
        self.path = path
        self.names = tuple(names)

    @property
    def ca_path(self) -> Path:
        """The internal CA certificate (PEM) every peer trusts."""
        return self.path / "ca.pem"

    @property
    def _ca_key_path(self) -> Path:
        return self.path / "ca-key.pem"

    def ensure_ca(self) -> None:
        """Creates the CA unless it exists."""
        if self.ca_path.exists() and self._ca_key_path.exists():
            return
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        key, cert = _new_ca("chatmesh internal CA", datetime.datetime.now(datetime.UTC))
        _write(self._ca_key_path, _private_pem(key), 0o600)
        _write(self.ca_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def issue(
        self, role: str, name: str, *, names: Sequence[str] = (), key_mode: int = 0o600
    ) -> IdentityFiles:
        """The certificate of identity ``role/name``, made (with the CA) unless it exists.

        Args:
            role: One of :data:`ROLES`.
            name: The identity's name (``eu``, ``command-us-east``, ``harness``).
            names: Extra subject alternative names (a container's DNS name).
            key_mode: File mode of the key (compose mounts it into a container
                whose user is not the file's owner).
        """
        cn = identity_name(role, name)
        stem = f"{role}-{name}"
        files = IdentityFiles(
            self.path / f"{stem}.pem", self.path / f"{stem}-key.pem", self.ca_path
        )
        if files.cert.exists() and files.key.exists() and self.ca_path.exists():
            return files
        self.ensure_ca()
        ca_key = serialization.load_pem_private_key(self._ca_key_path.read_bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca = x509.load_pem_x509_certificate(self.ca_path.read_bytes())
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
            .add_extension(
                x509.SubjectAlternativeName(_sans([*self.names, *names])), critical=False
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write(files.key, _private_pem(key), key_mode)
        _write(files.cert, leaf.public_bytes(serialization.Encoding.PEM), 0o644)
        return files


class DevTls:
    """A CA and one server certificate in a directory (``ca.pem``, ``edge.pem``, ``edge-key.pem``)."""

    def __init__(self, path: Path, names: Sequence[str] = DEFAULT_NAMES) -> None:
        """Points at ``path``; :meth:`ensure` creates what is missing.

        Args:
            path: The directory.
            names: Subject alternative names of the server certificate.
        """
        self.path = path
        self.names = tuple(names)

    @property
    def ca_path(self) -> Path:
        """The CA certificate clients trust (PEM)."""
        return self.path / "ca.pem"

    @property
    def cert_path(self) -> Path:
        """The server certificate chain Envoy presents (leaf, then CA)."""
        return self.path / "edge.pem"

    @property
    def key_path(self) -> Path:
        """The server's private key (mode 0600, or 0644 for a container's non-root reader)."""
        return self.path / "edge-key.pem"

    @property
    def _ca_key_path(self) -> Path:
        return self.path / "ca-key.pem"

    def ensure(self, *, key_mode: int = 0o600) -> None:
        """Creates the CA and the server certificate unless both exist.

        Args:
            key_mode: File mode of the server key (compose mounts it into a
                container whose user is not the file's owner).
        """
        if self.ca_path.exists() and self.cert_path.exists() and self.key_path.exists():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        ca_key, ca = _new_ca("chatmesh development CA", now)
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(_name("chatmesh edge"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(_sans(self.names)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        _write(self._ca_key_path, _private_pem(ca_key), 0o600)
        _write(self.key_path, _private_pem(key), key_mode)
        _write(self.cert_path, leaf.public_bytes(pem) + ca.public_bytes(pem), 0o644)
        _write(self.ca_path, ca.public_bytes(pem), 0o644)

    def spki_pin(self) -> str:
        """Base64 SHA-256 of the server certificate's SubjectPublicKeyInfo (Chromium's SPKI pin)."""
        leaf = x509.load_pem_x509_certificates(self.cert_path.read_bytes())[0]
        spki = leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(hashlib.sha256(spki).digest()).decode()
