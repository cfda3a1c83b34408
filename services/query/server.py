"""gRPC wiring of the Query Service."""

from __future__ import annotations

from typing import Any

from chatmesh.v1 import query_service_pb2 as pb, query_service_pb2_grpc as pb_grpc
from mesh.rpc.interceptors.auth import current_user
from services.query.service import Queries

__all__ = ["QueryServicer"]


class QueryServicer(pb_grpc.QueryServiceServicer):
    """Maps each RPC onto :class:`~services.query.service.Queries`."""

    def __init__(self, queries: Queries) -> None:
        self.queries = queries

    async def GetHistory(
        self, request: pb.GetHistoryRequest, context: Any
    ) -> pb.GetHistoryResponse:
        return await self.queries.get_history(current_user(), request)

    async def GetChannel(
        self, request: pb.GetChannelRequest, context: Any
    ) -> pb.GetChannelResponse:
        return await self.queries.get_channel(current_user(), request)

    async def ListChannels(
        self, request: pb.ListChannelsRequest, context: Any
    ) -> pb.ListChannelsResponse:
        return await self.queries.list_channels(current_user(), request)

    async def GetPresence(
        self, request: pb.GetPresenceRequest, context: Any
    ) -> pb.GetPresenceResponse:
        return await self.queries.get_presence(current_user(), request)
