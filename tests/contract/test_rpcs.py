"""The public contract has every RPC, message field and comment clients rely on.

Shapes are read from the generated ``_pb2`` modules (what services and clients import);
comments come from compiling ``proto/`` with source info, since generated descriptors
carry none.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor

from chatmesh.v1 import (
    command_service_pb2,
    errors_pb2,
    events_pb2,
    fanout_service_pb2,
    message_pb2,
    notification_service_pb2,
    query_service_pb2,
)
from tools.gen import validate_descriptor_set

REPO = Path(__file__).resolve().parents[2]
PROTOC_TIMEOUT_S = 60

# service -> {rpc: server_streaming}
REQUIRED_RPCS: dict[str, dict[str, bool]] = {
    "CommandService": {
        "CreateChannel": False,
        "JoinChannel": False,
        "LeaveChannel": False,
        "SendMessage": False,
        "EditMessage": False,
        "DeleteMessage": False,
        "SetTyping": False,
        "MarkRead": False,
    },
    "QueryService": {
        "GetHistory": False,
        "GetChannel": False,
        "ListChannels": False,
        "GetPresence": False,
    },
    "NotificationService": {"Subscribe": True},
    "FanoutService": {"GetRoute": False, "GetStats": False},
}

SERVICE_MODULES = {
    "CommandService": command_service_pb2,
    "QueryService": query_service_pb2,
    "NotificationService": notification_service_pb2,
    "FanoutService": fanout_service_pb2,
}

_F = FieldDescriptor
TIMESTAMP = "google.protobuf.Timestamp"

# field -> (scalar type or message full name)
MESSAGE_FIELDS: dict[str, int | str] = {
    "message_id": _F.TYPE_STRING,
    "channel_id": _F.TYPE_STRING,
    "seq": _F.TYPE_INT64,
    "sender_user_id": _F.TYPE_STRING,
    "text": _F.TYPE_STRING,
    "created_at": TIMESTAMP,
    "edited_at": TIMESTAMP,
    "deleted": _F.TYPE_BOOL,
    "origin_region": _F.TYPE_STRING,
}
EVENT_FIELDS: dict[str, int | str] = {
    "event_id": _F.TYPE_STRING,
    "channel_id": _F.TYPE_STRING,
    "seq": _F.TYPE_INT64,
    "origin_region": _F.TYPE_STRING,
    "occurred_at": TIMESTAMP,
}
EVENT_PAYLOADS: dict[str, str] = {
    "message_created": "chatmesh.v1.MessageCreated",
    "message_edited": "chatmesh.v1.MessageEdited",
    "message_deleted": "chatmesh.v1.MessageDeleted",
    "member_joined": "chatmesh.v1.MemberJoined",
    "member_left": "chatmesh.v1.MemberLeft",
    "channel_created": "chatmesh.v1.ChannelCreated",
    "typing_changed": "chatmesh.v1.TypingChanged",
    "presence_changed": "chatmesh.v1.PresenceChanged",
}

STATUS_CODES = frozenset(code.name for code in grpc.StatusCode)
ERROR_REASONS = frozenset(
    name.removeprefix("ERROR_REASON_")
    for name in errors_pb2.ErrorReason.keys()  # noqa: SIM118 - EnumTypeWrapper is not iterable
)


def _service(name: str) -> ServiceDescriptor:
    return SERVICE_MODULES[name].DESCRIPTOR.services_by_name[name]


def _all_rpcs() -> list[tuple[str, str]]:
    return [(svc, rpc) for svc, rpcs in REQUIRED_RPCS.items() for rpc in rpcs]


@pytest.mark.parametrize(("service", "rpc"), _all_rpcs())
def test_rpc_exists_with_its_own_messages_and_shape(service: str, rpc: str) -> None:
    svc = _service(service)
    assert svc.full_name == f"chatmesh.v1.{service}"
    method = svc.methods_by_name.get(rpc)
    assert method is not None, f"{service}.{rpc} is missing"
    assert method.input_type.full_name == f"chatmesh.v1.{rpc}Request"
    assert method.output_type.full_name == f"chatmesh.v1.{rpc}Response"
    assert method.server_streaming is REQUIRED_RPCS[service][rpc]
    assert method.client_streaming is False


def test_request_and_response_messages_belong_to_one_rpc_each() -> None:
    users: dict[str, list[str]] = {}
    for service in REQUIRED_RPCS:
        for method in _service(service).methods:
            for message in (method.input_type, method.output_type):
                users.setdefault(message.full_name, []).append(f"{service}.{method.name}")
    shared = {name: rpcs for name, rpcs in users.items() if len(rpcs) > 1}
    assert shared == {}


@pytest.mark.parametrize("service", sorted(REQUIRED_RPCS))
def test_generated_stubs_cover_every_rpc(service: str) -> None:
    """grpcio and Connect modules were generated for every RPC (no stale or partial gen/)."""
    module = SERVICE_MODULES[service].__name__
    grpc_module = importlib.import_module(module + "_grpc")
    connect_module = importlib.import_module(module.removesuffix("_pb2") + "_connect")
    servicer = getattr(grpc_module, f"{service}Servicer")
    assert callable(getattr(grpc_module, f"add_{service}Servicer_to_server"))
    client = getattr(connect_module, f"{service}Client")
    for rpc in _service(service).methods_by_name:
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", rpc).lower()
        assert callable(getattr(servicer, rpc)), f"{service}Servicer.{rpc}"
        assert callable(getattr(client, snake)), f"{service}Client.{snake}"
    assert callable(getattr(connect_module, f"{service}ASGIApplication"))


def _assert_fields(message: Descriptor, expected: dict[str, int | str]) -> None:
    for name, kind in expected.items():
        field = message.fields_by_name.get(name)
        assert field is not None, f"{message.full_name}.{name} is missing"
        assert not field.is_repeated, f"{message.full_name}.{name} must be singular"
        if isinstance(kind, str):
            assert field.message_type is not None
            assert field.message_type.full_name == kind, f"{message.full_name}.{name}"
        else:
            assert field.type == kind, f"{message.full_name}.{name}"


def test_message_has_required_fields() -> None:
    _assert_fields(message_pb2.Message.DESCRIPTOR, MESSAGE_FIELDS)


def test_event_has_required_fields_and_payload_oneof() -> None:
    event = events_pb2.Event.DESCRIPTOR
    _assert_fields(event, EVENT_FIELDS)
    payload = event.oneofs_by_name.get("payload")
    assert payload is not None, "Event needs a oneof named payload"
    members = {f.name: f.message_type.full_name for f in payload.fields if f.message_type}
    missing = {k: v for k, v in EVENT_PAYLOADS.items() if members.get(k) != v}
    assert missing == {}, f"Event.payload lacks {missing}"
    # Envelope fields stay outside the oneof: every event carries them.
    for name in EVENT_FIELDS:
        assert event.fields_by_name[name].containing_oneof is None


def test_subscribe_resume_from_is_a_string_to_int64_map() -> None:
    field = notification_service_pb2.SubscribeRequest.DESCRIPTOR.fields_by_name["resume_from"]
    entry = field.message_type
    assert field.is_repeated and entry is not None and entry.GetOptions().map_entry
    assert entry.fields_by_name["key"].type == _F.TYPE_STRING
    assert entry.fields_by_name["value"].type == _F.TYPE_INT64
    # And it behaves as a map in the generated code.
    request = notification_service_pb2.SubscribeRequest(resume_from={"ch_a": 7})
    assert dict(request.resume_from) == {"ch_a": 7}


@dataclass(frozen=True)
class Comments:
    """Leading comments from proto/ (generated descriptors carry none)."""

    rpcs: dict[str, str]
    """``Service.Rpc`` -> the rpc's leading comment."""
    services: dict[str, str]
    """``Service`` -> the service's leading comment."""


