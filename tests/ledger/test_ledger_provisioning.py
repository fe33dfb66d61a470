"""Provisioning (devsen/ledger/provisioning.py, issue 13): a boot gets the settings settlement and
failover need, skipped when the last known configuration has them, bounded for a hostile charger;
a paid transaction without an energy reading is an anomaly, not a silent zero."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from ledger_world import CHARGER, CHARGER_201, T0_MS, World, ev
from test_ledger_commands import ANCHOR, DOMAIN, HOSTILE, MANAGER, VALIDATOR, CommandWorld, command

from devsen.ledger import Ledger, provisioning
from devsen.ledger.commands import ChargerConfig, ConfigEntry, command_problem, sign_outcome
from devsen.ledger.kinds import NO_ENERGY_READING
from devsen.ledger.profiles import ENERGY_MEASURAND, PROFILE_ACTION, ProvisioningProfile
from devsen.ledger.provisioning import (
    MAX_NETWORK_SLOTS,
    PRIORITY_KEY_201,
    desired_settings,
    endpoint_problem,
    network_profile_setting,
    network_slots,
    plan,
    priority_setting,
    provisioning_document,
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


# ---------------------------------------------------------------- network profiles from the chain

VALIDATORS = [bytes([0x10 * (i + 1)]) * 20 for i in range(6)]  # addresses, ascending


def with_endpoints(world: CommandWorld, urls: list[Any]) -> CommandWorld:
    """The chain's ValidatorSet publishes `urls` (by validator, in address order)."""
    world.chain.endpoints = list(zip(VALIDATORS, urls, strict=False))
    return world


def admitted_of(outcome: Any, action: str) -> list[Any]:
    return [a for a in outcome.admitted if a.record.action == action]


def answer(world: CommandWorld, admitted: list[Any], statuses: list[str]) -> Any:
    outcomes = tuple(sign_outcome(VALIDATOR, ANCHOR, a.command_id, "result", {"status": s})
                     for a, s in zip(admitted, statuses, strict=True))
    return world.apply(outcomes=outcomes)


def test_network_profiles_come_from_the_validator_endpoints_rotated_per_charger_priority_after_outcomes() -> None:
    world = with_endpoints(CommandWorld(), list(ENDPOINTS))
    booted = world.apply(events=(boot("2.0.1"),))
    expected = network_slots(CHARGER_201, list(ENDPOINTS))
    assert sorted(expected) == sorted(ENDPOINTS)  # all three, rotated
    profiles = admitted_of(booted, "SetNetworkProfile")
    assert [(json.loads(a.record.payload_json)["configurationSlot"],
             json.loads(a.record.payload_json)["connectionData"]["ocppCsmsUrl"]) for a in profiles] == [
        (1, expected[0]), (2, expected[1]), (3, expected[2])]
    assert not any("NetworkConfigurationPriority" in a.record.payload_json.decode() for a in booted.admitted)
    # Slots 1 and 3 accepted, 2 rejected: once all three are answered the priority names 1 and 3.
    first = answer(world, profiles[:2], ["Accepted", "Rejected"])
    assert first.admitted == ()  # slot 3 still waits
    last = answer(world, profiles[2:], ["Accepted"])
    (priority,) = last.admitted
    data = json.loads(priority.record.payload_json)["setVariableData"][0]
    assert (data["variable"]["name"], data["attributeValue"]) == ("NetworkConfigurationPriority", "1,3")
    world.apply(outcomes=(sign_outcome(VALIDATOR, ANCHOR, priority.command_id, "result", {"setVariableResult": [
        {"attributeStatus": "Accepted", "component": {"name": "OCPPCommCtrlr"},
         "variable": {"name": "NetworkConfigurationPriority"}}]}),))
    known = {e.key: e.value for e in world.ledger.commands.configuration(CHARGER_201).entries}  # type: ignore[union-attr]
    assert known[PRIORITY_KEY_201] == "1,3" and known["NetworkConnectionProfiles/3"] == expected[2]
    # A reboot re-sends nothing (set, or rejected once already).
    assert world.apply(events=(boot("2.0.1"),)).admitted == ()
    # Chargers spread their first choice over the nodes; each order is deterministic.
    firsts = {network_slots(f"CP-{i}", list(ENDPOINTS))[0] for i in range(40)}
    assert firsts == set(ENDPOINTS)
    again = with_endpoints(CommandWorld(), list(ENDPOINTS))
    assert again.apply(events=(boot("2.0.1"),)).state_hash == booted.state_hash


