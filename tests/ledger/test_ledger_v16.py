"""OCPP 1.6 business rules of the ledger: every action, valid and invalid input, schema-valid replies."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from ledger_world import (
    ACCEPTED_16,
    ACCEPTED_201,
    CHARGER,
    DEPOSIT,
    ESCROW_1,
    T0_MS,
    TARIFF,
    World,
    ev,
    iso,
    start16,
    stop16,
    tx_event,
)

from devsen.ledger import (
    BlockContext,
    BlockRejected,
    IdTagInfo,
    LedgerParams,
    SettlementOrder,
    id_tag_hash,
)


def kinds(world: World) -> list[str]:
    return [a.kind for a in world.ledger.anomalies()]


def test_boot_accepted_for_registered_device_with_configured_interval() -> None:
    world = World(LedgerParams(heartbeat_interval_s=120))
    reply = world.one(ev("BootNotification", {"chargePointVendor": "Acme", "chargePointModel": "X1"}))
    assert reply == {"status": "Accepted", "currentTime": "2026-09-21T14:13:20.000Z", "interval": 120}
    record = world.ledger.device(CHARGER)
    assert record is not None and (record.vendor, record.model, record.boot_status) == ("Acme", "X1", "Accepted")


@pytest.mark.parametrize("charger", ["UNKNOWN-7", "OFF-1"])
def test_boot_rejected_for_unregistered_or_inactive_device(charger: str) -> None:
    world = World()
    payload = {"chargePointVendor": "Acme", "chargePointModel": "X1"}
    reply = world.one(ev("BootNotification", payload, charger=charger))
    assert reply["status"] == "Rejected" and reply["interval"] == 60
    assert kinds(world) == ["unregistered_device"]
    assert world.ledger.device(charger) is None


def test_heartbeat_answers_block_time() -> None:
    world = World()
    world.block(advance_ms=1_234)
    reply = world.one(ev("Heartbeat", {}))
    assert reply == {"currentTime": iso(T0_MS + 1_234)}
    record = world.ledger.device(CHARGER)
    assert record is not None and record.last_heartbeat_ms == T0_MS + 1_234


def test_status_notification_kept_per_connector_and_range_checked() -> None:
    world = World()
    world.one(ev("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging"}))
    world.one(ev("StatusNotification", {"connectorId": 0, "errorCode": "NoError", "status": "Available"}))
    world.one(ev("StatusNotification", {"connectorId": 1, "errorCode": "GroundFailure", "status": "Faulted"}))
    world.one(ev("StatusNotification", {"connectorId": 9, "errorCode": "NoError", "status": "Available"}))
    record = world.ledger.device(CHARGER)
    assert record is not None
    assert [(c.connector, c.status, c.error_code) for c in record.connectors] == [
        ("0", "Available", "NoError"),
        ("1", "Faulted", "GroundFailure"),
    ]
    assert kinds(world) == ["connector_out_of_range"]


@pytest.mark.parametrize(
    ("tag", "status"),
    [("TAG-OK", "Accepted"), ("NOBODY", "Invalid"), ("TAG-EXP", "Expired"), ("TAG-REV", "Blocked")],
)
def test_authorize_status_from_chain_registry(tag: str, status: str) -> None:
    world = World()
    assert world.one(ev("Authorize", {"idTag": tag}))["idTagInfo"]["status"] == status


def test_authorize_reports_expiry_and_refuses_unregistered_device() -> None:
    world = World()
    info = world.one(ev("Authorize", {"idTag": "TAG-LATER"}))["idTagInfo"]
    assert info == {"status": "Accepted", "expiryDate": iso(T0_MS + 86_400_000)}
    assert world.one(ev("Authorize", {"idTag": "TAG-OK"}, charger="NOPE"))["idTagInfo"]["status"] == "Invalid"


def test_full_session_settles_energy_and_minutes() -> None:
    world = World()
    reply = world.one(start16(meter=1_000))
    assert reply == {"idTagInfo": ACCEPTED_16, "transactionId": 1}
    world.one(ev("MeterValues", {"connectorId": 1, "transactionId": 1, "meterValue": [
        {"timestamp": iso(T0_MS + 60_000), "sampledValue": [{"value": "4.5", "unit": "kWh"}]}]}))
    assert world.ledger.open_sessions()[0].meter_last_wh == 4_500
    world.block(advance_ms=30 * 60_000)  # the stop is committed half an hour later
    outcome = world.block(stop16(1, 11_999, T0_MS + 30 * 60_000 + 59_000))
    energy = 10_999
    amount = energy * TARIFF.price_per_kwh // 1000 + 30 * TARIFF.per_minute_fee
    assert outcome.settlements == (SettlementOrder(ESCROW_1, energy, amount),)
    assert outcome.results[0].reply == {}
    assert world.ledger.pending_settlements() == outcome.settlements
    assert world.ledger.open_sessions() == ()
    world.chain.close_escrow_session(ESCROW_1)  # the Escrow contract paid it
    world.block()
    assert world.ledger.pending_settlements() == ()


def test_amount_capped_at_deposit() -> None:
    world = World()
    world.one(start16(meter=0))
    outcome = world.block(stop16(1, 300_000, T0_MS + 1_000))
    assert outcome.settlements[0].amount == DEPOSIT
    assert outcome.settlements[0].energy_wh == 300_000


def test_start_rejections_and_transaction_ids_stay_unique() -> None:
    world = World()
    replies = [
        world.one(start16(connector=1)),  # accepted: escrow 1
        world.one(start16(connector=1)),  # connector busy
        world.one(start16(connector=2, tag="TAG-NOPAY")),  # no prepayment
        world.one(start16(connector=2, tag="NOBODY")),
        world.one(start16(connector=2, tag="TAG-EXP")),
        world.one(start16(connector=3)),  # out of range
        world.one(start16(connector=2, meter=-5)),
        world.one(start16(connector=2, tag="TAG-OK")),  # accepted: escrow 2
    ]
    assert [r["transactionId"] for r in replies] == list(range(1, 9))
    assert [r["idTagInfo"]["status"] for r in replies] == [
        "Accepted", "ConcurrentTx", "Blocked", "Invalid", "Expired", "Invalid", "Invalid", "Accepted",
    ]
    assert kinds(world) == ["connector_busy", "connector_out_of_range", "bad_meter"]
    assert {s.tx_ref for s in world.ledger.open_sessions()} == {"1", "8"}


def test_stop_of_unknown_closed_and_rejected_transactions() -> None:
    world = World()
    world.one(start16())
    world.one(start16(tag="TAG-NOPAY", connector=2))  # tx 2, rejected
    assert world.block(stop16(1, 2_000, T0_MS)).settlements
    assert world.one(stop16(1, 3_000, T0_MS)) == {}  # closed already
    assert world.one(stop16(2, 3_000, T0_MS)) == {}  # rejected start: a normal stop, no anomaly
    reply = world.one(stop16(77, 3_000, T0_MS, idTag="TAG-OK"))
    assert reply == {"idTagInfo": ACCEPTED_16}
    assert kinds(world) == ["closed_transaction", "unknown_transaction"]


def test_negative_energy_settles_time_only_and_is_recorded() -> None:
    world = World()
    world.one(start16(meter=5_000))
    world.block(advance_ms=10 * 60_000)
    outcome = world.block(stop16(1, 4_000, T0_MS + 10 * 60_000, reason="Local"))
    assert outcome.settlements[0].energy_wh == 0
    assert outcome.settlements[0].amount == 10 * TARIFF.per_minute_fee
    assert kinds(world) == ["negative_energy"]


def test_minutes_never_exceed_the_span_between_escrow_and_commit() -> None:
    world = World()
    world.one(start16(at_ms=T0_MS - 10 * 3_600_000))  # claims a start before the escrow opened
    outcome = world.block(stop16(1, 1_000, T0_MS + 10 * 3_600_000))  # and a stop in the future
    # escrow opened one hour before T0; the stop block is 1 s after T0
    assert outcome.settlements[0].amount == 60 * TARIFF.per_minute_fee


def test_escrow_refunded_while_charging_yields_no_settlement() -> None:
    world = World()
    world.one(start16())
    world.chain.close_escrow_session(ESCROW_1)
    outcome = world.block(stop16(1, 9_000, T0_MS))
    assert outcome.settlements == ()
    assert kinds(world) == ["escrow_closed"]


def test_meter_values_outside_a_transaction_and_going_backwards() -> None:
    world = World()
    sample = {"timestamp": iso(T0_MS), "sampledValue": [{"value": "100"}]}
    assert world.one(ev("MeterValues", {"connectorId": 0, "meterValue": [sample]})) == {}
    world.one(start16(meter=1_000))
    world.one(ev("MeterValues", {"connectorId": 1, "meterValue": [sample]}))  # 100 < 1000
    world.one(ev("MeterValues", {"connectorId": 1, "transactionId": 42, "meterValue": [sample]}))
    assert kinds(world) == ["meter_backwards", "unknown_transaction"]


@pytest.mark.parametrize(
    ("action", "payload", "field", "value"),
    [
        ("FirmwareStatusNotification", {"status": "Installed"}, "firmware_status", "Installed"),
        ("DiagnosticsStatusNotification", {"status": "Uploaded"}, "diagnostics_status", "Uploaded"),
        ("SecurityEventNotification", {"type": "TamperDetectionActivated", "timestamp": iso(T0_MS)},
         "security_events", 1),
        ("LogStatusNotification", {"status": "Uploaded", "requestId": 3}, "log_status", "Uploaded"),
        ("SignedFirmwareStatusNotification", {"status": "SignatureVerified", "requestId": 1},
         "firmware_status", "SignatureVerified"),
    ],
)
def test_notifications_recorded_with_empty_reply(action: str, payload: dict[str, Any], field: str, value: object) -> None:
    world = World()
    assert world.one(ev(action, payload)) == {}
    assert getattr(world.ledger.device(CHARGER), field) == value


def test_data_transfer_unknown_vendor_unless_configured() -> None:
    assert World().one(ev("DataTransfer", {"vendorId": "com.acme"})) == {"status": "UnknownVendorId"}
    world = World(LedgerParams(data_transfer_vendor_ids=("com.acme",)))
    assert world.one(ev("DataTransfer", {"vendorId": "com.acme", "data": "x"})) == {"status": "Accepted"}
    record = world.ledger.device(CHARGER)
    assert record is not None and record.data_transfers == 1


def test_unhandled_action_and_malformed_payload_get_error_codes() -> None:
    world = World()
    outcome = world.block(
        ev("Reset", {"type": "Hard"}, raw=True),
        ev("StartTransaction", {"connectorId": "one", "idTag": "TAG-OK"}, raw=True),
        ev("MeterValues", {"connectorId": 1, "meterValue": [{"sampledValue": [{"value": "1e9999"}]}]}, raw=True),
    )
    assert [(r.reply, r.error_code) for r in outcome.results] == [
        (None, "NotSupported"),
        (None, "FormationViolation"),
        (None, "FormationViolation"),
    ]
    assert kinds(world) == ["malformed", "malformed"]
    assert world.ledger.counters()["next_transaction_id"] == 1


def test_retry_of_same_message_gets_same_reply_and_is_not_applied_twice() -> None:
    world = World()
    first = start16()
    retry_elsewhere = ev(first.action, first.payload, message_id=first.message_id, ingress="0xb2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2")
    outcome = world.block(first, retry_elsewhere)
    a, b = outcome.results
    assert (a.duplicate, b.duplicate) == (False, True)
    assert a.reply == b.reply and a.dedup_key == b.dedup_key and a.event_id != b.event_id
    hash_before = world.ledger.state_hash()
    later = world.block(first).results[0]
    assert later.duplicate and later.reply == a.reply
    assert world.ledger.counters()["next_transaction_id"] == 2
    assert world.ledger.reply_for(first.dedup_key) == (a.reply, None)
    assert world.ledger.state_hash() != hash_before  # height and duplicate counter moved, nothing else
    assert len(world.ledger.open_sessions()) == 1


def test_reply_history_is_kept_by_height_window_not_entry_count() -> None:
    """A flood of messages in later blocks cannot push out a reply inside the window."""
    world = World(LedgerParams(reply_window_heights=3))
    first = ev("Heartbeat", {})
    world.block(first)  # height 1
    flood = [ev("Heartbeat", {}) for _ in range(500)]
    world.block(*flood)  # height 2: 500 entries after ours
    assert world.ledger.reply_for(first.dedup_key) is not None, "500 later entries pushed nothing out"
    again = world.block(first).results[0]  # height 3: heights 1..3 are the window
    assert again.duplicate
    world.block()  # height 4: height 1 falls out of the window
    assert world.ledger.reply_for(first.dedup_key) is None
    assert world.ledger.reply_for(flood[0].dedup_key) is not None


def test_blocks_must_follow_in_order() -> None:
    world = World()
    world.block()
    chain = world.chain
    with pytest.raises(BlockRejected):
        world.ledger.apply_block(BlockContext(5, T0_MS + 10_000, 200, b"\x00" * 32), chain, [])
    with pytest.raises(BlockRejected):
        world.ledger.apply_block(BlockContext(2, T0_MS - 1, 200, b"\x00" * 32), chain, [])
    small = World(LedgerParams(max_block_events=1))
    assert small.ledger.check_block(BlockContext(1, T0_MS, 1, b"\x00" * 32), [start16(), start16()])


def test_stale_session_is_settled_when_its_connector_is_needed() -> None:
    world = World(LedgerParams(stale_session_ms=3_600_000))
    world.one(start16(meter=0))
    world.one(ev("MeterValues", {"connectorId": 1, "transactionId": 1, "meterValue": [
        {"timestamp": iso(T0_MS), "sampledValue": [{"value": "2000"}]}]}))
    world.block(advance_ms=30 * 60_000)
    assert world.one(start16(meter=3_000))["idTagInfo"]["status"] == "ConcurrentTx"  # not stale yet
    world.block(advance_ms=3_600_000)
    world.chain.sessions[b"\x09" * 32] = replace(world.chain.sessions[ESCROW_1], session_id=b"\x09" * 32)
    outcome = world.block(start16(meter=3_000))
    assert outcome.results[0].reply == {"idTagInfo": ACCEPTED_16, "transactionId": 3}
    assert outcome.settlements == (SettlementOrder(ESCROW_1, 2_000, 2 * TARIFF.price_per_kwh),)
    assert kinds(world) == ["connector_busy", "stale_session"]


def test_transaction_ids_of_both_versions_on_one_charger_never_collide() -> None:
    world = World()
    started = ev("TransactionEvent", tx_event("Started", "1", tag="TAG-OK").payload, version="2.0.1", charger=CHARGER)
    assert world.one(started) == {"idTokenInfo": ACCEPTED_201}  # escrow of connector 1
    reply = world.one(start16(connector=2))  # the ledger's counter also gives 1
    assert reply == {"idTagInfo": {"status": "Invalid"}, "transactionId": 1}
    assert world.one(stop16(1, 5_000, T0_MS)) == {}  # a 1.6 stop does not close the 2.0.1 session
    assert [s.ocpp_version for s in world.ledger.open_sessions()] == ["2.0.1"]
    assert kinds(world) == ["duplicate_transaction_id", "unknown_transaction"]


def test_an_escrow_session_pays_for_one_transaction_only() -> None:
    world = World()
    world.chain.sessions[b"\x00" * 32] = replace(world.chain.sessions[ESCROW_1], session_id=b"\x00" * 32,
                                                 opened_at_s=T0_MS // 1000 - 60)
    world.one(start16())  # binds the oldest open escrow of connector 1: ESCROW_1
    assert world.ledger.open_sessions()[0].escrow_session_id == ESCROW_1
    world.block(stop16(1, 2_000, T0_MS))
    world.one(start16())  # ESCROW_1 is settled (pending on chain): the newer one is bound
    assert world.ledger.open_sessions()[0].escrow_session_id == b"\x00" * 32
    world.block(stop16(2, 2_000, T0_MS))
    assert world.one(start16())["idTagInfo"]["status"] == "Blocked"  # nothing prepaid is left
    assert {o.session_id for o in world.ledger.pending_settlements()} == {ESCROW_1, b"\x00" * 32}


def test_capacity_limits_refuse_new_transactions() -> None:
    world = World(LedgerParams(max_open_sessions=1))
    world.one(start16(connector=1))
    assert world.one(start16(connector=2))["idTagInfo"]["status"] == "Blocked"
    world.block(stop16(1, 1_000, T0_MS))
    backlog = World(LedgerParams(max_pending_settlements=1))
    backlog.one(start16(connector=1))
    backlog.block(stop16(1, 1_000, T0_MS))
    assert backlog.one(start16(connector=2))["idTagInfo"]["status"] == "Blocked"
    backlog.chain.close_escrow_session(ESCROW_1)  # paid on chain: the backlog drains
    backlog.block()
    assert backlog.one(start16(connector=2))["idTagInfo"]["status"] == "Accepted"
    assert kinds(world) == kinds(backlog) == ["capacity"]


def test_far_future_expiry_is_not_reported() -> None:
    world = World()
    world.chain.id_tags[id_tag_hash("TAG-OK")] = IdTagInfo("0x" + "dd" * 20, expiry_s=2**64 - 1)
    assert world.one(ev("Authorize", {"idTag": "TAG-OK"})) == {"idTagInfo": ACCEPTED_16}
    with pytest.raises(ValueError):
        BlockContext(1, 10**15, 1, b"\x00" * 32)
