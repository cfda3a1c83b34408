"""gRPC wiring of the Notification Service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from chatmesh.v1 import notification_service_pb2 as pb, notification_service_pb2_grpc as pb_grpc
from mesh.rpc.interceptors.auth import current_user
from services.notification.hub import Hub

__all__ = ["NotificationServicer"]


class NotificationServicer(pb_grpc.NotificationServiceServicer):
    """Subscribe streams backed by the instance's :class:`~services.notification.hub.Hub`."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Any
    ) -> AsyncIterator[pb.SubscribeResponse]:
        async for item in self.hub.subscribe(current_user(), dict(request.resume_from)):
            yield item
