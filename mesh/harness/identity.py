"""Service identities of a local mesh: the internal CA, a certificate per process, channels.

:func:`mesh_pki` is the run's internal CA (``<run_dir>/pki``, :class:`~mesh.deploy.tls.ServicePki`).
The services hook gives every service process a ``service/<name>`` certificate
and the harness itself an ``operator/harness`` one; the edges hook gives each
region's Envoy ``edge/<region>``. :func:`internal_channel` opens a channel to an
internal port with such an identity (the operator's unless told), which is how
the harness checks health, and how tests and the benchmark reach the Fan-Out
Service's operator RPCs. The state file's ``service_tls`` names the files, so
``grpcurl -cacert CA -cert CERT -key KEY`` works too.

Example:
    >>> async def demo(mesh) -> None:  # doctest: +SKIP
    ...     async with internal_channel(mesh.extra_state["service_tls"], address) as ch:
    ...         await FanoutServiceStub(ch).GetStats(GetStatsRequest())
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from mesh.core.identity import OPERATOR
from mesh.deploy.tls import IdentityFiles, ServicePki
from mesh.harness.supervisor import Mesh

__all__ = ["HARNESS_OPERATOR", "identity_state", "internal_channel", "mesh_pki", "operator_files"]

HARNESS_OPERATOR = "harness"
"""The name of the harness's own operator identity."""


def mesh_pki(mesh: Mesh) -> ServicePki:
    """The internal CA of a mesh's run directory."""
    return ServicePki(mesh.run_dir / "pki")


def identity_state(files: IdentityFiles) -> dict[str, str]:
    """How the state file names an identity: ``ca_file``, ``cert_file``, ``key_file``."""
    return {"ca_file": str(files.ca), "cert_file": str(files.cert), "key_file": str(files.key)}


def operator_files(mesh: Mesh) -> IdentityFiles:
    """The harness's operator identity (made on first use)."""
    return mesh_pki(mesh).issue(OPERATOR, HARNESS_OPERATOR)


def internal_channel(
    identity: Mapping[str, Any] | None,
    address: str,
    *,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A channel to an internal gRPC port.

    Args:
        identity: ``{"ca_file", "cert_file", "key_file"}`` (the state's ``service_tls``),
            or None for a plaintext port.
        address: ``host:port``.
        options: Extra channel arguments.
    """
    if identity is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(identity["ca_file"]).read_bytes(),
        private_key=Path(identity["key_file"]).read_bytes(),
        certificate_chain=Path(identity["cert_file"]).read_bytes(),
    )
    return grpc.aio.secure_channel(address, credentials, options=list(options))
