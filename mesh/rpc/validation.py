"""Request validation with the protovalidate rules written in the contract.

Example:
    >>> from chatmesh.v1 import command_service_pb2 as pb
    >>> try:
    ...     validate(pb.SendMessageRequest(channel_id="x", text="hi", client_msg_id="k"))
    ... except InvalidArgument as exc:
    ...     print(exc.violations[0].field, exc.violations[0].rule_id)
    channel_id string.pattern
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import protovalidate
from google.protobuf.message import Message

from buf.validate import validate_pb2
from mesh.core.errors import FieldViolation, InvalidArgument

__all__ = ["validate", "violations_of"]

_validator = protovalidate.Validator()
_MAX_KEY = 64
"""Characters of a map key a field path shows at most."""


def _path(violation: Any) -> str:
    parts: list[str] = []
    field_path = violation.proto.field
    if field_path is None:
        return ""  # a message-level rule
    for element in field_path.elements:
        name = element.field_name
        sub = element.subscript
        if sub is None:
            parts.append(name)
            continue
        # protovalidate's FieldPathElement.subscript is a oneof: index, bool_key,
        # int_key, uint_key or string_key.
        value = getattr(sub, "value", sub)
        kind = getattr(sub, "field", "")
        if isinstance(value, str) and len(value) > _MAX_KEY:
            # A map key is the client's text: a 70,000-character key in every path
            # overflowed the status trailers (the stream was reset: UNAVAILABLE).
            value = f"{value[:_MAX_KEY]}..."
        rendered = f'"{value}"' if kind == "string_key" or isinstance(value, str) else str(value)
        parts.append(f"{name}[{rendered}]")
    return ".".join(parts)


_EVALUATING = re.compile(r"error evaluating ([\w.]+)")
_THIS_FIELD = re.compile(r"\bthis\.(\w+)")


def _fields_of_rule(descriptor: Any, rule_id: str) -> list[str]:
    """The field(s) a CEL rule with ``rule_id`` belongs to or reads (``[""]`` if unknown)."""
    field_ext: Any = validate_pb2.field  # the generated module is untyped
    message_ext: Any = validate_pb2.message
    for field in descriptor.fields:
        rules = field.GetOptions().Extensions[field_ext]
        if any(rule.id == rule_id for rule in rules.cel):
            return [str(field.name)]
    names = {f.name for f in descriptor.fields}
    rule: Any
    for rule in descriptor.GetOptions().Extensions[message_ext].cel:
        if rule.id == rule_id:
            return sorted(set(_THIS_FIELD.findall(rule.expression)) & names) or [""]
    return [""]


def _evaluation_failure(message: Message, exc: Exception) -> list[FieldViolation]:
    """A rule that could not be evaluated on this input (e.g. integer overflow) as a violation.

    The input is what makes the rule fail (rules that fail on every input are
    caught by the contract tests), so it is the caller's INVALID_ARGUMENT, naming
    the field, never an INTERNAL.
    """
    found = _EVALUATING.search(str(exc))
    rule_id = found.group(1) if found else "cel.evaluation"
    reason = str(exc).rsplit(":", 1)[-1].strip() or "cannot be evaluated"
    return [
        FieldViolation(field, rule_id, f"value out of range for this rule ({reason})")
        for field in _fields_of_rule(message.DESCRIPTOR, rule_id)
    ]


_CHANNEL_ID = re.compile(r"ch_(?:[a-z][a-z0-9-]{0,31}_)?[0-9a-z]{26}", re.ASCII)
_CLIENT_MSG_ID = re.compile(r"[!-~]{1,64}", re.ASCII)
_VISIBLE_ASCII = re.compile(r"[!-~]", re.ASCII)


def _send_surely_valid(req: Any) -> bool:
    """True only if SendMessageRequest's rules (command_service.proto) all hold.

    A sufficient test, never a different rule: a False sends the request to
    protovalidate, which decides and words every refusal. Lengths are in code
    points as in protovalidate; a text with a visible ASCII character is not
    blank; any other text (e.g. only non-ASCII) is left to the CEL rule.
    """
    text: str = req.text
    return (
        0 < len(text) <= 4000
        and _CHANNEL_ID.fullmatch(req.channel_id) is not None
        and _CLIENT_MSG_ID.fullmatch(req.client_msg_id) is not None
        and _VISIBLE_ASCII.search(text) is not None
    )


_SURELY_VALID: dict[str, Callable[[Any], bool]] = {
    "chatmesh.v1.SendMessageRequest": _send_surely_valid,
}
"""Request type -> a quick sufficient check: SendMessage is the hot write path, and
protovalidate's CEL evaluation was the largest Python cost of a valid send (ADR-024)."""


def violations_of(message: Message) -> list[FieldViolation]:
    """Every rule ``message`` breaks (empty if it is valid)."""
    quick = _SURELY_VALID.get(message.DESCRIPTOR.full_name)
    if quick is not None and quick(message):
        return []
    try:
        found = _validator.collect_violations(message)
    except protovalidate.CompilationError as exc:  # a broken rule in our contract
        raise RuntimeError(
            f"validation rules of {message.DESCRIPTOR.full_name} do not compile: {exc}"
        ) from exc
    except protovalidate.EvaluationError as exc:
        return _evaluation_failure(message, exc)
    return [FieldViolation(_path(v), v.proto.rule_id, v.proto.message) for v in found]


MAX_VIOLATIONS = 20
"""Violations a refusal lists at most: the status travels in HTTP/2 trailers, and 200
broken list items made trailers so large that the server reset the stream (UNAVAILABLE)."""


def validate(message: Message) -> None:
    """Raises InvalidArgument naming every broken field and rule (the first MAX_VIOLATIONS)."""
    violations = violations_of(message)
    if len(violations) > MAX_VIOLATIONS:
        shown = violations[:MAX_VIOLATIONS]
        summary = "; ".join(
            f"{v.field or '(request)'}: {v.description} [{v.rule_id}]" for v in shown
        )
        raise InvalidArgument(
            shown,
            f"invalid request: {summary}; and {len(violations) - MAX_VIOLATIONS} more violations",
        )
    if violations:
        raise InvalidArgument(violations)
