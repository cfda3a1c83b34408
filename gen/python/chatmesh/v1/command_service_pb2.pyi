from buf.validate import validate_pb2 as _validate_pb2
from chatmesh.v1 import channel_pb2 as _channel_pb2
from chatmesh.v1 import message_pb2 as _message_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateChannelRequest(_message.Message):
    __slots__ = ("name", "member_user_ids", "visibility", "client_request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMBER_USER_IDS_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    member_user_ids: _containers.RepeatedScalarFieldContainer[str]
    visibility: _channel_pb2.ChannelVisibility
    client_request_id: str
    def __init__(self, name: _Optional[str] = ..., member_user_ids: _Optional[_Iterable[str]] = ..., visibility: _Optional[_Union[_channel_pb2.ChannelVisibility, str]] = ..., client_request_id: _Optional[str] = ...) -> None: ...

class CreateChannelResponse(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: _channel_pb2.Channel
    def __init__(self, channel: _Optional[_Union[_channel_pb2.Channel, _Mapping]] = ...) -> None: ...

class JoinChannelRequest(_message.Message):
    __slots__ = ("channel_id",)
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    def __init__(self, channel_id: _Optional[str] = ...) -> None: ...

class JoinChannelResponse(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: _channel_pb2.Channel
    def __init__(self, channel: _Optional[_Union[_channel_pb2.Channel, _Mapping]] = ...) -> None: ...

class LeaveChannelRequest(_message.Message):
    __slots__ = ("channel_id",)
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    def __init__(self, channel_id: _Optional[str] = ...) -> None: ...

class LeaveChannelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SendMessageRequest(_message.Message):
    __slots__ = ("channel_id", "text", "client_msg_id")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MSG_ID_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    text: str
    client_msg_id: str
    def __init__(self, channel_id: _Optional[str] = ..., text: _Optional[str] = ..., client_msg_id: _Optional[str] = ...) -> None: ...

class SendMessageResponse(_message.Message):
    __slots__ = ("message", "duplicate")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    message: _message_pb2.Message
    duplicate: bool
    def __init__(self, message: _Optional[_Union[_message_pb2.Message, _Mapping]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class EditMessageRequest(_message.Message):
    __slots__ = ("channel_id", "message_id", "text")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    message_id: str
    text: str
    def __init__(self, channel_id: _Optional[str] = ..., message_id: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class EditMessageResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: _message_pb2.Message
    def __init__(self, message: _Optional[_Union[_message_pb2.Message, _Mapping]] = ...) -> None: ...

class DeleteMessageRequest(_message.Message):
    __slots__ = ("channel_id", "message_id")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    message_id: str
    def __init__(self, channel_id: _Optional[str] = ..., message_id: _Optional[str] = ...) -> None: ...

class DeleteMessageResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetTypingRequest(_message.Message):
    __slots__ = ("channel_id", "typing")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    TYPING_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    typing: bool
    def __init__(self, channel_id: _Optional[str] = ..., typing: _Optional[bool] = ...) -> None: ...

class SetTypingResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MarkReadRequest(_message.Message):
    __slots__ = ("channel_id", "seq", "read_through_origins")
    class ReadThroughOriginsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    READ_THROUGH_ORIGINS_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    seq: int
    read_through_origins: _containers.ScalarMap[str, int]
    def __init__(self, channel_id: _Optional[str] = ..., seq: _Optional[int] = ..., read_through_origins: _Optional[_Mapping[str, int]] = ...) -> None: ...

class MarkReadResponse(_message.Message):
    __slots__ = ("last_read_seq", "last_read_origins")
    class LastReadOriginsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    LAST_READ_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_READ_ORIGINS_FIELD_NUMBER: _ClassVar[int]
    last_read_seq: int
    last_read_origins: _containers.ScalarMap[str, int]
    def __init__(self, last_read_seq: _Optional[int] = ..., last_read_origins: _Optional[_Mapping[str, int]] = ...) -> None: ...
