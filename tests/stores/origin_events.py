"""Events as one region writes them in the every-region mode (ADR-026), for store tests.

:class:`Origin` stamps each event like that region's Command Service would:
``origin_region``, ``origin_seq`` 1, 2, ... per channel, the hlc the test gives,
``seq`` 0.
"""

from __future__ import annotations

from collections.abc import Mapping

from chatmesh.v1 import channel_pb2, events_pb2


class Origin:
    """One region writing one channel's events."""

    def __init__(self, region: str, channel_id: str) -> None:
        self.region = region
        self.channel_id = channel_id
        self.seq = 0

    def _event(self, hlc: int, actor: str) -> events_pb2.Event:
        self.seq += 1
        event = events_pb2.Event(
            event_id=f"evt_{self.channel_id}_{self.region}_{self.seq:04d}",
            channel_id=self.channel_id,
            seq=0,
            origin_region=self.region,
            origin_seq=self.seq,
            hlc=hlc,
            actor_user_id=actor,
        )
        event.occurred_at.FromMilliseconds(1_700_000_000_000 + hlc)
        return event

    def create_channel(
        self, hlc: int, members: list[str], *, name: str = "room", public: bool = False
    ) -> events_pb2.Event:
        event = self._event(hlc, members[0])
        ch = event.channel_created.channel
        ch.channel_id = self.channel_id
        ch.name = name
        ch.created_by_user_id = members[0]
        ch.member_user_ids.extend(sorted(members))
        ch.created_at.CopyFrom(event.occurred_at)
        ch.visibility = (
            channel_pb2.CHANNEL_VISIBILITY_PUBLIC
            if public
            else channel_pb2.CHANNEL_VISIBILITY_PRIVATE
        )
        return event

    def send(self, hlc: int, message_id: str, text: str, sender: str) -> events_pb2.Event:
        event = self._event(hlc, sender)
        m = event.message_created.message
        m.message_id = message_id
        m.channel_id = self.channel_id
        m.sender_user_id = sender
        m.text = text
        m.created_at.CopyFrom(event.occurred_at)
        m.origin_region = self.region
        m.hlc = hlc
        m.origin_seq = self.seq
        m.client_msg_id = f"k-{message_id}"
        return event

    def edit(self, hlc: int, message_id: str, text: str, sender: str) -> events_pb2.Event:
        event = self._event(hlc, sender)
        m = event.message_edited.message
        m.message_id = message_id
        m.channel_id = self.channel_id
        m.sender_user_id = sender
        m.text = text
        m.edited_at.CopyFrom(event.occurred_at)
        return event

    def delete(self, hlc: int, message_id: str, actor: str) -> events_pb2.Event:
        event = self._event(hlc, actor)
        event.message_deleted.message_id = message_id
        return event

    def join(self, hlc: int, user: str, observed: Mapping[str, int]) -> events_pb2.Event:
        event = self._event(hlc, user)
        event.member_joined.user_id = user
        event.member_joined.observed.update(observed)
        return event

    def leave(self, hlc: int, user: str, observed: Mapping[str, int]) -> events_pb2.Event:
        event = self._event(hlc, user)
        event.member_left.user_id = user
        event.member_left.observed.update(observed)
        return event
