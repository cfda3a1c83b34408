"""gRPC wiring of the Notification Service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from chatmesh.v1 import notification_service_pb2 as pb, notification_service_pb2_grpc as pb_grpc
from mesh.core.ratelimit import StreamQuota
from mesh.rpc.interceptors.auth import current_user
from services.notification.hub import Hub

__all__ = ["NotificationServicer", "add_notification_service"]

_SERVICE = "chatmesh.v1.NotificationService"


class NotificationServicer(pb_grpc.NotificationServiceServicer):
    """Subscribe streams backed by the instance's :class:`~services.notification.hub.Hub`.

    Each stream holds one of its user's :class:`~mesh.core.ratelimit.StreamQuota`
    slots from admission until it ends, however it ends.
    """

    def __init__(self, hub: Hub, quota: StreamQuota | None = None) -> None:
        self.hub = hub
        self.quota = quota if quota is not None else StreamQuota(0)

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Any
    ) -> AsyncIterator[pb.SubscribeResponse]:
        user = current_user()
        self.quota.acquire(user)
        try:
            by_origin = {
                channel: dict(positions.origin_seqs)
                for channel, positions in request.resume_from_origins.items()
            }
            async for item in self.hub.subscribe(user, dict(request.resume_from), by_origin):
                yield item
        finally:
            self.quota.release(user)


def add_notification_service(servicer: NotificationServicer, server: grpc.aio.Server) -> None:
    """Registers ``servicer`` like the generated ``add_NotificationServiceServicer_to_server``.

    The one difference is the response serializer: the hub's
    :meth:`~services.notification.frames.Frames.encode`, so an event every
    stream of it shares is serialized once, not once per stream. The bytes
    are ``SubscribeResponse.SerializeToString``'s: the wire is unchanged.
    """
    handlers = {
        "Subscribe": grpc.unary_stream_rpc_method_handler(
            servicer.Subscribe,
            request_deserializer=pb.SubscribeRequest.FromString,
            response_serializer=servicer.hub.frames.encode,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
    server.add_registered_method_handlers(_SERVICE, handlers)  # type: ignore[attr-defined]
