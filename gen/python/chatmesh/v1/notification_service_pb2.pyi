import datetime

from buf.validate import validate_pb2 as _validate_pb2
from chatmesh.v1 import events_pb2 as _events_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubscribeRequest(_message.Message):
    __slots__ = ("resume_from", "resume_from_origins")
    class ResumeFromEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ResumeFromOriginsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: OriginPositions
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[OriginPositions, _Mapping]] = ...) -> None: ...
    RESUME_FROM_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_ORIGINS_FIELD_NUMBER: _ClassVar[int]
    resume_from: _containers.ScalarMap[str, int]
    resume_from_origins: _containers.MessageMap[str, OriginPositions]
    def __init__(self, resume_from: _Optional[_Mapping[str, int]] = ..., resume_from_origins: _Optional[_Mapping[str, OriginPositions]] = ...) -> None: ...

class OriginPositions(_message.Message):
    __slots__ = ("origin_seqs",)
    class OriginSeqsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ORIGIN_SEQS_FIELD_NUMBER: _ClassVar[int]
    origin_seqs: _containers.ScalarMap[str, int]
    def __init__(self, origin_seqs: _Optional[_Mapping[str, int]] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("event", "heartbeat", "replay_complete")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    REPLAY_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    event: _events_pb2.Event
    heartbeat: Heartbeat
    replay_complete: ReplayComplete
    def __init__(self, event: _Optional[_Union[_events_pb2.Event, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., replay_complete: _Optional[_Union[ReplayComplete, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("server_time", "timeout_ms")
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    server_time: _timestamp_pb2.Timestamp
    timeout_ms: int
    def __init__(self, server_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class ReplayComplete(_message.Message):
    __slots__ = ("replayed_events", "region", "instance_id")
    REPLAYED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    replayed_events: int
    region: str
    instance_id: str
    def __init__(self, replayed_events: _Optional[int] = ..., region: _Optional[str] = ..., instance_id: _Optional[str] = ...) -> None: ...
