"""The betterproto2 SDK (``chatmesh_sdk``) and the grpcio/google.protobuf modules speak the same bytes.

Each case builds the same message twice, independently, once with each library, and
checks: equal bytes; each library parses the other's bytes back to an equal message; the
same oneof member is set. Map entries are built in key order because google.protobuf's
deterministic serialization sorts them and betterproto2 keeps insertion order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import betterproto2
import pytest
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from chatmesh.internal.v1 import routing_pb2
from chatmesh.v1 import (
    channel_pb2,
    events_pb2,
    fanout_service_pb2,
    message_pb2,
    notification_service_pb2,
    presence_pb2,
    query_service_pb2,
)
from chatmesh_sdk.chatmesh import v1 as sdk
from chatmesh_sdk.chatmesh.internal import v1 as sdk_internal

UTC = dt.UTC
T0 = dt.datetime(2026, 11, 27, 9, 30, 15, 123456, tzinfo=UTC)
T1 = T0 + dt.timedelta(minutes=3, microseconds=7)
CH = "ch_" + "a" * 26
MSG = "msg_" + "b" * 26


def ts(when: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


@dataclass(frozen=True)
class Pair:
    """The same message built with both libraries."""

    name: str
    pb: Callable[[], Message]
    sdk: Callable[[], betterproto2.Message]
    oneof: str | None = None


def _pb_message() -> message_pb2.Message:
    return message_pb2.Message(
        message_id=MSG,
        channel_id=CH,
        seq=42,
        sender_user_id="alice",
        text="héllo, wörld 👋",
        created_at=ts(T0),
        edited_at=ts(T1),
        deleted=False,
        origin_region="eu-west",
        client_msg_id="m-1",
    )


def _sdk_message() -> sdk.Message:
    return sdk.Message(
        message_id=MSG,
        channel_id=CH,
        seq=42,
        sender_user_id="alice",
        text="héllo, wörld 👋",
        created_at=T0,
        edited_at=T1,
        deleted=False,
        origin_region="eu-west",
        client_msg_id="m-1",
    )


_ENVELOPE: dict[str, Any] = {
    "event_id": "evt_" + "c" * 26,
    "channel_id": CH,
    "seq": 42,
    "origin_region": "eu-west",
    "actor_user_id": "alice",
}


def _pb_event(**fields: Any) -> events_pb2.Event:
    """An Event with a full envelope; ``fields`` set the payload and override the rest."""
    return events_pb2.Event(**{**_ENVELOPE, "occurred_at": ts(T0), **fields})


def _sdk_event(**fields: Any) -> sdk.Event:
    """The SDK twin of :func:`_pb_event`."""
    return sdk.Event(**{**_ENVELOPE, "occurred_at": T0, **fields})


PAIRS = [
    Pair(
        "event-message-created",
        lambda: _pb_event(message_created=events_pb2.MessageCreated(message=_pb_message())),
        lambda: _sdk_event(message_created=sdk.MessageCreated(message=_sdk_message())),
        "message_created",
    ),
    Pair(
        "event-message-edited",
        lambda: _pb_event(message_edited=events_pb2.MessageEdited(message=_pb_message())),
        lambda: _sdk_event(message_edited=sdk.MessageEdited(message=_sdk_message())),
        "message_edited",
    ),
    Pair(
        "event-message-deleted",
        lambda: _pb_event(
            message_deleted=events_pb2.MessageDeleted(message_id=MSG, message_seq=41)
        ),
        lambda: _sdk_event(message_deleted=sdk.MessageDeleted(message_id=MSG, message_seq=41)),
        "message_deleted",
    ),
    Pair(
        "event-channel-created",
        lambda: _pb_event(
            channel_created=events_pb2.ChannelCreated(
                channel=channel_pb2.Channel(
                    channel_id=CH,
                    name="general",
                    member_user_ids=["alice", "bob", "carol"],
                    created_by_user_id="alice",
                    created_at=ts(T0),
                    visibility=channel_pb2.CHANNEL_VISIBILITY_PUBLIC,
                    last_seq=1,
                )
            )
        ),
        lambda: _sdk_event(
            channel_created=sdk.ChannelCreated(
                channel=sdk.Channel(
                    channel_id=CH,
                    name="general",
                    member_user_ids=["alice", "bob", "carol"],
                    created_by_user_id="alice",
                    created_at=T0,
                    visibility=sdk.ChannelVisibility.PUBLIC,
                    last_seq=1,
                )
            )
        ),
        "channel_created",
    ),
    Pair(
        "event-member-joined",
        lambda: _pb_event(member_joined=events_pb2.MemberJoined(user_id="dave")),
        lambda: _sdk_event(member_joined=sdk.MemberJoined(user_id="dave")),
        "member_joined",
    ),
    Pair(
        "event-member-left",
        lambda: _pb_event(member_left=events_pb2.MemberLeft(user_id="dave")),
        lambda: _sdk_event(member_left=sdk.MemberLeft(user_id="dave")),
        "member_left",
    ),
    Pair(
        "event-typing",
        lambda: _pb_event(
            seq=0,
            typing_changed=events_pb2.TypingChanged(user_id="bob", typing=True, expires_at=ts(T1)),
        ),
        lambda: _sdk_event(
            seq=0, typing_changed=sdk.TypingChanged(user_id="bob", typing=True, expires_at=T1)
        ),
        "typing_changed",
    ),
    Pair(
        "event-presence",
        lambda: _pb_event(
            channel_id="",
            seq=0,
            presence_changed=events_pb2.PresenceChanged(
                presence=presence_pb2.Presence(
                    user_id="bob",
                    status=presence_pb2.PRESENCE_STATUS_ONLINE,
                    last_seen_at=ts(T1),
                    regions=["ap-south", "eu-west", "us-east"],
                )
            ),
        ),
        lambda: _sdk_event(
            channel_id="",
            seq=0,
            presence_changed=sdk.PresenceChanged(
                presence=sdk.Presence(
                    user_id="bob",
                    status=sdk.PresenceStatus.ONLINE,
                    last_seen_at=T1,
                    regions=["ap-south", "eu-west", "us-east"],
                )
            ),
        ),
        "presence_changed",
    ),
    Pair(
        "subscribe-response-event",
        lambda: notification_service_pb2.SubscribeResponse(
            event=_pb_event(member_joined=events_pb2.MemberJoined(user_id="dave"))
        ),
        lambda: sdk.SubscribeResponse(
            event=_sdk_event(member_joined=sdk.MemberJoined(user_id="dave"))
        ),
    ),
    Pair(
        "subscribe-request-map",
        lambda: notification_service_pb2.SubscribeRequest(
            resume_from={CH: 0, "ch_" + "b" * 26: 17, "ch_" + "c" * 26: 2**62}
        ),
        lambda: sdk.SubscribeRequest(
            resume_from={CH: 0, "ch_" + "b" * 26: 17, "ch_" + "c" * 26: 2**62}
        ),
    ),
    Pair(
        "stats-maps",
        lambda: fanout_service_pb2.GetStatsResponse(
            routed_users=3,
            routes=4,
            instances=2,
            instances_by_region={"eu-west": 1, "us-east": 1},
            deliveries_by_region={"eu-west": 10, "us-east": 0},
            rss_bytes=50_000_000,
        ),
        lambda: sdk.GetStatsResponse(
            routed_users=3,
            routes=4,
            instances=2,
            instances_by_region={"eu-west": 1, "us-east": 1},
            deliveries_by_region={"eu-west": 10, "us-east": 0},
            rss_bytes=50_000_000,
        ),
    ),
    Pair(
        # proto3 `optional`: an explicit zero is present on the wire and must stay so.
        "history-optional-zero",
        lambda: query_service_pb2.GetHistoryRequest(channel_id=CH, before_seq=-1, limit=0),
        lambda: sdk.GetHistoryRequest(channel_id=CH, before_seq=-1, limit=0),
    ),
    Pair(
        "delivery-internal",
        lambda: routing_pb2.Delivery(
            event=_pb_event(member_left=events_pb2.MemberLeft(user_id="dave")),
            user_ids=["alice", "bob"],
            stream_seq=2**64 - 1,
        ),
        lambda: sdk_internal.Delivery(
            event=_sdk_event(member_left=sdk.MemberLeft(user_id="dave")),
            user_ids=["alice", "bob"],
            stream_seq=2**64 - 1,
        ),
    ),
]


@pytest.mark.parametrize("pair", PAIRS, ids=[p.name for p in PAIRS])
def test_both_libraries_write_the_same_bytes(pair: Pair) -> None:
    assert bytes(pair.sdk()) == pair.pb().SerializeToString(deterministic=True)


@pytest.mark.parametrize("pair", PAIRS, ids=[p.name for p in PAIRS])
def test_sdk_reads_grpc_bytes(pair: Pair) -> None:
    original = pair.pb()
    wire = original.SerializeToString(deterministic=True)
    parsed = type(pair.sdk()).parse(wire)
    assert parsed == pair.sdk()
    assert bytes(parsed) == wire
    if pair.oneof is not None:
        assert original.WhichOneof("payload") == pair.oneof
        assert betterproto2.which_one_of(parsed, "payload")[0] == pair.oneof


@pytest.mark.parametrize("pair", PAIRS, ids=[p.name for p in PAIRS])
def test_grpc_reads_sdk_bytes(pair: Pair) -> None:
    original = pair.sdk()
    wire = bytes(original)
    parsed = type(pair.pb()).FromString(wire)
    assert parsed == pair.pb()
    assert parsed.SerializeToString(deterministic=True) == wire
    if pair.oneof is not None:
        assert parsed.WhichOneof("payload") == pair.oneof


def test_sdk_timestamps_keep_microseconds() -> None:
    """The SDK maps Timestamp to datetime: sub-microsecond digits are dropped on parse."""
    stamp = timestamp_pb2.Timestamp(seconds=int(T0.timestamp()), nanos=123_456_789)
    parsed = sdk.Event.parse(events_pb2.Event(occurred_at=stamp).SerializeToString())
    assert parsed.occurred_at == T0.replace(microsecond=123_456)
    back = events_pb2.Event.FromString(bytes(parsed))
    assert (back.occurred_at.seconds, back.occurred_at.nanos) == (stamp.seconds, 123_456_000)


def test_unknown_fields_survive_the_sdk() -> None:
    """A newer peer's extra field neither breaks an older SDK nor gets lost when it re-sends."""
    wire = _pb_event(member_joined=events_pb2.MemberJoined(user_id="dave")).SerializeToString()
    extra = b"\xf8\x07\x01"  # field 127, varint 1: not in the contract
    parsed = sdk.Event.parse(wire + extra)
    assert parsed.member_joined == sdk.MemberJoined(user_id="dave")
    assert bytes(parsed) == wire + extra