HOSTILE_ENDPOINTS: list[Any] = [
    "http://127.0.0.1:9000/ocpp", "ws://127.0.0.1:9000/oc\npp", "ws://127.0.0.1:9000/ocpp\x00", "ws:// spaced/ocpp",
    "ws://" + "a" * 300, "ws://nöde.example/ocpp", "", "ws://", "ws://[::1/ocpp", "ws://host:99999/ocpp",
    "ws://user:secret@host/ocpp", "ws://host/ocpp?x=1", "ws://host/ocpp#f", "ws://0.0.0.0:9000/ocpp",
    "WS://host/ocpp", "javascript:alert(1)", 42, None, b"ws://bytes/ocpp", "ws://host:0/ocpp",
]


def test_hostile_endpoints_are_skipped_with_a_reason_never_raised() -> None:
    for url in HOSTILE_ENDPOINTS:
        assert endpoint_problem(url) is not None, url
    for url in (*ENDPOINTS, "wss://node.example.org/ocpp", "ws://[::1]:9000/ocpp"):
        assert endpoint_problem(url) is None, url
    # Two good endpoints among hostile ones and a duplicate: only the two are named.
    good = ["ws://10.0.0.1:9000/ocpp", "wss://node.example.org/ocpp"]
    urls: list[Any] = [HOSTILE_ENDPOINTS[0], good[0], HOSTILE_ENDPOINTS[1], good[0], good[1], HOSTILE_ENDPOINTS[4]]
    world = with_endpoints(CommandWorld(), urls)
    booted = world.apply(events=(boot("2.0.1"),))
    named = [json.loads(a.record.payload_json)["connectionData"]["ocppCsmsUrl"]
             for a in admitted_of(booted, "SetNetworkProfile")]
    assert sorted(named) == sorted(good)
    skipped = {a: r.problem for a, r in world.ledger.provisioning.endpoints.items() if r.problem}
    assert skipped[VALIDATORS[3]] == "the URL of another validator"
    assert len(skipped) == 4 and all(r.url == "" for r in world.ledger.provisioning.endpoints.values() if r.problem)
    # Garbage shapes from a ChainView and random strings: apply stays total.
    rng = random.Random(7)
    for _ in range(200):
        text = "".join(rng.choice("ws:/[]@?#%.:0123456789abc\x00\u00e9 ") for _ in range(rng.randint(0, 30)))
        endpoint_problem(text)
    world.chain.endpoints = [("not a pair",), (b"short", "ws://x/ocpp"), (VALIDATORS[0], ["ws://x"])]  # type: ignore[list-item]
    world.apply(events=(boot("2.0.1"),))


def test_at_most_four_slots_and_a_set_change_is_state_kept_in_snapshots() -> None:
    urls = [f"ws://10.0.0.{i}:9000/ocpp" for i in range(1, 7)]
    world = with_endpoints(CommandWorld(), urls)
    booted = world.apply(events=(boot("2.0.1"),))
    assert len(admitted_of(booted, "SetNetworkProfile")) == MAX_NETWORK_SLOTS
    restored = Ledger.from_bytes(world.ledger.to_bytes())
    assert restored.state_hash() == world.ledger.state_hash()
    assert restored.provisioning.slots_for(CHARGER_201) == world.ledger.provisioning.slots_for(CHARGER_201)
    before = world.ledger.state_hash()
    world.chain.endpoints = world.chain.endpoints[:2]  # the set shrank on chain
    world.apply()
    assert world.ledger.state_hash() != before
    assert len(world.ledger.provisioning.slots_for(CHARGER_201)) == 2


