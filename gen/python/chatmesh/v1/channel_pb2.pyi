import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChannelVisibility(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_VISIBILITY_UNSPECIFIED: _ClassVar[ChannelVisibility]
    CHANNEL_VISIBILITY_PRIVATE: _ClassVar[ChannelVisibility]
    CHANNEL_VISIBILITY_PUBLIC: _ClassVar[ChannelVisibility]
CHANNEL_VISIBILITY_UNSPECIFIED: ChannelVisibility
CHANNEL_VISIBILITY_PRIVATE: ChannelVisibility
CHANNEL_VISIBILITY_PUBLIC: ChannelVisibility

class Channel(_message.Message):
    __slots__ = ("channel_id", "name", "member_user_ids", "created_by_user_id", "created_at", "visibility", "last_seq")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMBER_USER_IDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_USER_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    name: str
    member_user_ids: _containers.RepeatedScalarFieldContainer[str]
    created_by_user_id: str
    created_at: _timestamp_pb2.Timestamp
    visibility: ChannelVisibility
    last_seq: int
    def __init__(self, channel_id: _Optional[str] = ..., name: _Optional[str] = ..., member_user_ids: _Optional[_Iterable[str]] = ..., created_by_user_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., visibility: _Optional[_Union[ChannelVisibility, str]] = ..., last_seq: _Optional[int] = ...) -> None: ...

class ChannelSummary(_message.Message):
    __slots__ = ("channel", "last_read_seq", "unread_count", "last_read_origins")
    class LastReadOriginsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    LAST_READ_SEQ_FIELD_NUMBER: _ClassVar[int]
    UNREAD_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_READ_ORIGINS_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    last_read_seq: int
    unread_count: int
    last_read_origins: _containers.ScalarMap[str, int]
    def __init__(self, channel: _Optional[_Union[Channel, _Mapping]] = ..., last_read_seq: _Optional[int] = ..., unread_count: _Optional[int] = ..., last_read_origins: _Optional[_Mapping[str, int]] = ...) -> None: ...
