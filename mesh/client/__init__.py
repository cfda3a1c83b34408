"""chatmesh's Python client: the public API over the generated gRPC stubs.

As Temporal's ``Client`` sits over its generated service stubs, :class:`ChatClient`
sits over ``chatmesh.v1.*_pb2_grpc`` (grpc.aio): bearer auth (a token or a
refreshable provider), TLS, typed errors (:mod:`mesh.core.errors`, mapped back by
:mod:`mesh.rpc.status`), retries with one idempotency key per logical call and
jittered exponential backoff within a deadline budget (:class:`RetryPolicy`), and
:class:`Subscription`, an event stream that reconnects and resumes by position
without gaps or duplicates at the seam (per channel, or per channel and origin
region in the every-region write mode), and :class:`Timeline`, a channel's
messages in (hlc, origin_region, message_id) order with late inserts.

Built on the grpcio stubs rather than the betterproto2 SDK (``chatmesh_sdk``):
the services, the tests and the benchmark speak the protobuf messages of
``gen/python``, and grpc.aio's C core keeps the load generators cheap.

It may import :mod:`mesh.core` and :mod:`mesh.rpc.status` only (never the
harness, deploy or CLI code), so applications can depend on it alone.

Example:
    >>> import asyncio  # doctest: +SKIP
    >>> from mesh.client import ChatClient
    >>> async def main() -> None:
    ...     async with ChatClient("127.0.0.1:50051", token="eyJ...") as client:
    ...         sent = await client.send_message("ch_...", "hello")
    ...         async for event in client.subscribe({"ch_...": sent.message.seq - 1}):
    ...             print(event.seq, event.WhichOneof("payload"))
    >>> asyncio.run(main())
"""

from __future__ import annotations

from mesh.client._client import (
    DEFAULT_RETRY,
    STREAM_RETRY,
    ChatClient,
    Metadata,
    Token,
    TokenProvider,
    new_key,
)
from mesh.client._positions import ResumePositions, Verdict
from mesh.client._retry import Budget, RetryPolicy, is_transport_failure, resumable, retryable
from mesh.client._subscription import Subscription
from mesh.client._timeline import Timeline

__all__ = [
    "DEFAULT_RETRY",
    "STREAM_RETRY",
    "Budget",
    "ChatClient",
    "Metadata",
    "ResumePositions",
    "RetryPolicy",
    "Subscription",
    "Timeline",
    "Token",
    "TokenProvider",
    "Verdict",
    "is_transport_failure",
    "new_key",
    "resumable",
    "retryable",
]
