"""Every protovalidate rule in the contract rejects a bad input and lets a good one through.

The rules are enumerated from the generated descriptors (every field, oneof and message
option of every ``chatmesh.*`` message), and each must have exactly one case below, so a
rule added to a .proto without a case here fails ``test_every_rule_has_a_case``.

A case starts from the message's known-good instance (``GOOD``), breaks one thing, and
expects exactly one violation: the named field path, rule id and rule path.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import protovalidate
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from buf.validate import validate_pb2
from chatmesh.v1 import (
    channel_pb2,
    command_service_pb2,
    fanout_service_pb2,
    notification_service_pb2,
    query_service_pb2,
)

GEN_PYTHON = Path(__file__).resolve().parents[2] / "gen" / "python"

CH = "ch_" + "a" * 26
CH2 = "ch_" + "b" * 26
CH_EU = "ch_eu_" + "d" * 26
"""A channel id with a region prefix (the every-region write mode, ADR-026)."""
MSG = "msg_" + "c" * 26

# Rule fields that modify how rules apply rather than being rules themselves.
_MODIFIERS = frozenset({"ignore"})


def _channel_ids(count: int) -> list[str]:
    return [f"ch_{i:026d}" for i in range(count)]


def _origins(positions: dict[str, dict[str, int]]) -> Callable[[Any], None]:
    """Sets ``resume_from_origins`` (a map of messages: ``_set`` cannot ``update`` it)."""

    def mutate(message: Any) -> None:
        message.resume_from_origins.clear()
        for channel_id, seqs in positions.items():
            message.resume_from_origins[channel_id].origin_seqs.update(seqs)

    return mutate


def _user_ids(count: int) -> list[str]:
    return [f"user{i}" for i in range(count)]


# One valid instance of every message that has rules; each is validated clean below and is
# the starting point of that message's bad cases.
GOOD: dict[str, Message] = {
    m.DESCRIPTOR.full_name: m
    for m in [
        command_service_pb2.CreateChannelRequest(
            name="general",
            member_user_ids=["bob", "carol_2"],
            visibility=channel_pb2.CHANNEL_VISIBILITY_PUBLIC,
            client_request_id="req-1",
        ),
        command_service_pb2.JoinChannelRequest(channel_id=CH),
        command_service_pb2.LeaveChannelRequest(channel_id=CH),
        command_service_pb2.SendMessageRequest(channel_id=CH, text="hello", client_msg_id="m-1"),
        command_service_pb2.EditMessageRequest(channel_id=CH, message_id=MSG, text="hello again"),
        command_service_pb2.DeleteMessageRequest(channel_id=CH, message_id=MSG),
        command_service_pb2.SetTypingRequest(channel_id=CH, typing=True),
        command_service_pb2.MarkReadRequest(channel_id=CH, seq=3),
        query_service_pb2.GetHistoryRequest(channel_id=CH, before_seq=10, after_seq=2, limit=50),
        query_service_pb2.GetChannelRequest(channel_id=CH),
        query_service_pb2.GetPresenceRequest(user_ids=["bob", "carol"]),
        notification_service_pb2.SubscribeRequest(
            resume_from={CH: 5, CH2: 0},
            resume_from_origins={
                CH_EU: notification_service_pb2.OriginPositions(origin_seqs={"eu": 3, "asia": 0})
            },
        ),
        notification_service_pb2.OriginPositions(origin_seqs={"eu": 3, "us-east": 0}),
        fanout_service_pb2.GetRouteRequest(user_id="bob"),
    ]
}


@dataclass(frozen=True)
class Case:
    """Breaks one rule of ``GOOD[message]`` and names the violation protovalidate must report."""

    message: str
    """Full name of the message, a key of GOOD."""
    rule: str
    """``field: rule.path`` or ``: rule.path`` for message rules, as enumerated below."""
    breaks: Callable[[Any], None]
    """Mutates a copy of the good instance so exactly this rule fails."""
    field: tuple[tuple[str, object], ...] | None
    """Expected field path: (field name, subscript or None) per element; None for message rules."""
    rule_id: str
    """Expected ``Violation.rule_id``."""
    rule_path: str | None = None
    """Expected ``Violation.rule`` path, when it is not the enumerated one."""
    for_key: bool = False
    """Expected ``Violation.for_key`` (true for map key rules)."""

    @property
    def key(self) -> str:
        return f"{self.message}.{self.rule}"


def _set(**values: object) -> Callable[[Any], None]:
    def mutate(message: Any) -> None:
        for name, value in values.items():
            field = message.DESCRIPTOR.fields_by_name[name]
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                getattr(message, name).clear()
                getattr(message, name).update(value)
            elif field.is_repeated:
                del getattr(message, name)[:]
                getattr(message, name).extend(value)
            else:
                setattr(message, name, value)

    return mutate


def _channel_id_case(message: str) -> Case:
    return Case(
        message,
        "channel_id: string.pattern",
        _set(channel_id="ch_NOT-LOWER-BASE32"),
        (("channel_id", None),),
        "string.pattern",
    )


def _text_cases(message: str) -> list[Case]:
    return [
        Case(message, "text: string.min_len", _set(text=""), (("text", None),), "string.min_len"),
        Case(
            message,
            "text: string.max_len",
            _set(text="x" * 4001),
            (("text", None),),
            "string.max_len",
        ),
        Case(message, "text: cel[0]", _set(text=" \t\n "), (("text", None),), "text.not_blank"),
    ]


def _message_id_case(message: str) -> Case:
    return Case(
        message,
        "message_id: string.pattern",
        _set(message_id="msg_short"),
        (("message_id", None),),
        "string.pattern",
    )


CREATE = "chatmesh.v1.CreateChannelRequest"
SEND = "chatmesh.v1.SendMessageRequest"
EDIT = "chatmesh.v1.EditMessageRequest"
DELETE = "chatmesh.v1.DeleteMessageRequest"
MARK = "chatmesh.v1.MarkReadRequest"
HISTORY = "chatmesh.v1.GetHistoryRequest"
PRESENCE = "chatmesh.v1.GetPresenceRequest"
SUBSCRIBE = "chatmesh.v1.SubscribeRequest"
ORIGINS = "chatmesh.v1.OriginPositions"
ROUTE = "chatmesh.v1.GetRouteRequest"

CASES: list[Case] = [
    # CommandService
    Case(CREATE, "name: string.min_len", _set(name=""), (("name", None),), "string.min_len"),
    Case(CREATE, "name: string.max_len", _set(name="n" * 101), (("name", None),), "string.max_len"),
    Case(
        CREATE,
        "member_user_ids: repeated.max_items",
        _set(member_user_ids=_user_ids(1001)),
        (("member_user_ids", None),),
        "repeated.max_items",
    ),
    Case(
        CREATE,
        "member_user_ids: repeated.unique",
        _set(member_user_ids=["bob", "bob"]),
        (("member_user_ids", None),),
        "repeated.unique",
    ),
    Case(
        CREATE,
        "member_user_ids: repeated.items.string.pattern",
        _set(member_user_ids=["bob", "-leading-dash"]),
        (("member_user_ids", 1),),
        "string.pattern",
    ),
    Case(
        CREATE,
        "visibility: enum.defined_only",
        _set(visibility=99),
        (("visibility", None),),
        "enum.defined_only",
    ),
    Case(
        CREATE,
        "client_request_id: string.pattern",
        _set(client_request_id="has space"),
        (("client_request_id", None),),
        "string.pattern",
    ),
    _channel_id_case("chatmesh.v1.JoinChannelRequest"),
    _channel_id_case("chatmesh.v1.LeaveChannelRequest"),
    _channel_id_case(SEND),
    *_text_cases(SEND),
    Case(
        SEND,
        "client_msg_id: string.pattern",
        _set(client_msg_id=""),  # the idempotency key is mandatory for sends
        (("client_msg_id", None),),
        "string.pattern",
    ),
    _channel_id_case(EDIT),
    _message_id_case(EDIT),
    *_text_cases(EDIT),
    _channel_id_case(DELETE),
    _message_id_case(DELETE),
    _channel_id_case("chatmesh.v1.SetTypingRequest"),
    _channel_id_case(MARK),
    Case(MARK, "seq: int64.gte", _set(seq=-1), (("seq", None),), "int64.gte"),
    Case(
        MARK,
        "read_through_origins: map.max_pairs",
        _set(read_through_origins={f"r{i}": 1 for i in range(65)}),
        (("read_through_origins", None),),
        "map.max_pairs",
    ),
    Case(
        MARK,
        "read_through_origins: map.keys.string.pattern",
        _set(read_through_origins={"eu": 1, "EU_WEST": 2}),
        (("read_through_origins", "EU_WEST"),),
        "string.pattern",
        for_key=True,
    ),
    Case(
        MARK,
        "read_through_origins: map.values.int64.gte",
        _set(read_through_origins={"eu": -1}),
        (("read_through_origins", "eu"),),
        "int64.gte",
    ),
    # QueryService
    _channel_id_case(HISTORY),
    # after_seq cleared: with both set, a zero before_seq would also break the bounds rule.
    Case(
        HISTORY,
        "page_token: string.max_len",
        _set(page_token="t" * 257),
        (("page_token", None),),
        "string.max_len",
    ),
    Case(
        HISTORY,
        "before_seq: int64.gt",
        lambda m: (m.ClearField("after_seq"), setattr(m, "before_seq", 0)),
        (("before_seq", None),),
        "int64.gt",
    ),
    Case(HISTORY, "after_seq: int64.gte", _set(after_seq=-1), (("after_seq", None),), "int64.gte"),
    # protovalidate reports a gte+lte pair as one range rule, under the gte path.
    Case(
        HISTORY,
        "limit: int32.gte",
        _set(limit=0),
        (("limit", None),),
        "int32.gte_lte",
        rule_path="int32.gte",
    ),
    Case(
        HISTORY,
        "limit: int32.lte",
        _set(limit=201),
        (("limit", None),),
        "int32.gte_lte",
        rule_path="int32.gte",
    ),
    # Message-level CEL: no field path, and protovalidate reports no rule path either.
    Case(
        HISTORY,
        ": cel[0]",
        _set(before_seq=5, after_seq=4),
        None,
        "history.bounds_order",
        rule_path="",
    ),
    _channel_id_case("chatmesh.v1.GetChannelRequest"),
    Case(
        PRESENCE,
        "user_ids: repeated.min_items",
        _set(user_ids=[]),
        (("user_ids", None),),
        "repeated.min_items",
    ),
    Case(
        PRESENCE,
        "user_ids: repeated.max_items",
        _set(user_ids=_user_ids(201)),
        (("user_ids", None),),
        "repeated.max_items",
    ),
    Case(
        PRESENCE,
        "user_ids: repeated.unique",
        _set(user_ids=["bob", "carol", "bob"]),
        (("user_ids", None),),
        "repeated.unique",
    ),
    Case(
        PRESENCE,
        "user_ids: repeated.items.string.pattern",
        _set(user_ids=["bob", "x" * 65]),
        (("user_ids", 1),),
        "string.pattern",
    ),
    # NotificationService
    Case(
        SUBSCRIBE,
        "resume_from: map.max_pairs",
        _set(resume_from=dict.fromkeys(_channel_ids(1001), 1)),
        (("resume_from", None),),
        "map.max_pairs",
    ),
    Case(
        SUBSCRIBE,
        "resume_from: map.keys.string.pattern",
        _set(resume_from={CH: 1, "general": 2}),
        (("resume_from", "general"),),
        "string.pattern",
        for_key=True,
    ),
    Case(
        SUBSCRIBE,
        "resume_from: map.values.int64.gte",
        _set(resume_from={CH: -1}),
        (("resume_from", CH),),
        "int64.gte",
    ),
    Case(
        SUBSCRIBE,
        "resume_from_origins: map.max_pairs",
        _origins({ch: {"eu": 1} for ch in _channel_ids(1001)}),
        (("resume_from_origins", None),),
        "map.max_pairs",
    ),
    Case(
        SUBSCRIBE,
        "resume_from_origins: map.keys.string.pattern",
        _origins({"general": {"eu": 1}}),
        (("resume_from_origins", "general"),),
        "string.pattern",
        for_key=True,
    ),
    Case(
        ORIGINS,
        "origin_seqs: map.max_pairs",
        _set(origin_seqs={f"r{i}": 1 for i in range(65)}),
        (("origin_seqs", None),),
        "map.max_pairs",
    ),
    Case(
        ORIGINS,
        "origin_seqs: map.keys.string.pattern",
        _set(origin_seqs={"eu": 1, "EU_WEST": 2}),
        (("origin_seqs", "EU_WEST"),),
        "string.pattern",
        for_key=True,
    ),
    Case(
        ORIGINS,
        "origin_seqs: map.values.int64.gte",
        _set(origin_seqs={"eu": -1}),
        (("origin_seqs", "eu"),),
        "int64.gte",
    ),
    # FanoutService
    Case(
        ROUTE, "user_id: string.pattern", _set(user_id=""), (("user_id", None),), "string.pattern"
    ),
]

# Valid values at the edges of each range: the rules must not be off by one.
EDGES: list[tuple[str, Callable[[Any], None]]] = [
    (CREATE, _set(name="n" * 100)),
    (CREATE, _set(name="é" * 100)),  # lengths count characters, not bytes
    (CREATE, _set(member_user_ids=_user_ids(1000))),
    (CREATE, _set(member_user_ids=[], client_request_id="")),  # both optional
    (CREATE, _set(member_user_ids=["a" * 64], client_request_id="~" * 64)),
    (CREATE, _set(visibility=channel_pb2.CHANNEL_VISIBILITY_UNSPECIFIED)),
    (SEND, _set(text="x" * 4000, client_msg_id="!" * 64)),
    (SEND, _set(text=" x ")),
    (EDIT, _set(text="😀" * 4000)),
    (MARK, _set(seq=0)),
    (MARK, _set(read_through_origins={"eu": 3, "us-east": 0, "asia": 12})),
    (HISTORY, _set(limit=1)),
    (HISTORY, _set(limit=200)),
    (HISTORY, _set(before_seq=6, after_seq=4)),
    (HISTORY, _set(after_seq=0)),  # from the start
    (HISTORY, lambda m: (m.ClearField("before_seq"), m.ClearField("after_seq"))),  # newest page
    (HISTORY, lambda m: m.ClearField("limit")),
    (PRESENCE, _set(user_ids=_user_ids(200))),
    (SUBSCRIBE, _set(resume_from=dict.fromkeys(_channel_ids(1000), 0))),
    (SUBSCRIBE, _set(resume_from={})),
]

validator = protovalidate.Validator()


def _chatmesh_messages() -> Iterator[Descriptor]:
    """Every message (nested ones too) of every generated chatmesh module."""
    for path in sorted((GEN_PYTHON / "chatmesh").rglob("*_pb2.py")):
        module = importlib.import_module(
            ".".join(path.relative_to(GEN_PYTHON).with_suffix("").parts)
        )
        pending = list(module.DESCRIPTOR.message_types_by_name.values())
        while pending:
            message = pending.pop()
            pending.extend(message.nested_types)
            yield message


def _leaves(rules: Message, prefix: str = "") -> Iterator[str]:
    """Dotted paths of the rules set in a FieldRules/MessageRules/OneofRules message."""
    for field, value in rules.ListFields():
        if field.name in _MODIFIERS:
            continue
        path = f"{prefix}{field.name}"
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            yield path
        elif field.is_repeated:  # e.g. cel: each expression is a rule of its own
            yield from (f"{path}[{i}]" for i in range(len(value)))
        else:
            yield from _leaves(value, f"{path}.")


def enumerate_rules() -> list[str]:
    """``Message.field: rule.path`` for every field rule, ``Message.: rule.path`` for others."""
    found: list[str] = []
    for message in _chatmesh_messages():
        options = message.GetOptions()
        if options.HasExtension(validate_pb2.message):
            found += [
                f"{message.full_name}.: {leaf}"
                for leaf in _leaves(options.Extensions[validate_pb2.message])
            ]
        for oneof in message.oneofs:
            oneof_options = oneof.GetOptions()
            if oneof_options.HasExtension(validate_pb2.oneof):
                found += [
                    f"{message.full_name}.{oneof.name}: {leaf}"
                    for leaf in _leaves(oneof_options.Extensions[validate_pb2.oneof])
                ]
        for field in message.fields:
            field_options = field.GetOptions()
            if field_options.HasExtension(validate_pb2.field):
                found += [
                    f"{message.full_name}.{field.name}: {leaf}"
                    for leaf in _leaves(field_options.Extensions[validate_pb2.field])
                ]
    return sorted(found)


def test_rule_enumeration_finds_the_rules() -> None:
    """Guards the enumeration itself: a walker that finds nothing would pass vacuously."""
    rules = enumerate_rules()
    assert len(rules) >= 30
    assert "chatmesh.v1.SendMessageRequest.text: cel[0]" in rules
    assert "chatmesh.v1.SubscribeRequest.resume_from: map.keys.string.pattern" in rules
    assert "chatmesh.v1.GetHistoryRequest.: cel[0]" in rules


def test_every_rule_has_a_case() -> None:
    keys = [case.key for case in CASES]
    assert len(keys) == len(set(keys)), "duplicate cases"
    rules = set(enumerate_rules())
    assert sorted(rules - set(keys)) == [], "rules without a case in CASES"
    assert sorted(set(keys) - rules) == [], "cases for rules the contract no longer has"


def test_every_message_with_rules_has_a_good_instance() -> None:
    with_rules = {rule.split(": ")[0].rsplit(".", 1)[0] for rule in enumerate_rules()}
    assert with_rules == set(GOOD)


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_instance_passes(name: str) -> None:
    assert validator.collect_violations(GOOD[name]) == []
    validator.validate(GOOD[name])  # the raising API agrees


@pytest.mark.parametrize(("name", "mutate"), EDGES)
def test_valid_edge_values_pass(name: str, mutate: Callable[[Any], None]) -> None:
    message = _copy(GOOD[name])
    mutate(message)
    assert _describe(validator.collect_violations(message)) == []


def _copy(message: Message) -> Any:
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def _field_path(path: Any) -> tuple[tuple[str, object], ...] | None:
    if path is None:
        return None
    elements = []
    for element in path.elements:
        subscript = element.subscript
        elements.append((element.field_name, None if subscript is None else subscript.value))
    return tuple(elements)


def _rule_path(path: Any) -> str:
    if path is None:
        return ""
    parts = []
    for element in path.elements:
        subscript = element.subscript
        parts.append(element.field_name + ("" if subscript is None else f"[{subscript.value}]"))
    return ".".join(parts)


def _describe(violations: list[Any]) -> list[dict[str, object]]:
    return [
        {
            "field": _field_path(v.proto.field),
            "rule_id": v.proto.rule_id,
            "rule": _rule_path(v.proto.rule),
            "for_key": v.proto.for_key,
        }
        for v in violations
    ]


@pytest.mark.parametrize("case", CASES, ids=[case.key for case in CASES])
def test_bad_value_is_rejected_naming_field_and_rule(case: Case) -> None:
    message = _copy(GOOD[case.message])
    case.breaks(message)
    expected = {
        "field": case.field,
        "rule_id": case.rule_id,
        "rule": case.rule.split(": ", 1)[1] if case.rule_path is None else case.rule_path,
        "for_key": case.for_key,
    }
    assert _describe(validator.collect_violations(message)) == [expected]
    with pytest.raises(protovalidate.ValidationError):
        validator.validate(message)


# Issue 13 (finding 4): text made only of Unicode whitespace passed "not only whitespace"
# (RE2's \s is ASCII-only), and the history bounds rule overflowed at after_seq = 2^63-1.
@pytest.mark.parametrize(
    "blank",
    ["\u3000", "\u00a0", "\u2028", "\u2029", "\u0085", "\u2003\u202f", "\u200b\ufeff", " \u3000\t"],
)
@pytest.mark.parametrize("name", [SEND, EDIT])
def test_text_of_unicode_whitespace_only_is_refused(name: str, blank: str) -> None:
    message = GOOD[name].__class__()
    message.CopyFrom(GOOD[name])
    message.text = blank
    assert [v.proto.rule_id for v in validator.collect_violations(message)] == ["text.not_blank"]


@pytest.mark.parametrize("text", ["a\u3000", "\u3000日本", "\u00a0😀"])
def test_text_with_something_visible_around_unicode_whitespace_passes(text: str) -> None:
    message = command_service_pb2.SendMessageRequest()
    message.CopyFrom(GOOD[SEND])
    message.text = text
    assert validator.collect_violations(message) == []


@pytest.mark.parametrize(
    ("after", "before", "valid"),
    [(2**63 - 1, 2**63 - 1, False), (2**63 - 3, 2**63 - 1, True), (2**63 - 2, 2**63 - 1, False)],
)
def test_history_bounds_at_the_int64_edge_evaluate(after: int, before: int, valid: bool) -> None:
    message = query_service_pb2.GetHistoryRequest(channel_id=CH, after_seq=after, before_seq=before)
    found = [v.proto.rule_id for v in validator.collect_violations(message)]  # never raises
    assert found == ([] if valid else ["history.bounds_order"])
