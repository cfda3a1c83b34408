import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Message(_message.Message):
    __slots__ = ("message_id", "channel_id", "seq", "sender_user_id", "text", "created_at", "edited_at", "deleted", "origin_region", "client_msg_id", "hlc", "origin_seq")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SENDER_USER_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EDITED_AT_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_REGION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MSG_ID_FIELD_NUMBER: _ClassVar[int]
    HLC_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_SEQ_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    channel_id: str
    seq: int
    sender_user_id: str
    text: str
    created_at: _timestamp_pb2.Timestamp
    edited_at: _timestamp_pb2.Timestamp
    deleted: bool
    origin_region: str
    client_msg_id: str
    hlc: int
    origin_seq: int
    def __init__(self, message_id: _Optional[str] = ..., channel_id: _Optional[str] = ..., seq: _Optional[int] = ..., sender_user_id: _Optional[str] = ..., text: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., edited_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deleted: _Optional[bool] = ..., origin_region: _Optional[str] = ..., client_msg_id: _Optional[str] = ..., hlc: _Optional[int] = ..., origin_seq: _Optional[int] = ...) -> None: ...
