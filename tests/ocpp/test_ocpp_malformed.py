"""Every row of the error table (ocpp_adapter/errors.py), per version, over a live connection.

After each bad frame the same connection must still answer a Heartbeat.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from ocpp_testkit import HEARTBEAT, charger, exchange, no_answer, running_server

NOW = "2026-01-01T00:00:00Z"
BOOT16 = {"chargePointVendor": "v", "chargePointModel": "m"}
BOOT201 = {"reason": "PowerUp", "chargingStation": {"model": "m", "vendorName": "v"}}

# (frame, expected answer as [message id, error code], or None for "no reply")
ROWS_16 = {
    "not json": ("nonsense{", ["-1", "FormationViolation"]),
    "not an array": ('{"a": 1}', ["-1", "FormationViolation"]),
    "empty array": ("[]", ["-1", "FormationViolation"]),
    "numeric message id": ('[2, 5, "Heartbeat", {}]', ["-1", "FormationViolation"]),
    "message id too long": ([2, "x" * 37, "Heartbeat", {}], ["-1", "FormationViolation"]),
    "binary frame": (b'[2, "m1", "Heartbeat", {}]', ["-1", "FormationViolation"]),
    "NaN literal": ('[2, "m1", "Heartbeat", {"x": NaN}]', ["-1", "FormationViolation"]),
    "duplicate keys": ('[2, "m1", "Authorize", {"idTag": "a", "idTag": "b"}]', ["-1", "FormationViolation"]),
    "integer beyond 64 bits": ([2, "m1", "StatusNotification", {"connectorId": 2**70}], ["-1", "FormationViolation"]),
    "unknown message type": ([9, "m1", "Heartbeat", {}], None),
    "CALL too short": ([2, "m1", "Heartbeat"], ["m1", "FormationViolation"]),
    "action not a string": ([2, "m1", 5, {}], ["m1", "FormationViolation"]),
    "unknown action": ([2, "m1", "MakeCoffee", {}], ["m1", "NotImplemented"]),
    "known, not handled": ([2, "m1", "Reset", {"type": "Hard"}], ["m1", "NotSupported"]),
    "payload not an object": ([2, "m1", "Heartbeat", []], ["m1", "FormationViolation"]),
    "required missing": ([2, "m1", "Authorize", {}], ["m1", "ProtocolError"]),
    "wrong type": ([2, "m1", "Authorize", {"idTag": 5}], ["m1", "TypeConstraintViolation"]),
    "float for integer": ([2, "m1", "StartTransaction", {"connectorId": 1.0, "idTag": "a", "meterStart": 0, "timestamp": NOW}], ["m1", "TypeConstraintViolation"]),
    "bad enum": ([2, "m1", "StatusNotification", {"connectorId": 1, "errorCode": "Oops", "status": "Available"}], ["m1", "PropertyConstraintViolation"]),
    "too long": ([2, "m1", "Authorize", {"idTag": "x" * 21}], ["m1", "PropertyConstraintViolation"]),
    "bad timestamp": ([2, "m1", "StartTransaction", {"connectorId": 1, "idTag": "a", "meterStart": 0, "timestamp": "yesterday"}], ["m1", "PropertyConstraintViolation"]),
    "empty required array": ([2, "m1", "MeterValues", {"connectorId": 1, "meterValue": []}], ["m1", "OccurenceConstraintViolation"]),
    "extra property": ([2, "m1", "BootNotification", {**BOOT16, "colour": "red"}], ["m1", "FormationViolation"]),
    "unsolicited CALLRESULT": ([3, "zz", {}], None),
    "unsolicited CALLERROR": ([4, "zz", "GenericError", "", {}], None),
}

ROWS_201 = {
    "not json": ("nonsense{", ["-1", "RpcFrameworkError"]),
    "not an array": ('{"a": 1}', ["-1", "RpcFrameworkError"]),
    "empty array": ("[]", ["-1", "RpcFrameworkError"]),
    "numeric message id": ('[2, 5, "Heartbeat", {}]', ["-1", "RpcFrameworkError"]),
    "message id too long": ([2, "x" * 37, "Heartbeat", {}], ["-1", "RpcFrameworkError"]),
    "binary frame": (b'[2, "m1", "Heartbeat", {}]', ["-1", "RpcFrameworkError"]),
    "NaN literal": ('[2, "m1", "Heartbeat", {"x": NaN}]', ["-1", "RpcFrameworkError"]),
    "duplicate keys": ('[2, "m1", "Heartbeat", {"a": 1, "a": 2}]', ["-1", "RpcFrameworkError"]),
    "integer beyond 64 bits": ([2, "m1", "Heartbeat", {"customData": {"vendorId": "v", "n": 2**70}}], ["-1", "RpcFrameworkError"]),
    "unknown message type": ([9, "m1", "Heartbeat", {}], ["m1", "MessageTypeNotSupported"]),
    "CALL too short": ([2, "m1", "Heartbeat"], ["m1", "RpcFrameworkError"]),
    "action not a string": ([2, "m1", 5, {}], ["m1", "RpcFrameworkError"]),
    "unknown action": ([2, "m1", "MakeCoffee", {}], ["m1", "NotImplemented"]),
    "known, not handled": ([2, "m1", "Reset", {"type": "Immediate"}], ["m1", "NotSupported"]),
    "payload not an object": ([2, "m1", "Heartbeat", []], ["m1", "FormatViolation"]),
    "required missing": ([2, "m1", "Authorize", {}], ["m1", "OccurrenceConstraintViolation"]),
    "wrong type": ([2, "m1", "Authorize", {"idToken": {"idToken": 5, "type": "ISO14443"}}], ["m1", "TypeConstraintViolation"]),
    "bad enum": ([2, "m1", "Authorize", {"idToken": {"idToken": "a", "type": "Magic"}}], ["m1", "PropertyConstraintViolation"]),
    "too long": ([2, "m1", "Authorize", {"idToken": {"idToken": "x" * 37, "type": "ISO14443"}}], ["m1", "PropertyConstraintViolation"]),
    "bad timestamp": ([2, "m1", "StatusNotification", {"timestamp": "2026-13-45T99:00:00Z", "connectorStatus": "Available", "evseId": 1, "connectorId": 1}], ["m1", "PropertyConstraintViolation"]),
    "empty required array": ([2, "m1", "MeterValues", {"evseId": 1, "meterValue": []}], ["m1", "OccurrenceConstraintViolation"]),
    "extra property": ([2, "m1", "BootNotification", {**BOOT201, "colour": "red"}], ["m1", "FormatViolation"]),
    "unsolicited CALLRESULT": ([3, "zz", {}], None),
    "unsolicited CALLERROR": ([4, "zz", "GenericError", "", {}], None),
}

CASES = [("ocpp1.6", name, *row) for name, row in ROWS_16.items()] + [
    ("ocpp2.0.1", name, *row) for name, row in ROWS_201.items()
]


def test_both_versions_cover_the_same_rows() -> None:
    assert set(ROWS_16) - {"float for integer"} == set(ROWS_201)


@pytest.mark.parametrize(("subprotocol", "name", "frame", "expected"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
async def test_error_table_row(subprotocol: Any, name: Any, frame: Any, expected: Any) -> None:
    async with running_server() as harness, charger(harness, "CP003", subprotocol) as ws:
        if expected is None:
            assert await no_answer(ws, frame), f"{name}: expected no reply"
        else:
            answer = await exchange(ws, frame)
            assert answer[:3] == [4, *expected], answer
            assert isinstance(answer[3], str) and answer[3] and len(answer[3]) <= 255
            assert answer[4] == {}
        reply = await exchange(ws, HEARTBEAT)
        assert reply[0] == 3 and reply[1] == "hb" and "currentTime" in reply[2]
    assert [e.action for e in harness.ingest.events] == ["Heartbeat"]


@pytest.mark.parametrize("subprotocol", ["ocpp1.6", "ocpp2.0.1"])
@pytest.mark.parametrize("bad_reply", [{"currentTime": "not a time"}, {"currentTime": NOW, "customData": {"vendorId": "v", "x": Decimal("1.5")}}])
async def test_invalid_reply_from_ingest_becomes_internal_error(subprotocol: str, bad_reply: Any) -> None:
    class BrokenIngest:
        async def submit(self, event: Any) -> Any:
            from ocpp_adapter.ingest import IngestResult

            return IngestResult(reply=bad_reply, event_id=event.event_id)

    async with running_server(ingest=BrokenIngest()) as harness, charger(harness, "CP004", subprotocol) as ws:
        answer = await exchange(ws, HEARTBEAT)
        assert answer[:3] == [4, "hb", "InternalError"]
        assert (await exchange(ws, [2, "hb2", "Heartbeat", {}]))[:3] == [4, "hb2", "InternalError"]


@pytest.mark.parametrize(
    ("failure", "code"), [("overloaded", "InternalError"), ("rejected", "GenericError"), ("crash", "InternalError")]
)
async def test_ingest_failures_map_to_errors_and_keep_the_connection(failure: Any, code: Any) -> None:
    from ocpp_adapter.ingest import IngestOverloaded, IngestRejected

    class FailingIngest:
        async def submit(self, event: Any) -> Any:
            if event.action == "Authorize":
                raise {"overloaded": IngestOverloaded("mempool full"), "rejected": IngestRejected("unknown charger"),
                       "crash": RuntimeError("bug")}[failure]
            from ocpp_adapter.ingest import IngestResult

            return IngestResult(reply={"currentTime": NOW}, event_id=event.event_id)

    async with running_server(ingest=FailingIngest()) as harness, charger(harness, "CP005") as ws:
        answer = await exchange(ws, [2, "a1", "Authorize", {"idTag": "x"}])
        assert answer[:3] == [4, "a1", code]
        assert (await exchange(ws, HEARTBEAT))[0] == 3
