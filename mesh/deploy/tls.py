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
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DEFAULT_NAMES", "DevTls"]

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
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chatmesh development CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_USAGE, critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for name in self.names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chatmesh edge")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
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
