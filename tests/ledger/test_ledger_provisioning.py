"""Provisioning (devsen/ledger/provisioning.py, issue 13): a boot gets the settings settlement and
failover need, skipped when the last known configuration has them, bounded for a hostile charger;
a paid transaction without an energy reading is an anomaly, not a silent zero."""

from __future__ import annotations

import json
import random
from typing import Any

from ledger_world import CHARGER, CHARGER_201, T0_MS, World, ev
from test_ledger_commands import ANCHOR, VALIDATOR, CommandWorld

from devsen.ledger.commands import ChargerConfig, ConfigEntry, sign_outcome
from devsen.ledger.kinds import NO_ENERGY_READING
from devsen.ledger.profiles import ProvisioningProfile
from devsen.ledger.provisioning import (
    ENERGY_MEASURAND,
    desired_settings,
    network_profile_setting,
    plan,
    priority_setting,
    satisfied,
)

BOOT16 = {"chargePointVendor": "V", "chargePointModel": "M"}
BOOT201 = {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}}
ENDPOINTS = ("ws://127.0.0.1:9001/ocpp", "ws://127.0.0.1:9002/ocpp", "ws://127.0.0.1:9003/ocpp")


def boot(version: str = "1.6") -> Any:
    if version == "1.6":
        return ev("BootNotification", BOOT16, message_id="boot")
    return ev("BootNotification", BOOT201, version="2.0.1", message_id="boot")


def test_every_desired_payload_is_valid_against_the_ocpp_schema() -> None:
    from ocpp.messages import get_validator

    profile = ProvisioningProfile(1, 30, ("Voltage", "SoC"), b"\x01" * 32, 5)
    for version in ("1.6", "2.0.1"):
        for chosen in (None, profile):
            extra = (priority_setting([1, 2, 3]),) if version == "2.0.1" else ()
            for setting in (*desired_settings(version, ENDPOINTS, chosen), *extra):
                get_validator(2, setting.action, version).validate(setting.payload)
    keys = [s.key for s in desired_settings("2.0.1", ENDPOINTS)]
    assert keys[-3:] == ["NetworkConnectionProfiles/1", "NetworkConnectionProfiles/2", "NetworkConnectionProfiles/3"]
    wss = network_profile_setting(2, "wss://node.example:443/ocpp").payload
    assert wss["connectionData"]["securityProfile"] == 2 and wss["configurationSlot"] == 2
    assert desired_settings("1.5") == ()