@pytest.fixture(scope="module")
def comments(tmp_path_factory: pytest.TempPathFactory) -> Comments:
    """Compiles proto/ with source info using the venv's protoc and collects comments."""
    scratch = tmp_path_factory.mktemp("contract-source")
    validate_set = scratch / "validate.binpb"
    validate_set.write_bytes(validate_descriptor_set())
    protos = sorted(
        p.relative_to(REPO / "proto").as_posix() for p in (REPO / "proto").rglob("*.proto")
    )
    out = scratch / "source.binpb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--descriptor_set_in={validate_set}",
            f"-I{REPO / 'proto'}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *protos,
        ],
        check=True,
        capture_output=True,
        timeout=PROTOC_TIMEOUT_S,
    )
    found = Comments(rpcs={}, services={})
    for file in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        locations = {
            tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location
        }
        # Paths: FileDescriptorProto.service = 6, ServiceDescriptorProto.method = 2.
        for s_index, service in enumerate(file.service):
            found.services[service.name] = locations.get((6, s_index), "")
            for m_index, method in enumerate(service.method):
                rpc = f"{service.name}.{method.name}"
                found.rpcs[rpc] = locations.get((6, s_index, 2, m_index), "")
    return found


def test_every_rpc_comment_names_its_status_codes(comments: Comments) -> None:
    assert set(comments.rpcs) >= {f"{s}.{r}" for s, r in _all_rpcs()}
    uncommented = sorted(rpc for rpc, text in comments.rpcs.items() if not text.strip())
    assert uncommented == [], f"RPCs without a leading comment: {uncommented}"
    without_codes = sorted(
        rpc
        for rpc, text in comments.rpcs.items()
        if not STATUS_CODES & set(re.findall(r"\b[A-Z_]{4,}\b", text))
    )
    assert without_codes == [], (
        "each rpc comment must name the gRPC status codes it fails with (STYLE.md,"
        f" Contracts); these name none: {without_codes}"
    )


def test_reasons_named_in_comments_exist(comments: Comments) -> None:
    """``CODE (REASON, ...)`` in rpc and service comments names real ErrorReason values."""
    unknown: set[str] = set()
    named = 0
    for text in [*comments.rpcs.values(), *comments.services.values()]:
        for code, inside in re.findall(r"\b([A-Z_]{4,})\s*\(([^)]*)\)", text):
            if code not in STATUS_CODES:
                continue
            for word in re.findall(r"\b[A-Z][A-Z_]{3,}\b", inside):
                named += 1
                if word not in ERROR_REASONS:
                    unknown.add(word)
    assert named > 0, "no CODE (REASON) pairs found: the comment format changed"
    assert unknown == set(), f"reasons not in chatmesh.v1.ErrorReason: {sorted(unknown)}"
