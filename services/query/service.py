"""Query Service domain logic: reads from the region's own stores only.

Reads never leave the region (ADR-010): during a WAN partition a region keeps
answering from what it has.
"""

from __future__ import annotations

from chatmesh.v1 import channel_pb2, message_pb2, presence_pb2, query_service_pb2 as pb
from mesh.core.errors import NotFound, PermissionDenied
from mesh.stores import HistoryStore, MetadataStore
from mesh.stores.presence import PresenceStore

__all__ = ["Queries", "for_viewer"]

DEFAULT_LIMIT = 50


def for_viewer(message: message_pb2.Message, viewer: str) -> message_pb2.Message:
    """The message as ``viewer`` may see it: only its sender sees client_msg_id."""
    if message.client_msg_id and message.sender_user_id != viewer:
        message.client_msg_id = ""
    return message


class Queries:
    """The read side of chatmesh, for one region."""

    def __init__(
        self, history: HistoryStore, metadata: MetadataStore, presence: PresenceStore
    ) -> None:
        self.history = history
        self.metadata = metadata
        self.presence = presence

    async def _visible_channel(
        self, channel_id: str, user: str, *, public_ok: bool
    ) -> channel_pb2.Channel:
        channel = await self.metadata.channel(channel_id)
        if channel is None:
            raise NotFound(
                "CHANNEL_NOT_FOUND", f"channel {channel_id} does not exist", channel_id=channel_id
            )
        if user in channel.member_user_ids:
            return channel
        if public_ok and channel.visibility == channel_pb2.CHANNEL_VISIBILITY_PUBLIC:
            return channel
        raise PermissionDenied(
            "NOT_A_MEMBER", f"you are not a member of channel {channel_id}", channel_id=channel_id
        )

    async def get_history(self, user: str, req: pb.GetHistoryRequest) -> pb.GetHistoryResponse:
        """QueryService.GetHistory."""
        if not await self.metadata.is_member(req.channel_id, user):
            await self._visible_channel(req.channel_id, user, public_ok=False)
        limit = req.limit if req.HasField("limit") else DEFAULT_LIMIT
        page = await self.history.history(
            req.channel_id,
            before_seq=req.before_seq if req.HasField("before_seq") else None,
            after_seq=req.after_seq if req.HasField("after_seq") else None,
            limit=limit,
        )
        return pb.GetHistoryResponse(
            messages=[for_viewer(m, user) for m in page.messages],
            has_more=page.has_more,
            last_seq=page.last_seq,
        )

    async def get_channel(self, user: str, req: pb.GetChannelRequest) -> pb.GetChannelResponse:
        """QueryService.GetChannel."""
        return pb.GetChannelResponse(
            channel=await self._visible_channel(req.channel_id, user, public_ok=True)
        )

    async def list_channels(
        self, user: str, req: pb.ListChannelsRequest
    ) -> pb.ListChannelsResponse:
        """QueryService.ListChannels."""
        markers = await self.metadata.read_markers(user)
        summaries = []
        for channel in await self.metadata.channels_of(user):
            marker = markers.get(channel.channel_id, 0)
            unread = await self.history.unread_count(channel.channel_id, marker, user)
            summaries.append(
                channel_pb2.ChannelSummary(
                    channel=channel, last_read_seq=marker, unread_count=unread
                )
            )
        return pb.ListChannelsResponse(channels=summaries)

    async def _acquaintances(self, user: str) -> set[str]:
        """The caller and everyone who shares a channel with them (this region's metadata)."""
        known = {user}
        for channel in await self.metadata.channels_of(user):
            known.update(channel.member_user_ids)
        return known

    async def get_presence(self, user: str, req: pb.GetPresenceRequest) -> pb.GetPresenceResponse:
        """QueryService.GetPresence: only for users who share a channel with the caller.

        Anyone else gets exactly what a user who was never seen gets (status
        UNSPECIFIED, nothing else), so the answer says nothing about strangers,
        not even whether the account exists.
        """
        known = await self._acquaintances(user)
        asked = [u for u in req.user_ids if u in known]
        found = {p.user_id: p for p in await self.presence.get(asked)} if asked else {}
        return pb.GetPresenceResponse(
            presences=[found.get(u) or presence_pb2.Presence(user_id=u) for u in req.user_ids]
        )
