"""Manager commands in the ledger (devsen/ledger/commands.py): admission, nonces, expiry,
outcomes recorded once, configuration as shared state, bounds, snapshots."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ledger_world import CHARGER, CHARGER_201, T0_MS, World, ev

from devsen.ledger import BlockContext, DeviceInfo, Ledger
from devsen.ledger.commands import (
    ACTIONS,
    MAX_COMMAND_TTL_MS,
    MAX_CONFIG_KEYS,
    MAX_PENDING_PER_CHARGER,
    MAX_VALUE_CHARS,
    NONCE_WINDOW,
    ChargerCommand,
    CommandError,
    NonceWindow,
    command_problem,
    decode_command,
    decode_outcome,
    sign_command,
    sign_outcome,
)
from primitives.eip712 import Domain, SigningKey

MANAGER = SigningKey(b"\x41" * 32)
HOSTILE = SigningKey(b"\x42" * 32)
VALIDATOR = SigningKey(b"\x43" * 32)
DOMAIN = Domain(31337, b"\xdf" * 20)
ANCHOR = Domain(31337, b"\xa0" * 20)
LATER = T0_MS + 600_000


class CommandWorld(World):
    """The ledger world with both chargers managed by MANAGER."""

    def __init__(self) -> None:
        super().__init__()
        for charger in (CHARGER, CHARGER_201):
            info = self.chain.devices[charger]
            self.chain.devices[charger] = DeviceInfo(info.device_id, "0x" + MANAGER.address.hex(),
                                                     info.connector_count, info.tariff)

    def apply(self, commands: tuple[ChargerCommand, ...] = (), outcomes: tuple[Any, ...] = (),
              events: tuple[Any, ...] = ()) -> Any:
        ctx = BlockContext(self.ledger.height + 1, self.now_ms, 100 + self.ledger.height, b"\xee" * 32)
        self.now_ms += 1_000
        return self.ledger.apply_block(
            ctx, self.chain, list(events), (),
            [(c, c.digest(DOMAIN), c.signer(DOMAIN)) for c in commands],
            [(o, o.signer(ANCHOR)) for o in outcomes])


def command(action: str = "Reset", payload: dict[str, Any] | None = None, *, key: SigningKey = MANAGER,
            nonce: int = 1, expires: int = LATER, charger: str = CHARGER, version: str = "1.6") -> ChargerCommand:
    return sign_command(key, DOMAIN, charger, version, action, payload if payload is not None else {"type": "Soft"},
                        nonce, expires)


def test_a_manager_command_is_admitted_and_its_first_outcome_recorded_once() -> None:
    world = CommandWorld()
    reset = command()
    outcome = world.apply((reset,))
    assert outcome.command_refusals == (None,)
    command_id = reset.digest(DOMAIN)
    assert [a.command_id for a in outcome.admitted] == [command_id]
    assert world.ledger.commands.get(command_id).status == "pending"  # type: ignore[union-attr]
    accepted = sign_outcome(VALIDATOR, ANCHOR, command_id, "result", {"status": "Accepted"})
    late = sign_outcome(VALIDATOR, ANCHOR, command_id, "timeout", {})
    result = world.apply(outcomes=(accepted, late))
    assert result.outcome_refusals[0] is None
    assert "already has its outcome (result)" in str(result.outcome_refusals[1])
    record = world.ledger.commands.get(command_id)
    assert record is not None and record.status == "result" and json.loads(record.body_json) == {"status": "Accepted"}
    assert record.reporter == VALIDATOR.address


def test_non_manager_signer_is_refused_and_changes_nothing() -> None:
    world = CommandWorld()
    before = world.ledger.state_hash()
    forged = command(key=HOSTILE)
    refusal = world.apply((forged,)).command_refusals[0]
    assert refusal is not None and "not by the device's manager" in refusal and MANAGER.address.hex() in refusal
    assert world.ledger.commands.get(forged.digest(DOMAIN)) is None
    assert not world.ledger.commands.in_use() and world.ledger.state_hash() != before  # only the height moved


def test_unregistered_or_inactive_charger_is_refused() -> None:
    world = CommandWorld()
    assert "not registered" in str(world.apply((command(charger="NOPE-1"),)).command_refusals[0])
    assert "not registered" in str(world.apply((command(charger="OFF-1", nonce=2),)).command_refusals[0])


def test_nonce_is_never_reused_and_a_window_allows_reordering() -> None:
    world = CommandWorld()
    assert world.apply((command(nonce=100),)).command_refusals == (None,)
    again = command("Reset", {"type": "Hard"}, nonce=100)  # another command, same nonce
    assert "nonce 100 already used" in str(world.apply((again,)).command_refusals[0])
    assert world.apply((command(nonce=90),)).command_refusals == (None,)  # below, within the window, unused
    assert "already used" in str(world.apply((command("Reset", {"type": "Hard"}, nonce=90),)).command_refusals[0])
    assert "already used" in str(world.apply((command(nonce=100 - NONCE_WINDOW - 1),)).command_refusals[0])
    # nonces are per device
    assert world.apply((command(nonce=100, charger=CHARGER_201, version="2.0.1",
                                payload={"type": "Immediate"}),)).command_refusals == (None,)


def test_nonce_window_arithmetic() -> None:
    window = NonceWindow(1, -1, 0)
    for n in (5, 3, 70, 6):
        assert not window.used(n)
        window = window.take(n)
        assert window.used(n)
    assert not window.used(7) and window.used(6) and window.used(5) and window.used(4)  # 5, 4 fell below the window
    assert window.used(70 - NONCE_WINDOW - 1)  # below the window: counts as used
    assert not window.used(69) and not window.used(71)


def test_expired_and_too_far_expiries_are_refused_and_pending_ones_expire() -> None:
    world = CommandWorld()
    assert "expired at" in str(world.apply((command(expires=world.now_ms),)).command_refusals[0])
    far = command(nonce=2, expires=world.now_ms + MAX_COMMAND_TTL_MS + 1)
    assert "expires more than" in str(world.apply((far,)).command_refusals[0])
    soon = command(nonce=3, expires=world.now_ms + 1_500)
    assert world.apply((soon,)).command_refusals == (None,)
    world.apply()
    world.apply()
    record = world.ledger.commands.get(soon.digest(DOMAIN))
    assert record is not None and record.status == "expired"
    late = sign_outcome(VALIDATOR, ANCHOR, soon.digest(DOMAIN), "result", {"status": "Accepted"})
    assert "already has its outcome (expired)" in str(world.apply(outcomes=(late,)).outcome_refusals[0])


@pytest.mark.parametrize(("version", "action", "payload", "where"), [
    ("1.6", "Reset", {"type": "Medium"}, "payload invalid for OCPP 1.6 Reset"),
    ("1.6", "ChangeConfiguration", {"key": "HeartbeatInterval"}, "payload invalid"),
    ("2.0.1", "SetVariables", {"setVariableData": []}, "payload invalid"),
    ("1.6", "GetVariables", {}, "is not a command of OCPP 1.6"),
    ("2.0.1", "BootNotification", {}, "is not a command of OCPP 2.0.1"),
])
def test_schema_invalid_or_unsupported_commands_are_refused(version: str, action: str, payload: dict[str, Any],
                                                          where: str) -> None:
    world = CommandWorld()
    charger = CHARGER if version == "1.6" else CHARGER_201
    try:
        bad = command(action, payload, version=version, charger=charger)
    except CommandError as exc:  # the signing side refuses an unsupported action at once
        assert where in str(exc)
        bad = ChargerCommand(charger, version, action, json.dumps(payload).encode(), 1, LATER, b"\x00" * 65)
        assert where in str(command_problem(bad))
        return
    assert where in str(command_problem(bad))
    assert where in str(world.apply((bad,)).command_refusals[0])


def test_malformed_payload_json_and_bytes_are_refused() -> None:
    for text in (b"[1]", b'{"type":"Soft","type":"Hard"}', b'{"a":NaN}', b"\xff"):
        bad = command(payload=text)  # type: ignore[arg-type]
        assert command_problem(bad) is not None
    good = command()
    assert decode_command(good.encode()) == good
    for data in (good.encode()[:-1], b"\xb2\x90", good.encode() + b"\x00", b""):
        with pytest.raises(CommandError):
            decode_command(data)
    outcome = sign_outcome(VALIDATOR, ANCHOR, b"\x01" * 32, "result", {"status": "Accepted"})
    assert decode_outcome(outcome.encode()) == outcome
    with pytest.raises(CommandError):
        decode_outcome(outcome.encode()[:-2])


def test_pending_commands_per_charger_are_bounded() -> None:
    world = CommandWorld()
    many = tuple(command(nonce=n) for n in range(1, MAX_PENDING_PER_CHARGER + 2))
    refusals = world.apply(many).command_refusals
    assert refusals[:-1] == (None,) * MAX_PENDING_PER_CHARGER
    assert "already wait for CP-1" in str(refusals[-1])


def test_every_supported_action_has_a_schema_in_its_version() -> None:
    from ocpp_adapter.schemas import known_actions

    for version, actions in ACTIONS.items():
        assert actions <= known_actions(version)


def _answer(world: CommandWorld, cmd: ChargerCommand, body: dict[str, Any]) -> None:
    world.apply((cmd,))
    outcome = sign_outcome(VALIDATOR, ANCHOR, cmd.digest(DOMAIN), "result", body)
    assert world.apply(outcomes=(outcome,)).outcome_refusals == (None,)


def test_configuration_from_get_change_and_reports_is_shared_state() -> None:
    world = CommandWorld()
    _answer(world, command("GetConfiguration", {}, nonce=1), {"configurationKey": [
        {"key": "HeartbeatInterval", "readonly": False, "value": "300"},
        {"key": "NumberOfConnectors", "readonly": True, "value": "2"}], "unknownKey": []})
    _answer(world, command("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "60"}, nonce=2),
            {"status": "Accepted"})
    _answer(world, command("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "9"}, nonce=3),
            {"status": "Rejected"})
    config = world.ledger.commands.configuration(CHARGER)
    assert config is not None
    assert [(e.key, e.value, e.readonly) for e in config.entries] == [
        ("HeartbeatInterval", "60", False), ("NumberOfConnectors", "2", True)]
    variable = {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}
    _answer(world, command("SetVariables", {"setVariableData": [{**variable, "attributeValue": "120"}]}, nonce=1,
                           charger=CHARGER_201, version="2.0.1"),
            {"setVariableResult": [{**variable, "attributeStatus": "Accepted"}]})
    world.apply(events=(ev("NotifyReport", {"requestId": 1, "generatedAt": "2026-09-21T10:00:00Z", "seqNo": 0,
                                            "reportData": [{"component": {"name": "EVSE", "evse": {"id": 1}},
                                                            "variable": {"name": "Power"},
                                                            "variableAttribute": [{"value": "22000",
                                                                                   "mutability": "ReadOnly"}]}]},
                           version="2.0.1"),))
    config = world.ledger.commands.configuration(CHARGER_201)
    assert config is not None
    assert [(e.key, e.value, e.readonly) for e in config.entries] == [
        ("EVSE@1/Power", "22000", True), ("OCPPCommCtrlr/HeartbeatInterval", "120", False)]


def test_configuration_is_bounded() -> None:
    world = CommandWorld()
    keys = [{"key": f"K{i:04d}", "readonly": False, "value": "v"} for i in range(MAX_CONFIG_KEYS + 5)]
    keys.append({"key": "Long", "readonly": False, "value": "x" * (MAX_VALUE_CHARS + 1)})
    body = {"configurationKey": keys[:200]}
    _answer(world, command("GetConfiguration", {}, nonce=1), body)
    _answer(world, command("GetConfiguration", {}, nonce=2), {"configurationKey": keys[200:]})
    config = world.ledger.commands.configuration(CHARGER)
    assert config is not None and len(config.entries) == MAX_CONFIG_KEYS and config.dropped == 6


def test_two_ledgers_agree_and_a_snapshot_restores_commands_exactly() -> None:
    worlds = [CommandWorld(), CommandWorld()]
    for world in worlds:
        _answer(world, command("GetConfiguration", {}, nonce=5), {"configurationKey": [
            {"key": "HeartbeatInterval", "readonly": False, "value": "300"}]})
        world.apply((command(nonce=6),))
    assert worlds[0].ledger.state_hash() == worlds[1].ledger.state_hash()
    ledger = worlds[0].ledger
    restored = Ledger.from_bytes(ledger.to_bytes())
    assert restored.state_hash() == ledger.state_hash()
    assert restored.commands.pending_for(CHARGER) == ledger.commands.pending_for(CHARGER)
    assert restored.commands.configuration(CHARGER) == ledger.commands.configuration(CHARGER)
    # and the restored ledger refuses the used nonce like the original
    world = worlds[1]
    world.ledger = restored
    assert "already used" in str(world.apply((command("Reset", {"type": "Hard"}, nonce=6),)).command_refusals[0])


def test_apply_is_total_over_hostile_outcomes() -> None:
    world = CommandWorld()
    unknown = sign_outcome(VALIDATOR, ANCHOR, b"\x09" * 32, "result", {"status": "Accepted"})
    assert "no command" in str(world.apply(outcomes=(unknown,)).outcome_refusals[0])
    cmd = command("GetConfiguration", {})
    world.apply((cmd,))
    weird = sign_outcome(VALIDATOR, ANCHOR, cmd.digest(DOMAIN), "result",
                         {"configurationKey": [1, {"key": 5}, {"key": "A", "value": ["x"]}, None]})
    assert world.apply(outcomes=(weird,)).outcome_refusals == (None,)
    config = world.ledger.commands.configuration(CHARGER)
    assert config is not None and [e.key for e in config.entries] == ["A"]


def test_a_charger_speaking_another_version_starts_a_fresh_configuration() -> None:
    world = CommandWorld()
    _answer(world, command("GetConfiguration", {}, nonce=1), {"configurationKey": [
        {"key": "HeartbeatInterval", "readonly": False, "value": "300"}]})
    variable = {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}
    _answer(world, command("GetVariables", {"getVariableData": [variable]}, nonce=2, version="2.0.1"),
            {"getVariableResult": [{**variable, "attributeStatus": "Accepted", "attributeValue": "60"}]})
    config = world.ledger.commands.configuration(CHARGER)
    assert config is not None and config.ocpp_version == "2.0.1"
    assert [(e.key, e.value) for e in config.entries] == [("OCPPCommCtrlr/HeartbeatInterval", "60")]
