"""Delivery of manager commands (devsen/charger_commands.py) with a stand-in for the charger
connections, and the CLI's payloads for both OCPP versions (devsen/charger_cli.py)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import trio

from devsen.charger_cli import build_parser, call_of, format_command
from devsen.charger_commands import CommandDelivery, call_charger
from devsen.ledger.commands import (
    ACTIONS,
    ChargerCommand,
    CommandRecord,
    command_problem,
    decode_outcome,
)
from ocpp_adapter.errors import ChargerCallError, ChargerCallTimeout, ChargerDisconnected
from primitives.eip712 import Domain, SigningKey

KEY = SigningKey(b"\x61" * 32)
ANCHOR = Domain(31337, b"\xa0" * 20)


class Connections:
    """Chargers connected here (version, connection id) and what each CALL answers."""

    def __init__(self) -> None:
        self.live: dict[str, tuple[str, bytes]] = {}
        self.answers: dict[str, Any] = {}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def version(self, charger_id: str) -> str | None:
        return self.live[charger_id][0] if charger_id in self.live else None

    def connection_id(self, charger_id: str) -> bytes | None:
        return self.live[charger_id][1] if charger_id in self.live else None

    async def call(self, charger_id: str, action: str, payload: dict[str, Any], timeout: float | None = None) -> Any:
        self.calls.append((charger_id, action, payload))
        answer = self.answers.get(action, {"status": "Accepted"})
        if isinstance(answer, ChargerDisconnected):
            self.live.pop(charger_id, None)  # the connection is gone
        if isinstance(answer, Exception):
            raise answer
        return answer


def record(action: str, payload: dict[str, Any], charger: str = "CP-1", version: str = "1.6",
           expires: int | None = None) -> CommandRecord:
    return CommandRecord(1, charger, version, action, json.dumps(payload).encode(), 1,
                         expires or int(time.time() * 1000) + 60_000, b"\x01" * 20, 1)


async def test_call_charger_classifies_every_answer() -> None:
    connections = Connections()
    connections.live["CP-1"] = ("1.6", b"c1")
    connections.answers = {"Reset": ChargerCallError("NotSupported", "no", {}), "ClearCache": ChargerCallTimeout("t"),
                           "UnlockConnector": ChargerDisconnected("gone"), "DataTransfer": ValueError("bad payload")}
    kinds = [(await call_charger(connections, "CP-1", action, {}, 1.0)).kind  # type: ignore[arg-type]
             for action in ("TriggerMessage", "Reset", "ClearCache", "UnlockConnector", "DataTransfer")]
    assert kinds == ["result", "error", "timeout", "lost", "refused"]


async def test_delivery_sends_once_per_connection_resends_after_a_lost_connection_never_when_expired() -> None:
    connections = Connections()
    pending: dict[str, list[tuple[bytes, CommandRecord]]] = {
        "CP-1": [(b"\x01" * 32, record("Reset", {"type": "Soft"}))],
        "CP-2": [(b"\x02" * 32, record("ClearCache", {}, charger="CP-2", expires=1))],  # expired
        "CS-3": [(b"\x03" * 32, record("Reset", {"type": "Soft"}, charger="CS-3"))],  # speaks 2.0.1: refused
        "CP-9": [(b"\x09" * 32, record("Reset", {"type": "Soft"}, charger="CP-9"))],  # not connected here
    }
    submitted: list[bytes] = []
    delivery = CommandDelivery(connections, lambda c: pending.get(c, []), lambda: list(pending),  # type: ignore[arg-type]
                               submitted.append, KEY, ANCHOR, call_timeout_s=1.0)
    connections.live = {"CP-1": ("1.6", b"conn-1"), "CP-2": ("1.6", b"conn-2"), "CS-3": ("2.0.1", b"conn-3")}
    connections.answers = {"Reset": ChargerDisconnected("rebooted before answering")}

    async def run_for(seconds: float) -> None:
        with trio.move_on_after(seconds):
            await delivery.run()

    await run_for(0.3)
    assert [(c, a) for c, a, _ in connections.calls] == [("CP-1", "Reset")]  # lost: no outcome
    outcomes = [decode_outcome(p) for p in submitted]
    assert [(o.command_id[:1], o.kind) for o in outcomes] == [(b"\x03", "refused")]
    assert "speaks OCPP 2.0.1" in outcomes[0].body()["reason"]
    connections.answers = {}
    connections.live["CP-1"] = ("1.6", b"conn-1b")  # the charger reconnected
    await run_for(0.3)
    assert [(c, a) for c, a, _ in connections.calls] == [("CP-1", "Reset"), ("CP-1", "Reset")]
    assert [decode_outcome(p).kind for p in submitted] == ["refused", "result"]
    connections.live["CP-1"] = ("1.6", b"conn-1c")  # it resets: reconnects again; the outcome may not be committed
    await run_for(0.3)
    assert len(connections.calls) == 2  # answered once: never re-sent by this node


async def test_an_operator_delivers_only_to_chargers_whose_last_event_it_vouched() -> None:
    """A full node's delivery (`reports_for`): a charger connected here whose last applied event
    came through another node gets nothing yet (its outcome would be refused); once the ledger
    says this operator is its ingress, the command is sent."""
    connections = Connections()
    pending: dict[str, list[tuple[bytes, CommandRecord]]] = {"CP-1": [(b"\x01" * 32, record("Reset", {"type": "Soft"}))]}
    submitted: list[bytes] = []
    ingress = {"CP-1": "0x" + "ab" * 20}  # another operator, as far as the ledger knows
    mine = "0x" + KEY.address.hex()
    delivery = CommandDelivery(connections, lambda c: pending.get(c, []), lambda: list(pending),  # type: ignore[arg-type]
                               submitted.append, KEY, ANCHOR, call_timeout_s=1.0,
                               reports_for=lambda c: ingress.get(c) == mine)
    connections.live = {"CP-1": ("1.6", b"conn-1")}

    async def run_for(seconds: float) -> None:
        with trio.move_on_after(seconds):
            await delivery.run()

    await run_for(0.3)
    assert connections.calls == [] and submitted == []
    ingress["CP-1"] = mine  # its BootNotification through this node is applied
    await run_for(1.3)
    assert [(c, a) for c, a, _ in connections.calls] == [("CP-1", "Reset")]
    outcome = decode_outcome(submitted[0])
    assert outcome.kind == "result" and outcome.signer(ANCHOR) == KEY.address


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
@pytest.mark.parametrize("argv", [
    ["config", "get", "CP"], ["config", "get", "CP", "OCPPCommCtrlr/HeartbeatInterval"],
    ["config", "set", "CP", "OCPPCommCtrlr/HeartbeatInterval", "60"], ["reset", "CP"], ["reset", "CP", "--hard"],
    ["unlock", "CP", "1"], ["stop", "CP", "42"], ["trigger", "CP", "StatusNotification", "--connector", "1"],
    ["trigger", "CP", "BootNotification"], ["availability", "CP", "inoperative", "--connector", "2"],
    ["availability", "CP", "operative"], ["clear-cache", "CP"], ["data-transfer", "CP", "acme", "--data", "x"],
])
def test_every_cli_command_is_schema_valid_in_both_versions(version: str, argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    action, payload = call_of(args, version, 1_234)
    assert action in ACTIONS[version]
    command = ChargerCommand("CP", version, action, json.dumps(payload).encode(), 1, 2, b"")
    assert command_problem(command) is None, (action, payload)


def test_generic_send_reaches_every_supported_action_through_its_schema() -> None:
    """The schema-driven path: `devsen charger send` with a minimal valid payload per action."""
    minimal = {
        "1.6": {"GetDiagnostics": {"location": "ftp://logs.example/"}, "UpdateFirmware": {
            "location": "https://fw.example/1.bin", "retrieveDate": "2026-12-02T00:00:00Z"},
            "SendLocalList": {"listVersion": 1, "updateType": "Full"}, "GetLocalListVersion": {},
            "ReserveNow": {"connectorId": 1, "expiryDate": "2026-12-02T01:00:00Z", "idTag": "T", "reservationId": 1},
            "CancelReservation": {"reservationId": 1}, "ClearChargingProfile": {},
            "GetCompositeSchedule": {"connectorId": 1, "duration": 3600},
            "SetChargingProfile": {"connectorId": 1, "csChargingProfiles": {
                "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
                "chargingProfileKind": "Absolute", "chargingSchedule": {
                    "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}]}}}},
        "2.0.1": {"GetBaseReport": {"requestId": 1, "reportBase": "FullInventory"},
                  "GetLog": {"logType": "DiagnosticsLog", "requestId": 1, "log": {"remoteLocation": "ftp://l/"}},
                  "UpdateFirmware": {"requestId": 1, "firmware": {"location": "https://fw/1",
                                                                  "retrieveDateTime": "2026-12-02T00:00:00Z"}},
                  "SendLocalList": {"versionNumber": 1, "updateType": "Full"}, "GetLocalListVersion": {},
                  "ReserveNow": {"id": 1, "expiryDateTime": "2026-12-02T01:00:00Z",
                                 "idToken": {"idToken": "T", "type": "Central"}},
                  "CancelReservation": {"reservationId": 1}, "ClearChargingProfile": {},
                  "GetCompositeSchedule": {"duration": 3600, "evseId": 1},
                  "SetChargingProfile": {"evseId": 1, "chargingProfile": {
                      "id": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
                      "chargingProfileKind": "Absolute", "chargingSchedule": [{
                          "id": 1, "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}]}]}},
                  "RequestStopTransaction": {"transactionId": "tx-1"}},
    }
    for version, payloads in minimal.items():
        for action, payload in payloads.items():
            args = build_parser().parse_args(["send", "CP", action, json.dumps(payload)])
            assert call_of(args, version, 1) == (action, payload)
            command = ChargerCommand("CP", version, action, json.dumps(payload).encode(), 1, 2, b"")
            assert command_problem(command) is None, (version, action, command_problem(command))


def test_command_documents_read_as_sentences() -> None:
    base = {"command_id": "0x" + "ab" * 32, "action": "GetConfiguration", "ocpp_version": "1.6",
            "charger_id": "CP-42", "height": 7, "reported_by": "0x" + "11" * 20, "outcome_height": 8}
    text = format_command({**base, "status": "result", "outcome": {
        "configurationKey": [{"key": "HeartbeatInterval", "value": "300", "readonly": False}], "unknownKey": ["X"]}})
    assert "HeartbeatInterval = 300" in text and "X: unknown to the charger" in text and "block 8" in text
    assert "pending" in format_command({**base, "status": "pending"})
    assert "CALLERROR NotSupported" in format_command({**base, "status": "error",
                                                       "outcome": {"code": "NotSupported", "description": "no"}})
    assert "expired before the charger got it" in format_command({**base, "status": "expired"})
