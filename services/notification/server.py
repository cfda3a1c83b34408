"""gRPC wiring of the Notification Service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from chatmesh.v1 import notification_service_pb2 as pb, notification_service_pb2_grpc as pb_grpc
from mesh.core.ratelimit import StreamQuota
from mesh.rpc.interceptors.auth import current_user
from services.notification.hub import Hub

__all__ = ["NotificationServicer"]


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
            async for item in self.hub.subscribe(user, dict(request.resume_from)):
                yield item
        finally:
            self.quota.release(user)
