"""gRPC wiring of the Command Service (no domain logic here)."""

from __future__ import annotations

import re
from typing import Any

import grpc

from chatmesh.v1 import command_service_pb2 as pb, command_service_pb2_grpc as pb_grpc
from mesh.core.headers import ORIGIN_REGION
from mesh.rpc.interceptors.auth import current_user
from mesh.rpc.interceptors.peer import trusts_internal_headers
from services.command.service import Commands

__all__ = ["ORIGIN_HEADER", "CommandServicer"]

ORIGIN_HEADER = ORIGIN_REGION
_REGION_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")


def origin_region(context: grpc.aio.ServicerContext[Any, Any], default: str) -> str:
    """The region whose edge received the call (the service's own region if none says).

    Only an edge's header is believed (:func:`~mesh.rpc.interceptors.peer.trusts_internal_headers`):
    a direct caller, even one with a valid user token, cannot choose the region.
    """
    if not trusts_internal_headers():
        return default
    for key, value in context.invocation_metadata() or ():
        if key == ORIGIN_HEADER:
            text = value if isinstance(value, str) else value.decode()
            if _REGION_RE.match(text):
                return text
    return default


class CommandServicer(pb_grpc.CommandServiceServicer):
    """Maps each RPC onto :class:`~services.command.service.Commands`."""

    def __init__(self, commands: Commands, region: str) -> None:
        self.commands = commands
        self.region = region

    async def CreateChannel(
        self, request: pb.CreateChannelRequest, context: Any
    ) -> pb.CreateChannelResponse:
        return await self.commands.create_channel(
            current_user(), request, origin_region(context, self.region)
        )

    async def JoinChannel(
        self, request: pb.JoinChannelRequest, context: Any
    ) -> pb.JoinChannelResponse:
        return await self.commands.join_channel(
            current_user(), request, origin_region(context, self.region)
        )

    async def LeaveChannel(
        self, request: pb.LeaveChannelRequest, context: Any
    ) -> pb.LeaveChannelResponse:
        return await self.commands.leave_channel(
            current_user(), request, origin_region(context, self.region)
        )

    async def SendMessage(
        self, request: pb.SendMessageRequest, context: Any
    ) -> pb.SendMessageResponse:
        return await self.commands.send_message(
            current_user(), request, origin_region(context, self.region)
        )

    async def EditMessage(
        self, request: pb.EditMessageRequest, context: Any
    ) -> pb.EditMessageResponse:
        return await self.commands.edit_message(
            current_user(), request, origin_region(context, self.region)
        )

    async def DeleteMessage(
        self, request: pb.DeleteMessageRequest, context: Any
    ) -> pb.DeleteMessageResponse:
        return await self.commands.delete_message(
            current_user(), request, origin_region(context, self.region)
        )

    async def SetTyping(self, request: pb.SetTypingRequest, context: Any) -> pb.SetTypingResponse:
        return await self.commands.set_typing(
            current_user(), request, origin_region(context, self.region)
        )

    async def MarkRead(self, request: pb.MarkReadRequest, context: Any) -> pb.MarkReadResponse:
        return await self.commands.mark_read(
            current_user(), request, origin_region(context, self.region)
        )
