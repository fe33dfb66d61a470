"""OCPP 2.0.1 business rules of the ledger: every action, valid and invalid input, schema-valid replies."""

from __future__ import annotations

from typing import Any

import pytest
from ledger_world import (
    ACCEPTED_201,
    CHARGER_201,
    ESCROW_201,
    T0_MS,
    TARIFF,
    World,
    ev,
    iso,
    tx_event,
)

from devsen.ledger import SettlementOrder


def kinds(world: World) -> list[str]:
    return [a.kind for a in world.ledger.anomalies()]


def v201(action: str, payload: dict[str, Any], **kwargs: Any) -> Any:
    return ev(action, payload, version="2.0.1", **kwargs)


BOOT = {"chargingStation": {"model": "Wallbox", "vendorName": "Acme"}, "reason": "PowerUp"}


def test_boot_accepted_and_rejected() -> None:
    world = World()
    reply = world.one(v201("BootNotification", BOOT))
    assert reply["status"] == "Accepted" and reply["interval"] == 300
    assert world.one(v201("BootNotification", BOOT, charger="OFF-1"))["status"] == "Rejected"
    record = world.ledger.device(CHARGER_201)
    assert record is not None and (record.vendor, record.model) == ("Acme", "Wallbox")


def test_heartbeat_and_status_notification() -> None:
    world = World()
    assert world.one(v201("Heartbeat", {})) == {"currentTime": iso(T0_MS)}
    status = {"timestamp": iso(T0_MS), "connectorStatus": "Occupied", "evseId": 2, "connectorId": 1}
    assert world.one(v201("StatusNotification", status)) == {}
    assert world.one(v201("StatusNotification", {**status, "evseId": 5})) == {}
    record = world.ledger.device(CHARGER_201)
    assert record is not None and [(c.connector, c.status) for c in record.connectors] == [("2/1", "Occupied")]
    assert kinds(world) == ["connector_out_of_range"]


@pytest.mark.parametrize(
    ("tag", "status"),
    [("TAG-OK", "Accepted"), ("NOBODY", "Invalid"), ("TAG-EXP", "Expired"), ("TAG-REV", "Blocked")],
)
def test_authorize_id_token_info(tag: str, status: str) -> None:
    world = World()
    reply = world.one(v201("Authorize", {"idToken": {"idToken": tag, "type": "ISO14443"}}))
    assert reply["idTokenInfo"]["status"] == status


def test_transaction_started_with_token_updated_ended_settles() -> None:
    world = World()
    assert world.one(tx_event("Started", "tx-a", tag="TAG-OK", wh=1_000.4)) == {"idTokenInfo": ACCEPTED_201}
    assert world.one(tx_event("Updated", "tx-a", seq=1, wh=2_500)) == {}
    world.block(advance_ms=20 * 60_000)
    outcome = world.block(tx_event("Ended", "tx-a", seq=2, wh=6_000.9, at_ms=T0_MS + 20 * 60_000 + 5_000))
    energy = 6_000 - 1_000  # readings rounded down to whole Wh
    amount = energy * TARIFF.price_per_kwh // 1000 + 20 * TARIFF.per_minute_fee
    assert outcome.settlements == (SettlementOrder(ESCROW_201, energy, amount),)
    assert world.ledger.open_sessions() == ()


def test_transaction_authorized_after_start_and_energy_counted_from_authorization() -> None:
    world = World()
    assert world.one(tx_event("Started", "tx-b", wh=500)) == {}
    session = world.ledger.open_sessions()[0]
    assert not session.bound and session.meter_last_wh == 500
    reply = world.one(tx_event("Updated", "tx-b", seq=1, tag="TAG-OK", wh=800))
    assert reply == {"idTokenInfo": ACCEPTED_201}
    # the same token again is still Accepted; a different token is answered from the registry
    assert world.one(tx_event("Updated", "tx-b", seq=2, tag="TAG-OK"))["idTokenInfo"]["status"] == "Accepted"
    assert world.one(tx_event("Updated", "tx-b", seq=3, tag="TAG-REV"))["idTokenInfo"]["status"] == "Blocked"
    world.one(v201("MeterValues", {"evseId": 1, "meterValue": [{"timestamp": iso(T0_MS), "sampledValue": [
        {"value": 1.5, "unitOfMeasure": {"unit": "kWh"}}]}]}))
    outcome = world.block(tx_event("Ended", "tx-b", seq=4, at_ms=T0_MS))
    assert outcome.settlements[0].energy_wh == 1_500 - 800