# ---------------------------------------------------------------- the manager's profile override


def profile_command(payload: dict[str, Any], *, key: Any = None, nonce: int = 7, charger: str = CHARGER) -> Any:
    return command(PROFILE_ACTION, payload, key=key or MANAGER, nonce=nonce, charger=charger)


def test_the_manager_overrides_the_profile_and_the_charger_is_provisioned_at_once() -> None:
    world = CommandWorld()
    world.apply(events=(boot(),))  # the default profile's three settings, pending
    override = profile_command({"sample_interval_s": 30, "measurands": ["Voltage", "SoC"]})
    out = world.apply((override,))
    assert out.command_refusals == (None,)
    record = world.ledger.commands.get(override.digest(DOMAIN))
    assert record is not None and record.status == "applied"
    profile = world.ledger.provisioning.profile(CHARGER)
    assert profile is not None and (profile.interval_s, profile.measurands) == (30, ("Voltage", "SoC"))
    assert [json.loads(a.record.payload_json) for a in out.admitted] == [
        {"key": "MeterValuesSampledData", "value": f"{ENERGY_MEASURAND},Voltage,SoC"},
        {"key": "StopTxnSampledData", "value": f"{ENERGY_MEASURAND},Voltage,SoC"},
        {"key": "MeterValueSampleInterval", "value": "30"}]
    assert override.digest(DOMAIN) not in [a.command_id for a in out.admitted]  # never delivered
    late = sign_outcome(VALIDATOR, ANCHOR, override.digest(DOMAIN), "result", {"status": "Accepted"})
    assert "already has its outcome (applied)" in str(world.apply(outcomes=(late,)).outcome_refusals[0])
    # An exact interval: a charger sampling every 15 s is set to 30 (the default would leave it).
    chosen = world.ledger.provisioning.profile(CHARGER)
    assert not satisfied(desired_settings("1.6", (), chosen)[2], "15")
    # Back to the default.
    world.apply((profile_command({}, nonce=8),))
    assert world.ledger.provisioning.profile(CHARGER) is None
    restored = Ledger.from_bytes(world.ledger.to_bytes())
    assert restored.state_hash() == world.ledger.state_hash()


@pytest.mark.parametrize(("payload", "reason"), [
    ({"sample_interval_s": 0}, "sample_interval_s must be an integer of 10..3600"),
    ({"sample_interval_s": 10**9}, "sample_interval_s must be an integer of 10..3600"),
    ({"sample_interval_s": True}, "sample_interval_s must be an integer"),
    ({"sample_interval_s": "30"}, "sample_interval_s must be an integer"),
    ({"measurands": ["Voltage", "Unobtainium"]}, "measurand 'Unobtainium' is not one"),
    ({"measurands": ["RPM"]}, "measurand 'RPM' is not one"),  # 1.6 only
    ({"measurands": ["Voltage", "Voltage"]}, "measurands must be distinct"),
    ({"measurands": ["Voltage"] * 9}, "at most 8"),
    ({"measurands": "Voltage"}, "must be a list"),
    ({"interval": 30}, "unknown provisioning profile keys 'interval'"),
])
def test_silly_profiles_are_refused_with_the_reason(payload: dict[str, Any], reason: str) -> None:
    world = CommandWorld()
    bad = profile_command(payload)
    problem = command_problem(bad)
    assert problem is not None and reason in problem, problem
    assert reason in str(world.apply((bad,)).command_refusals[0])
    assert world.ledger.provisioning.profile(CHARGER) is None