def test_a_1_6_boot_issues_the_three_settings_once_and_a_reboot_resends_nothing_accepted() -> None:
    world = CommandWorld()
    admitted = world.apply(events=(boot(),)).admitted
    payloads = [(a.record.action, json.loads(a.record.payload_json)) for a in admitted]
    assert payloads == [("ChangeConfiguration", {"key": "MeterValuesSampledData", "value": ENERGY_MEASURAND}),
                        ("ChangeConfiguration", {"key": "StopTxnSampledData", "value": ENERGY_MEASURAND}),
                        ("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "60"})]
    assert all(a.record.signer == b"" for a in admitted)
    statuses = ["Accepted", "RebootRequired", "Rejected"]
    outcomes = tuple(sign_outcome(VALIDATOR, ANCHOR, a.command_id, "result", {"status": s})
                     for a, s in zip(admitted, statuses, strict=True))
    assert world.apply(outcomes=outcomes).outcome_refusals == (None, None, None)
    config = world.ledger.commands.configuration(CHARGER)
    assert config is not None and {e.key for e in config.entries} == {"MeterValuesSampledData", "StopTxnSampledData"}
    # Reboot: the accepted ones are known, the rejected one is not re-sent either (same id, kept).
    assert world.apply(events=(boot(),)).admitted == ()
    assert world.ledger.commands.pending_for(CHARGER) == ()


def test_a_2_0_1_boot_sets_sampled_data_variables_skipping_known_ones() -> None:
    world = CommandWorld()
    world.ledger.commands.merge_config(CHARGER_201, "2.0.1", [
        ConfigEntry("SampledDataCtrlr/TxEndedMeasurands", f"Voltage,{ENERGY_MEASURAND}"),
        ConfigEntry("SampledDataCtrlr/TxUpdatedInterval", "30")], 1)
    admitted = world.apply(events=(boot("2.0.1"),)).admitted
    names = [json.loads(a.record.payload_json)["setVariableData"][0]["variable"]["name"] for a in admitted]
    assert names == ["TxStartedMeasurands", "TxUpdatedMeasurands"]
    outcome = sign_outcome(VALIDATOR, ANCHOR, admitted[0].command_id, "result", {"setVariableResult": [
        {"attributeStatus": "Accepted", "component": {"name": "SampledDataCtrlr"},
         "variable": {"name": "TxStartedMeasurands"}}]})
    world.apply(outcomes=(outcome,))
    known = {e.key: e.value for e in world.ledger.commands.configuration(CHARGER_201).entries}  # type: ignore[union-attr]
    assert known["SampledDataCtrlr/TxStartedMeasurands"] == ENERGY_MEASURAND


def test_hostile_charger_garbage_rejects_and_boot_loops_get_a_bounded_number_of_commands() -> None:
    world = CommandWorld()
    total = 0
    for round_ in range(50):
        outcome = world.apply(events=(boot(),))
        total += len(outcome.admitted)
        garbage = [sign_outcome(VALIDATOR, ANCHOR, c, "result", {"status": ["x"] * round_, "key": {"a": None}})
                   for c, _ in world.ledger.commands.pending_for(CHARGER)]
        assert all(r is None for r in world.apply(outcomes=tuple(garbage)).outcome_refusals)
    assert total == len(desired_settings("1.6"))
    assert world.ledger.commands.pending_for(CHARGER) == ()


def test_unregistered_charger_gets_no_provisioning_and_the_plan_is_deterministic() -> None:
    world = CommandWorld()
    assert world.apply(events=(ev("BootNotification", BOOT16, charger="CP-UNKNOWN", message_id="b"),)).admitted == ()
    a, b = CommandWorld(), CommandWorld()
    assert a.apply(events=(boot(),)).state_hash == b.apply(events=(boot(),)).state_hash


def test_satisfied_and_plan_are_total_on_garbage_values() -> None:
    rng = random.Random(13)
    for _ in range(500):
        value = "".join(rng.choice("0123456789,.-ab \u00e9") for _ in range(rng.randint(0, 12)))
        for setting in desired_settings("2.0.1", ENDPOINTS):
            satisfied(setting, value)
        config = ChargerConfig(1, rng.choice(["1.6", "2.0.1", "x"]), (ConfigEntry("MeterValueSampleInterval", value),), 1)
        plan(CHARGER, rng.choice(["1.6", "2.0.1", "", "9"]), config, ENDPOINTS)
    assert not satisfied(desired_settings("1.6")[2], "0") and satisfied(desired_settings("1.6")[2], "15")


def test_a_paid_transaction_ending_without_an_energy_reading_is_an_anomaly() -> None:
    from ledger_world import tx_event

    world = World()
    world.one(tx_event("Started", "T-1", tag="TAG-OK", at_ms=T0_MS))
    world.one(tx_event("Ended", "T-1", at_ms=T0_MS + 60_000, seq=1, triggerReason="EVDeparted"))
    kinds = [a.kind for a in world.ledger.anomalies() if a.charger_id == CHARGER_201]
    assert NO_ENERGY_READING in kinds


def test_the_provisioning_document_shows_desired_known_and_outcome() -> None:
    from devsen.ledger.provisioning import provisioning_document

    world = CommandWorld()
    (first, *_) = world.apply(events=(boot(),)).admitted
    world.apply(outcomes=(sign_outcome(VALIDATOR, ANCHOR, first.command_id, "result", {"status": "Accepted"}),))
    commands = world.ledger.commands

    def status_of(command_id: bytes) -> tuple[str, Any] | None:
        record = commands.get(command_id)
        return (record.status, json.loads(record.body_json) if record.body_json else None) if record else None

    doc = provisioning_document(CHARGER, "1.6", commands.configuration(CHARGER), world.ledger.provisioning, status_of)
    assert doc["profile"]["source"] == "default" and doc["network"] is None
    rows = {s["key"]: (s["desired"], s["known"], s["satisfied"], s["status"], s["outcome"]) for s in doc["settings"]}
    assert rows["MeterValuesSampledData"] == (ENERGY_MEASURAND, ENERGY_MEASURAND, True, "result", {"status": "Accepted"})
    assert rows["StopTxnSampledData"] == (ENERGY_MEASURAND, None, False, "pending", None)
    assert provisioning_document(CHARGER, None, None, world.ledger.provisioning, status_of)["settings"] == []


def test_the_demo_charger_answers_provisioning_and_hostile_shapes() -> None:
    from devsen.demo_charger import answer_command, demo_configuration

    config = demo_configuration()
    assert answer_command(config, "ChangeConfiguration", {"key": "StopTxnSampledData", "value": "x"}) == {
        "status": "Accepted"}
    reply = answer_command(config, "SetVariables", {"setVariableData": [
        {"component": {"name": "SampledDataCtrlr"}, "variable": {"name": "TxEndedMeasurands"}, "attributeValue": "E"},
        "garbage", {"component": 5}]})
    assert reply is not None and [r["attributeStatus"] for r in reply["setVariableResult"]] == [
        "Accepted", "Rejected", "Rejected"]
    assert config["SampledDataCtrlr/TxEndedMeasurands"] == ("E", False)
    assert answer_command(config, "SetNetworkProfile", {"configurationSlot": "1"}) == {"status": "Rejected"}
