import datetime

from chatmesh.v1 import channel_pb2 as _channel_pb2
from chatmesh.v1 import message_pb2 as _message_pb2
from chatmesh.v1 import presence_pb2 as _presence_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Event(_message.Message):
    __slots__ = ("event_id", "channel_id", "seq", "origin_region", "occurred_at", "actor_user_id", "hlc", "origin_seq", "message_created", "message_edited", "message_deleted", "member_joined", "member_left", "channel_created", "typing_changed", "presence_changed", "read_marker_updated")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_REGION_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_USER_ID_FIELD_NUMBER: _ClassVar[int]
    HLC_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_SEQ_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_CREATED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_EDITED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_DELETED_FIELD_NUMBER: _ClassVar[int]
    MEMBER_JOINED_FIELD_NUMBER: _ClassVar[int]
    MEMBER_LEFT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_CREATED_FIELD_NUMBER: _ClassVar[int]
    TYPING_CHANGED_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_CHANGED_FIELD_NUMBER: _ClassVar[int]
    READ_MARKER_UPDATED_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    channel_id: str
    seq: int
    origin_region: str
    occurred_at: _timestamp_pb2.Timestamp
    actor_user_id: str
    hlc: int
    origin_seq: int
    message_created: MessageCreated
    message_edited: MessageEdited
    message_deleted: MessageDeleted
    member_joined: MemberJoined
    member_left: MemberLeft
    channel_created: ChannelCreated
    typing_changed: TypingChanged
    presence_changed: PresenceChanged
    read_marker_updated: ReadMarkerUpdated
    def __init__(self, event_id: _Optional[str] = ..., channel_id: _Optional[str] = ..., seq: _Optional[int] = ..., origin_region: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor_user_id: _Optional[str] = ..., hlc: _Optional[int] = ..., origin_seq: _Optional[int] = ..., message_created: _Optional[_Union[MessageCreated, _Mapping]] = ..., message_edited: _Optional[_Union[MessageEdited, _Mapping]] = ..., message_deleted: _Optional[_Union[MessageDeleted, _Mapping]] = ..., member_joined: _Optional[_Union[MemberJoined, _Mapping]] = ..., member_left: _Optional[_Union[MemberLeft, _Mapping]] = ..., channel_created: _Optional[_Union[ChannelCreated, _Mapping]] = ..., typing_changed: _Optional[_Union[TypingChanged, _Mapping]] = ..., presence_changed: _Optional[_Union[PresenceChanged, _Mapping]] = ..., read_marker_updated: _Optional[_Union[ReadMarkerUpdated, _Mapping]] = ...) -> None: ...

class MessageCreated(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: _message_pb2.Message
    def __init__(self, message: _Optional[_Union[_message_pb2.Message, _Mapping]] = ...) -> None: ...

class MessageEdited(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: _message_pb2.Message
    def __init__(self, message: _Optional[_Union[_message_pb2.Message, _Mapping]] = ...) -> None: ...

class MessageDeleted(_message.Message):
    __slots__ = ("message_id", "message_seq")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_SEQ_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    message_seq: int
    def __init__(self, message_id: _Optional[str] = ..., message_seq: _Optional[int] = ...) -> None: ...

class MemberJoined(_message.Message):
    __slots__ = ("user_id", "observed")
    class ObservedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    observed: _containers.ScalarMap[str, int]
    def __init__(self, user_id: _Optional[str] = ..., observed: _Optional[_Mapping[str, int]] = ...) -> None: ...

class MemberLeft(_message.Message):
    __slots__ = ("user_id", "observed")
    class ObservedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    observed: _containers.ScalarMap[str, int]
    def __init__(self, user_id: _Optional[str] = ..., observed: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ChannelCreated(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: _channel_pb2.Channel
    def __init__(self, channel: _Optional[_Union[_channel_pb2.Channel, _Mapping]] = ...) -> None: ...

class TypingChanged(_message.Message):
    __slots__ = ("user_id", "typing", "expires_at")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TYPING_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    typing: bool
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, user_id: _Optional[str] = ..., typing: _Optional[bool] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PresenceChanged(_message.Message):
    __slots__ = ("presence",)
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    presence: _presence_pb2.Presence
    def __init__(self, presence: _Optional[_Union[_presence_pb2.Presence, _Mapping]] = ...) -> None: ...

class ReadMarkerUpdated(_message.Message):
    __slots__ = ("user_id", "last_read_seq", "last_read_origins")
    class LastReadOriginsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_READ_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_READ_ORIGINS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    last_read_seq: int
    last_read_origins: _containers.ScalarMap[str, int]
    def __init__(self, user_id: _Optional[str] = ..., last_read_seq: _Optional[int] = ..., last_read_origins: _Optional[_Mapping[str, int]] = ...) -> None: ...
