"""Query Service domain logic: reads from the region's own stores only.

Reads never leave the region (ADR-010): during a WAN partition a region keeps
answering from what it has.

In the every-region write mode (ADR-026) a channel's history is shown in
:func:`mesh.core.convergence.order_key` order and paged by opaque tokens
(:func:`encode_page_token`): each names the order key of the oldest message of
its page, so the next page starts exactly below it, ties at one hlc included.
Channels, members and messages of every region are in the region's stores (its
worker applies every region's events), so nothing else changes. Presence there
is the region's own Valkey (its own users) merged with the other regions'
snapshots (:class:`~mesh.core.regional_presence.RegionalPresence`): online if
online in any region, and still only for users who share a channel with the caller.

Example:
    >>> token = encode_page_token("ch_x", (7, "eu", "evt_1"))
    >>> decode_page_token("ch_x", token)
    (7, 'eu', 'evt_1')
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time

from chatmesh.internal.v1 import presence_pb2 as internal_presence_pb2
from chatmesh.v1 import channel_pb2, message_pb2, presence_pb2, query_service_pb2 as pb
from mesh.bus.interfaces import Message
from mesh.bus.subjects import WRITES_EVERY_REGION, WRITES_PRIMARY
from mesh.core.errors import FieldViolation, InvalidArgument, NotFound, PermissionDenied
from mesh.core.regional_presence import RegionalPresence
from mesh.stores import HistoryStore, MetadataStore, OrderKey
from mesh.stores.presence import PresenceStore

__all__ = ["Queries", "decode_page_token", "encode_page_token", "for_viewer"]

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 50

_TOKEN_RULE = "history.page_token"


def encode_page_token(channel_id: str, oldest: OrderKey) -> str:
    """The ``next_page_token`` after a page whose oldest message sits at ``oldest``.

    Opaque to clients: URL-safe base64 of the channel and the order key (well under
    the contract's 256 characters for any valid channel id and region name).
    """
    hlc, origin, event_id = oldest
    raw = json.dumps([channel_id, hlc, origin, event_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _bad_token(description: str) -> InvalidArgument:
    return InvalidArgument(
        [FieldViolation("page_token", _TOKEN_RULE, description)],
        f"invalid page_token: {description}",
    )


def decode_page_token(channel_id: str, token: str) -> OrderKey:
    """The order key a :func:`encode_page_token` token names.

    Raises:
        InvalidArgument: The token was not made by GetHistory, or for another channel.
    """
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        raise _bad_token("not a next_page_token of GetHistory") from None
    if not (
        isinstance(data, list)
        and len(data) == 4
        and isinstance(data[0], str)
        and isinstance(data[1], int)
        and not isinstance(data[1], bool)
        and 0 <= data[1] < 1 << 64
        and isinstance(data[2], str)
        and isinstance(data[3], str)
    ):
        raise _bad_token("not a next_page_token of GetHistory")
    if data[0] != channel_id:
        raise _bad_token("the token belongs to another channel's history")
    return data[1], data[2], data[3]


def for_viewer(message: message_pb2.Message, viewer: str) -> message_pb2.Message:
    """The message as ``viewer`` may see it: only its sender sees client_msg_id."""
    if message.client_msg_id and message.sender_user_id != viewer:
        message.client_msg_id = ""
    return message


class Queries:
    """The read side of chatmesh, for one region."""

    def __init__(
        self,
        history: HistoryStore,
        metadata: MetadataStore,
        presence: PresenceStore,
        *,
        writes: str = WRITES_PRIMARY,
        remote_presence: RegionalPresence | None = None,
    ) -> None:
        """Wires the region's stores.

        Args:
            history: The region's history store.
            metadata: The region's metadata store.
            presence: The region's Valkey.
            writes: The write mode (ADR-026).
            remote_presence: Every-region mode: the other regions' online users (fed
                by :meth:`on_presence_snapshot`).
        """
        self.history = history
        self.metadata = metadata
        self.presence = presence
        self.every_region = writes == WRITES_EVERY_REGION
        self.remote_presence = remote_presence

    async def on_presence_snapshot(self, msg: Message) -> None:
        """Takes another region's :class:`PresenceSnapshot` (NATS handler)."""
        if self.remote_presence is None:
            return
        try:
            snap = internal_presence_pb2.PresenceSnapshot.FromString(msg.data)
        except Exception:  # noqa: BLE001 - a bad payload must not stop the service
            logger.warning("ignoring malformed presence snapshot on %s", msg.subject)
            return
        self.remote_presence.apply_snapshot(snap, now=time.monotonic())

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
        if self.every_region:
            return await self._ordered_history(user, req, limit)
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

    async def _ordered_history(
        self, user: str, req: pb.GetHistoryRequest, limit: int
    ) -> pb.GetHistoryResponse:
        """Every-region GetHistory: newest page first, older ones by ``page_token``.

        ``before_seq`` and ``after_seq`` belong to the primary mode and are ignored.
        ``last_origin_seqs`` is read before the page, so a subscriber resuming from
        them may see a message twice (dropped by its id) but never misses one.
        """
        before = decode_page_token(req.channel_id, req.page_token) if req.page_token else None
        positions = await self.history.last_origin_seqs(req.channel_id)
        page = await self.history.ordered_history(req.channel_id, before=before, limit=limit)
        return pb.GetHistoryResponse(
            messages=[for_viewer(m, user) for m in page.messages],
            has_more=page.has_more,
            next_page_token=(
                encode_page_token(req.channel_id, page.oldest)
                if page.has_more and page.oldest is not None
                else ""
            ),
            last_origin_seqs=positions,
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
        by_origin = await self.metadata.origin_read_markers(user) if self.every_region else {}
        summaries = []
        for channel in await self.metadata.channels_of(user):
            marker = markers.get(channel.channel_id, 0)
            if self.every_region:
                read_through = by_origin.get(channel.channel_id, {})
                unread = await self.history.origin_unread_count(
                    channel.channel_id, read_through, user
                )
            else:
                read_through = {}
                unread = await self.history.unread_count(channel.channel_id, marker, user)
            summaries.append(
                channel_pb2.ChannelSummary(
                    channel=channel,
                    last_read_seq=marker,
                    unread_count=unread,
                    last_read_origins=read_through,
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
        remote = self.remote_presence
        if remote is not None and asked:
            remote.expire(time.monotonic())
            now_ms = int(time.time() * 1000)
            found = {u: remote.merge(p, now_ms=now_ms) for u, p in found.items()}
        return pb.GetPresenceResponse(
            presences=[found.get(u) or presence_pb2.Presence(user_id=u) for u in req.user_ids]
        )