def test_no_prepayment_means_no_credit_and_no_settlement() -> None:
    world = World()
    reply = world.one(tx_event("Started", "tx-c", tag="TAG-NOPAY", wh=0))
    assert reply == {"idTokenInfo": {"status": "NoCredit"}}
    outcome = world.block(tx_event("Ended", "tx-c", seq=1, wh=9_000))
    assert outcome.settlements == ()
    assert kinds(world) == []


def test_invalid_transaction_events() -> None:
    world = World()
    world.one(tx_event("Started", "tx-d", tag="TAG-OK"))
    assert world.one(tx_event("Started", "tx-d", tag="TAG-OK")) == {"idTokenInfo": {"status": "Invalid"}}
    assert world.one(tx_event("Started", "tx-e", tag="TAG-OK")) == {"idTokenInfo": {"status": "ConcurrentTx"}}
    assert world.one(tx_event("Started", "tx-f", evse=7)) == {}
    assert world.one(tx_event("Started", "tx-g", evse=None)) == {}
    assert world.one(tx_event("Updated", "nope", tag="TAG-OK")) == {"idTokenInfo": {"status": "Invalid"}}
    world.one(tx_event("Ended", "tx-d", seq=1))
    assert world.one(tx_event("Ended", "tx-d", seq=2)) == {}
    assert kinds(world) == [
        "duplicate_transaction_id",
        "connector_busy",
        "connector_out_of_range",
        "connector_out_of_range",
        "unknown_transaction",
        "no_energy_reading",  # tx-d ended without a meter reading (issue 13: never a silent zero)
        "closed_transaction",
    ]


def test_transaction_ids_are_per_charger() -> None:
    world = World()
    world.one(tx_event("Started", "same", tag="TAG-OK"))
    other = ev("TransactionEvent", tx_event("Updated", "same").payload, version="2.0.1", charger="OFF-1")
    world.one(other)
    assert world.ledger.open_sessions()[0].charger_id == CHARGER_201
    assert kinds(world) == ["unknown_transaction"]  # another charger's id names nothing of OFF-1


def test_unregistered_station_cannot_start() -> None:
    world = World()
    event = ev("TransactionEvent", tx_event("Started", "x", tag="TAG-OK").payload, version="2.0.1", charger="NOPE")
    assert world.one(event) == {"idTokenInfo": {"status": "Invalid"}}
    assert world.ledger.open_sessions() == ()


NOTIFY_EVENT = {
    "generatedAt": iso(T0_MS),
    "seqNo": 0,
    "eventData": [{
        "eventId": 1, "timestamp": iso(T0_MS), "trigger": "Alerting", "actualValue": "true",
        "eventNotificationType": "HardWiredNotification", "component": {"name": "Door"}, "variable": {"name": "Open"},
    }],
}


@pytest.mark.parametrize(
    ("action", "payload", "field", "value"),
    [
        ("FirmwareStatusNotification", {"status": "Installed"}, "firmware_status", "Installed"),
        ("LogStatusNotification", {"status": "Uploading", "requestId": 1}, "log_status", "Uploading"),
        ("SecurityEventNotification", {"type": "ResetOrReboot", "timestamp": iso(T0_MS)}, "security_events", 1),
        ("NotifyReport", {"requestId": 1, "generatedAt": iso(T0_MS), "seqNo": 0}, "reports", 1),
        ("NotifyEvent", NOTIFY_EVENT, "notify_events", 1),
    ],
)
def test_notifications_recorded(action: str, payload: dict[str, Any], field: str, value: object) -> None:
    world = World()
    assert world.one(v201(action, payload)) == {}
    assert getattr(world.ledger.device(CHARGER_201), field) == value


def test_data_transfer_and_unhandled_and_malformed() -> None:
    world = World()
    assert world.one(v201("DataTransfer", {"vendorId": "org.x", "data": {"a": 1}})) == {"status": "UnknownVendorId"}
    outcome = world.block(
        v201("NotifyDisplayMessages", {"requestId": 1}, raw=True),
        v201("TransactionEvent", {"eventType": "Paused", "timestamp": iso(T0_MS),
                                  "transactionInfo": {"transactionId": "t"}}, raw=True),
        v201("MeterValues", {"evseId": 1, "meterValue": [{"sampledValue": [{"value": True}]}]}, raw=True),
    )
    assert [r.error_code for r in outcome.results] == ["NotSupported", "FormatViolation", "FormatViolation"]
