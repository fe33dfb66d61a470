"""Remote starts decided by the ledger (devsen/ledger/remote_starts.py, issue 13).

An open escrow session waiting for its start becomes a ledger-originated command in the block
that carries an event of its charger, or that names the charger among the new session requests;
it is issued once, in the charger's OCPP version, expires with the request, and its outcome is
recorded once (the same in every ledger that applies the same blocks)."""

from __future__ import annotations

import json
from typing import Any

from ledger_world import CHARGER, CHARGER_201, DEPOSIT, T0_MS, World, ev, start16

from devsen.ledger import BlockContext, EscrowSession, Ledger, id_tag_hash, session_token
from devsen.ledger.commands import sign_outcome
from devsen.ledger.remote_starts import (
    REMOTE_START_WINDOW_MS,
    remote_start_call,
    remote_start_command_id,
    remote_start_expiry_ms,
    remote_start_status,
)
from ocpp_adapter.schemas import validate
from primitives.eip712 import Domain, SigningKey

VALIDATOR = SigningKey(b"\x43" * 32)
ANCHOR = Domain(31337, b"\xa0" * 20)
FRESH = b"\x0f" * 32  # a session opened just now on CP-1 connector 1
FRESH_201 = b"\x2f" * 32  # on CS-2 EVSE 2


def fresh_world() -> World:
    world = World()
    opened = T0_MS // 1000 - 10
    world.chain.sessions[FRESH] = EscrowSession(FRESH, "0x" + "dd" * 20, CHARGER, 1, id_tag_hash("TAG-OK"), DEPOSIT,
                                                opened)
    world.chain.sessions[FRESH_201] = EscrowSession(FRESH_201, "0x" + "dd" * 20, CHARGER_201, 2,
                                                    id_tag_hash("TAG-OK"), DEPOSIT, opened)
    return world


def heartbeat(version: str = "1.6", charger: str | None = None) -> Any:
    return ev("Heartbeat", {}, version=version, charger=charger)


def test_the_calls_are_schema_valid_in_both_versions() -> None:
    for version in ("1.6", "2.0.1"):
        action, payload = remote_start_call(version, FRESH, 2)
        validate(version, action, payload)
    assert remote_start_call("1.6", FRESH, 2) == ("RemoteStartTransaction",
                                                  {"connectorId": 2, "idTag": session_token(FRESH)})


