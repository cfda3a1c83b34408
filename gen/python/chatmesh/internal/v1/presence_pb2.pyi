from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PresenceSnapshot(_message.Message):
    __slots__ = ("region", "epoch", "seq", "taken_at_ms", "users")
    REGION_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TAKEN_AT_MS_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    region: str
    epoch: str
    seq: int
    taken_at_ms: int
    users: _containers.RepeatedCompositeFieldContainer[OnlineUser]
    def __init__(self, region: _Optional[str] = ..., epoch: _Optional[str] = ..., seq: _Optional[int] = ..., taken_at_ms: _Optional[int] = ..., users: _Optional[_Iterable[_Union[OnlineUser, _Mapping]]] = ...) -> None: ...

class OnlineUser(_message.Message):
    __slots__ = ("user_id", "online_since_ms")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ONLINE_SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    online_since_ms: int
    def __init__(self, user_id: _Optional[str] = ..., online_since_ms: _Optional[int] = ...) -> None: ...
