"""Property-based fuzzing of frames: the session never raises and answers per the error
table; over a live server the connection keeps answering after every frame."""

from __future__ import annotations

import json
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ocpp_testkit import running_server
from trio_websocket import open_websocket_url

from ocpp_adapter import errors, schemas
from ocpp_adapter.protocol import (
    CHARGER_INITIATED,
    CallAnswered,
    Ignored,
    IncomingCall,
    OcppSession,
    SendReply,
)

VERSIONS = {"ocpp1.6": "1.6", "ocpp2.0.1": "2.0.1"}

scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
message_ids = st.text(min_size=1, max_size=40) | scalars
all_actions = sorted(schemas.known_actions("1.6") | schemas.known_actions("2.0.1"))
actions = st.sampled_from(all_actions) | st.text(max_size=20)
payloads = st.dictionaries(st.sampled_from(["idTag", "connectorId", "idToken", "reason", "x"]), json_values, max_size=3)
calls = st.tuples(st.just(2), message_ids, actions, payloads | json_values).map(list)
answers = st.tuples(st.sampled_from([3, 4]), message_ids, json_values).map(list)
odd_types = st.tuples(st.integers(-3, 9) | scalars, st.text(min_size=1, max_size=36), json_values).map(list)
structured = calls | answers | odd_types | st.lists(json_values, max_size=5) | json_values
frames = structured.map(lambda f: json.dumps(f)) | st.text(max_size=60) | st.binary(max_size=20)


def _has_big_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return not -(2**63) <= value < 2**64
    if isinstance(value, list):
        return any(_has_big_int(v) for v in value)
    if isinstance(value, dict):
        return any(_has_big_int(v) for v in value.values())
    return False


def expected(frame: str | bytes, version: str) -> str:
    """What the table says, coarsely: 'framing', 'none', 'not-implemented', 'type', or 'call'."""
    if isinstance(frame, bytes):
        return "framing"
    try:
        value = json.loads(frame)
    except ValueError:
        return "framing"
    if "NaN" in frame or "Infinity" in frame:
        return "framing-or-any"  # the literal may sit inside a string: decided by the server
    if _has_big_int(value) or not isinstance(value, list) or len(value) < 2:
        return "framing"
    if not isinstance(value[1], str) or not 0 < len(value[1]) <= 36:
        return "framing"
    if type(value[0]) is int and value[0] in (3, 4):
        return "none"
    if not (type(value[0]) is int and value[0] == 2):
        return "none" if version == "1.6" else "type"
    if len(value) == 4 and isinstance(value[2], str) and value[2] and value[2] not in schemas.known_actions(version):
        return "not-implemented"
    return "call"


def check_answer(frame: str | bytes, version: str, answer: list[Any] | None) -> None:
    kind = expected(frame, version)
    if answer is None:
        assert kind in ("none", "framing-or-any"), (frame, kind)
        return
    assert kind != "none", (frame, answer)
    assert answer[0] in (3, 4)
    if answer[0] == 3:
        assert kind in ("call", "framing-or-any")
        sent = json.loads(frame)
        assert answer[1] == sent[1] and sent[2] in CHARGER_INITIATED[version]
        return
    assert len(answer) == 5 and answer[2] in errors.ERROR_CODES[version], answer
    assert isinstance(answer[3], str) and isinstance(answer[4], dict)
    if kind == "framing":
        assert answer[1] == "-1" and answer[2] == errors.framing_code(version), (frame, answer)
    elif kind == "type":
        assert answer[2] == errors.MESSAGE_TYPE_NOT_SUPPORTED
    elif kind == "not-implemented":
        assert answer[2] == errors.NOT_IMPLEMENTED
    if kind in ("type", "not-implemented", "call"):
        assert answer[1] == json.loads(frame)[1]


@settings(max_examples=400, deadline=None)
@given(frame=frames, subprotocol=st.sampled_from(sorted(VERSIONS)))
def test_session_classifies_every_frame_per_table(frame: Any, subprotocol: Any) -> None:
    version = VERSIONS[subprotocol]
    outcome = OcppSession(version).receive(frame)
    if isinstance(outcome, SendReply):
        check_answer(frame, version, json.loads(outcome.frame))
    elif isinstance(outcome, IncomingCall):
        assert expected(frame, version) in ("call", "framing-or-any")
        assert outcome.action in CHARGER_INITIATED[version]
        schemas.validate(version, outcome.action, outcome.payload)
    else:
        assert isinstance(outcome, Ignored) and not isinstance(outcome, CallAnswered)
        check_answer(frame, version, None)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(frames, min_size=1, max_size=12), subprotocol=st.sampled_from(sorted(VERSIONS)))
async def test_live_server_survives_fuzzed_frames(batch: Any, subprotocol: Any) -> None:
    version = VERSIONS[subprotocol]
    async with running_server(security_profile=0, messages_per_second=10_000, burst_messages=10_000) as harness:
        async with open_websocket_url(harness.url("FUZZ"), subprotocols=[subprotocol]) as ws:
            for n, frame in enumerate(batch):
                probe_id = f"probe-{n}"
                await ws.send_message(frame)
                await ws.send_message(json.dumps([2, probe_id, "Heartbeat", {}]))
                with trio.fail_after(5):
                    first = json.loads(await ws.get_message())
                    if first[1] == probe_id and first[0] == 3:
                        check_answer(frame, version, None)
                    else:
                        check_answer(frame, version, first)
                        probe = json.loads(await ws.get_message())
                        assert probe[:2] == [3, probe_id], probe
        # the server still serves a fresh charger
        async with open_websocket_url(harness.url("OTHER"), subprotocols=[subprotocol]) as ws:
            await ws.send_message(json.dumps([2, "ok", "Heartbeat", {}]))
            with trio.fail_after(5):
                assert json.loads(await ws.get_message())[:2] == [3, "ok"]