def test_an_event_of_the_charger_issues_its_remote_start_once() -> None:
    world = fresh_world()
    outcome = world.block(heartbeat())
    (admitted,) = outcome.admitted
    assert admitted.command_id == remote_start_command_id(FRESH)
    record = admitted.record
    assert (record.action, record.charger_id, record.signer) == ("RemoteStartTransaction", CHARGER, b"")
    assert json.loads(record.payload_json) == {"connectorId": 1, "idTag": session_token(FRESH)}
    assert record.expires_at_ms == (T0_MS // 1000 - 10) * 1000 + REMOTE_START_WINDOW_MS
    assert world.block(heartbeat()).admitted == ()  # issued once
    assert [c for c, _ in world.ledger.commands.pending_for(CHARGER)] == [remote_start_command_id(FRESH)]


def test_sessions_that_wait_for_no_start_get_none() -> None:
    world = World()  # its sessions were opened an hour ago: past the window
    assert world.block(heartbeat(), heartbeat("2.0.1")).admitted == ()
    world = fresh_world()
    reply = world.one(start16(connector=1, tag=session_token(FRESH)))  # started before any remote start
    assert reply["idTagInfo"]["status"] == "Accepted"
    assert all(a.command_id != remote_start_command_id(FRESH) for a in world.block(heartbeat()).admitted)


def test_a_new_request_at_a_known_idle_charger_is_issued_without_an_event_in_its_version() -> None:
    world = fresh_world()
    world.chain.sessions.pop(FRESH_201)
    world.block(heartbeat("2.0.1"))  # CS-2 seen earlier (2.0.1), idle since
    opened = world.now_ms // 1000
    world.chain.sessions[FRESH_201] = EscrowSession(FRESH_201, "0x" + "dd" * 20, CHARGER_201, 2,
                                                    id_tag_hash("TAG-OK"), DEPOSIT, opened)
    assert world.block().admitted == ()  # not requested in this block's Ethereum range, no event
    world.chain.requested = (CHARGER_201, "NEVER-SEEN", "OFF-1", "x" * 200)
    (admitted,) = world.block().admitted
    record = admitted.record
    assert (record.action, record.ocpp_version) == ("RequestStartTransaction", "2.0.1")
    payload = json.loads(record.payload_json)
    assert payload["idToken"] == {"idToken": session_token(FRESH_201), "type": "Central"} and payload["evseId"] == 2


def test_a_charger_never_seen_gets_its_remote_start_when_it_first_connects() -> None:
    world = fresh_world()
    world.chain.requested = (CHARGER,)
    assert world.block().admitted == ()  # no OCPP version known yet
    boot = ev("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
    # the boot also gets the provisioning settings (provisioning.py); one remote start among them
    (admitted,) = [a for a in world.block(boot).admitted if a.record.action == "RemoteStartTransaction"]
    assert admitted.command_id == remote_start_command_id(FRESH)


def test_the_outcome_is_recorded_once_and_identically_and_the_driver_sees_it() -> None:
    worlds = [fresh_world(), fresh_world()]
    command_id = remote_start_command_id(FRESH)
    rejected = sign_outcome(VALIDATOR, ANCHOR, command_id, "result", {"status": "Rejected"})
    forged_second = sign_outcome(VALIDATOR, ANCHOR, command_id, "result", {"status": "Accepted"})
    unknown = sign_outcome(VALIDATOR, ANCHOR, b"\x99" * 32, "result", {"status": "Accepted"})
    hashes = []
    events = [heartbeat(), heartbeat()]
    for world in worlds:
        world.block(events[0])
        ctx = BlockContext(world.ledger.height + 1, world.now_ms, 100 + world.ledger.height, b"\xee" * 32)
        outcome = world.ledger.apply_block(ctx, world.chain, [], outcomes=[(rejected, VALIDATOR.address),
                                                                            (forged_second, VALIDATOR.address),
                                                                            (unknown, VALIDATOR.address)])
        assert outcome.outcome_refusals[0] is None
        assert "already has its outcome" in str(outcome.outcome_refusals[1])
        assert "no command" in str(outcome.outcome_refusals[2])
        record = world.ledger.commands.get(command_id)
        assert record is not None and record.status == "result"
        assert remote_start_status(record.status, json.loads(record.body_json))["state"] == "rejected"
        hashes.append(outcome.state_hash)
        world.now_ms += 1000
        assert world.block(events[1]).admitted == ()  # a rejected request is not issued again
    assert hashes[0] == hashes[1]


def test_an_unanswered_request_expires_with_its_window() -> None:
    world = fresh_world()
    world.block(heartbeat())
    session = world.chain.sessions[FRESH]
    world.now_ms = remote_start_expiry_ms(session) + 1
    world.block()
    record = world.ledger.commands.get(remote_start_command_id(FRESH))
    assert record is not None and record.status == "expired"
    assert remote_start_status("expired", None)["state"] == "expired"


def test_the_refund_deadline_bounds_the_request() -> None:
    opened = T0_MS // 1000
    session = EscrowSession(FRESH, "0x" + "dd" * 20, CHARGER, 1, id_tag_hash("TAG-OK"), DEPOSIT, opened,
                            refund_at_s=opened + 60)
    assert remote_start_expiry_ms(session) == (opened + 60) * 1000


def test_driver_states_for_every_outcome_kind() -> None:
    assert remote_start_status("pending", None)["state"] == "waiting"
    assert remote_start_status("result", {"status": "Accepted"})["state"] == "accepted"
    error = remote_start_status("error", {"code": "NotSupported", "description": "no"})
    assert error == {"state": "failed", "detail": "the charger answered CALLERROR NotSupported: no"}
    assert remote_start_status("timeout", {})["state"] == "failed"
    assert "2.0.1" in remote_start_status("refused", {"reason": "the charger speaks OCPP 2.0.1"})["detail"]


def test_the_charger_version_survives_a_snapshot() -> None:
    world = fresh_world()
    world.block(heartbeat("2.0.1"))
    restored = Ledger.from_bytes(world.ledger.to_bytes())
    record = restored.device(CHARGER_201)
    assert record is not None and record.ocpp_version == "2.0.1"
    assert restored.state_hash() == world.ledger.state_hash()
    assert restored.commands.get(remote_start_command_id(FRESH_201)) is not None


def test_hostile_a_forged_outcome_of_a_remote_start_is_refused_before_any_block() -> None:
    """Only a validator may report what a charger answered (devsen/command_gate.py): an outcome
    "Accepted" signed by anyone else, or signed under another domain, never enters a block."""
    from devsen.command_gate import CommandGate

    gate = CommandGate(Domain(31337, b"\xdf" * 20), ANCHOR)
    command_id = remote_start_command_id(FRESH)
    hostile = SigningKey(b"\x66" * 32)
    validators = (VALIDATOR.address,)
    assert gate.outcome_check(sign_outcome(VALIDATOR, ANCHOR, command_id, "result", {"status": "Rejected"}),
                              validators) is None
    forged = sign_outcome(hostile, ANCHOR, command_id, "result", {"status": "Accepted"})
    assert "neither a validator nor a registered operator" in str(gate.outcome_check(forged, validators))
    other_domain = sign_outcome(VALIDATOR, Domain(1, b"\xa0" * 20), command_id, "result", {"status": "Accepted"})
    assert "neither a validator nor a registered operator" in str(gate.outcome_check(other_domain, validators))
