"""mesh.rpc.validation's quick check of SendMessageRequest: never a rule of its own.

Whatever the quick check accepts, protovalidate (the contract's rules) accepts too;
whatever it is unsure of goes to protovalidate, which words the refusal.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from chatmesh.v1 import command_service_pb2 as pb
from mesh.rpc import validation

CHANNEL = "ch_" + "a" * 26


def contract_violations(req: pb.SendMessageRequest) -> list[tuple[str, str]]:
    return [(v.proto.field.elements[0].field_name, v.proto.rule_id)
            for v in validation._validator.collect_violations(req)]  # fmt: skip


@pytest.mark.parametrize(
    ("channel_id", "text", "client_msg_id"),
    [
        (CHANNEL + "\n", "hi", "k"),  # $ in a Python pattern would let the newline through
        (CHANNEL, "hi", "k" * 65),
        (CHANNEL, "x" * 4001, "k"),
        (CHANNEL, "", "k"),
        (CHANNEL, "\u3000\u200b \n", "k"),  # blank in Unicode terms
        ("ch_" + "A" * 26, "hi", "k"),
        (CHANNEL, "hi", "k\u00e9"),
        (CHANNEL, "hi", ""),
    ],
)
def test_a_bad_send_gets_the_contracts_violations(
    channel_id: str, text: str, client_msg_id: str
) -> None:
    req = pb.SendMessageRequest(channel_id=channel_id, text=text, client_msg_id=client_msg_id)
    expected = contract_violations(req)
    assert expected
    got = validation.violations_of(req)
    assert [(v.field, v.rule_id) for v in got] == expected


def test_a_valid_send_at_the_limits_passes() -> None:
    for text in ("x", "é" * 3999 + "x", "\u3000x"):
        req = pb.SendMessageRequest(channel_id=CHANNEL, text=text, client_msg_id="~" * 64)
        assert validation.violations_of(req) == [] == contract_violations(req)


_ids = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=70)


@settings(max_examples=200, deadline=None)
@given(
    channel_id=st.one_of(_ids, st.from_regex(r"ch_[0-9a-z]{26}\n?", fullmatch=True)),
    text=st.text(max_size=50) | st.text(alphabet=" \n\t\u3000\u200bx", min_size=1),
    client_msg_id=_ids,
)
def test_quick_and_contract_agree(channel_id: str, text: str, client_msg_id: str) -> None:
    req = pb.SendMessageRequest(channel_id=channel_id, text=text, client_msg_id=client_msg_id)
    assert [(v.field, v.rule_id) for v in validation.violations_of(req)] == contract_violations(req)


def test_the_quick_check_knows_every_field_of_the_request() -> None:
    # A field added to SendMessageRequest (with its own rules) must be added to
    # _send_surely_valid too, or valid-looking requests would skip its rules.
    fields = [f.name for f in pb.SendMessageRequest.DESCRIPTOR.fields]
    assert fields == ["channel_id", "text", "client_msg_id"]
