from buf.validate import validate_pb2 as _validate_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetRouteRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class GetRouteResponse(_message.Message):
    __slots__ = ("user_id", "instances")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    instances: _containers.RepeatedCompositeFieldContainer[InstanceRoute]
    def __init__(self, user_id: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[InstanceRoute, _Mapping]]] = ...) -> None: ...

class InstanceRoute(_message.Message):
    __slots__ = ("instance_id", "region", "delivery_subject")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    region: str
    delivery_subject: str
    def __init__(self, instance_id: _Optional[str] = ..., region: _Optional[str] = ..., delivery_subject: _Optional[str] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("routed_users", "routes", "instances", "instances_by_region", "channels", "memberships", "table_bytes", "events_processed", "deliveries_published", "deliveries_by_region", "rss_bytes")
    class InstancesByRegionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class DeliveriesByRegionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ROUTED_USERS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_BY_REGION_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIPS_FIELD_NUMBER: _ClassVar[int]
    TABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_BY_REGION_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    routed_users: int
    routes: int
    instances: int
    instances_by_region: _containers.ScalarMap[str, int]
    channels: int
    memberships: int
    table_bytes: int
    events_processed: int
    deliveries_published: int
    deliveries_by_region: _containers.ScalarMap[str, int]
    rss_bytes: int
    def __init__(self, routed_users: _Optional[int] = ..., routes: _Optional[int] = ..., instances: _Optional[int] = ..., instances_by_region: _Optional[_Mapping[str, int]] = ..., channels: _Optional[int] = ..., memberships: _Optional[int] = ..., table_bytes: _Optional[int] = ..., events_processed: _Optional[int] = ..., deliveries_published: _Optional[int] = ..., deliveries_by_region: _Optional[_Mapping[str, int]] = ..., rss_bytes: _Optional[int] = ...) -> None: ...