def test_only_the_manager_may_override_and_the_profile_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    world = CommandWorld()
    hostile = profile_command({"sample_interval_s": 3600}, key=HOSTILE)
    refusal = world.apply((hostile,)).command_refusals[0]
    assert refusal is not None and "not by the device's manager" in refusal
    assert world.ledger.provisioning.profile(CHARGER) is None
    monkeypatch.setattr(provisioning, "MAX_PROFILES", 1)
    assert world.apply((profile_command({"sample_interval_s": 20}),)).command_refusals == (None,)
    full = world.apply((profile_command({"sample_interval_s": 20}, charger=CHARGER_201, nonce=9),)).command_refusals
    assert "provisioning profiles are kept for at most 1 devices" in str(full[0])
    assert world.apply((profile_command({"sample_interval_s": 40}, nonce=10),)).command_refusals == (None,)  # replace


def test_a_charger_rejecting_every_setting_has_its_outcomes_recorded_and_a_bounded_boot_loop() -> None:
    world = with_endpoints(CommandWorld(), list(ENDPOINTS))
    total = 0
    for _ in range(20):
        booted = world.apply(events=(boot("2.0.1"),))
        total += len(booted.admitted)
        pending = list(world.ledger.commands.pending_for(CHARGER_201))
        outcomes = tuple(sign_outcome(VALIDATOR, ANCHOR, c, "result", {"status": "Rejected"} if r.action
                                      == "SetNetworkProfile" else {"setVariableResult": [
                                          {"attributeStatus": "Rejected", "component": {"name": "SampledDataCtrlr"},
                                           "variable": {"name": "TxUpdatedInterval"}}]}) for c, r in pending)
        answered = world.apply(outcomes=outcomes)
        assert all(r is None for r in answered.outcome_refusals)
        total += len(answered.admitted)
    assert total == 4 + len(ENDPOINTS)  # each setting once; no priority (no slot accepted)
    commands = world.ledger.commands

    def status_of(command_id: bytes) -> tuple[str, Any] | None:
        record = commands.get(command_id)
        return (record.status, json.loads(record.body_json) if record.body_json else None) if record else None

    doc = provisioning_document(CHARGER_201, "2.0.1", commands.configuration(CHARGER_201), world.ledger.provisioning,
                                status_of)
    assert [s["status"] for s in doc["settings"]] == ["result"] * (4 + len(ENDPOINTS))
    assert not any(s["satisfied"] for s in doc["settings"])
    assert doc["settings"][-1]["outcome"] == {"status": "Rejected"}
    assert [s["url"] for s in doc["network"]["slots"]] == list(network_slots(CHARGER_201, list(ENDPOINTS)))


def test_the_cli_provisioning_subcommand_signs_a_valid_profile() -> None:
    from devsen.charger_cli import CliError, build_parser, call_of

    def payload_of(*argv: str) -> Any:
        action, payload = call_of(build_parser().parse_args(["provisioning", CHARGER, *argv]), "1.6", 1)
        assert action == PROFILE_ACTION
        return payload

    chosen = payload_of("--interval", "30", "--measurands", "Voltage, SoC")
    assert chosen == {"sample_interval_s": 30, "measurands": ["Voltage", "SoC"]}
    assert command_problem(profile_command(chosen)) is None
    assert payload_of("--default") == {}
    assert "sample_interval_s must be" in str(command_problem(profile_command(payload_of("--interval", "0"))))
    with pytest.raises(CliError):
        payload_of()


def test_a_setting_that_expired_undelivered_is_issued_again_at_the_next_boot_only_then() -> None:
    world = CommandWorld()
    first = world.apply(events=(boot(),)).admitted
    assert len(first) == 3
    world.now_ms += provisioning.PROVISION_TTL_MS  # the charger left before getting them
    world.apply()
    assert {world.ledger.commands.get(a.command_id).status for a in first} == {"expired"}  # type: ignore[union-attr]
    again = world.apply(events=(boot(),)).admitted
    assert [a.command_id for a in again] == [a.command_id for a in first]
    assert world.apply(events=(boot(),)).admitted == ()  # pending now: not twice
