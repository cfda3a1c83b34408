import datetime

from chatmesh.v1 import events_pb2 as _events_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Delivery(_message.Message):
    __slots__ = ("event", "user_ids", "stream_seq", "fanout_epoch", "instance_seq")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    STREAM_SEQ_FIELD_NUMBER: _ClassVar[int]
    FANOUT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_SEQ_FIELD_NUMBER: _ClassVar[int]
    event: _events_pb2.Event
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    stream_seq: int
    fanout_epoch: str
    instance_seq: int
    def __init__(self, event: _Optional[_Union[_events_pb2.Event, _Mapping]] = ..., user_ids: _Optional[_Iterable[str]] = ..., stream_seq: _Optional[int] = ..., fanout_epoch: _Optional[str] = ..., instance_seq: _Optional[int] = ...) -> None: ...

class RouteUpdate(_message.Message):
    __slots__ = ("instance_id", "region", "version", "added_user_ids", "removed_user_ids")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ADDED_USER_IDS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_USER_IDS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    region: str
    version: int
    added_user_ids: _containers.RepeatedScalarFieldContainer[str]
    removed_user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, instance_id: _Optional[str] = ..., region: _Optional[str] = ..., version: _Optional[int] = ..., added_user_ids: _Optional[_Iterable[str]] = ..., removed_user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RouteAck(_message.Message):
    __slots__ = ("version", "resync_needed", "fanout_epoch", "instance_seq", "stream_seq")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESYNC_NEEDED_FIELD_NUMBER: _ClassVar[int]
    FANOUT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_SEQ_FIELD_NUMBER: _ClassVar[int]
    STREAM_SEQ_FIELD_NUMBER: _ClassVar[int]
    version: int
    resync_needed: bool
    fanout_epoch: str
    instance_seq: int
    stream_seq: int
    def __init__(self, version: _Optional[int] = ..., resync_needed: _Optional[bool] = ..., fanout_epoch: _Optional[str] = ..., instance_seq: _Optional[int] = ..., stream_seq: _Optional[int] = ...) -> None: ...

class RouteSnapshot(_message.Message):
    __slots__ = ("instance_id", "region", "version", "user_ids")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    region: str
    version: int
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, instance_id: _Optional[str] = ..., region: _Optional[str] = ..., version: _Optional[int] = ..., user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class InstanceHeartbeat(_message.Message):
    __slots__ = ("instance_id", "region", "version", "user_count", "sent_at")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    USER_COUNT_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    region: str
    version: int
    user_count: int
    sent_at: _timestamp_pb2.Timestamp
    def __init__(self, instance_id: _Optional[str] = ..., region: _Optional[str] = ..., version: _Optional[int] = ..., user_count: _Optional[int] = ..., sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ResyncRequest(_message.Message):
    __slots__ = ("fanout_id",)
    FANOUT_ID_FIELD_NUMBER: _ClassVar[int]
    fanout_id: str
    def __init__(self, fanout_id: _Optional[str] = ...) -> None: ...
