"""Reservations from the chain (issue 13): the ledger holds a reserved connector for its driver's
idTag; a start by anyone else is refused ("Blocked"), the holder's start consumes it, expiry releases."""

from __future__ import annotations

import json
from typing import Any

from ledger_world import (
    CHARGER,
    CHARGER_201,
    DEPOSIT,
    T0_MS,
    World,
    ev,
    start16,
    stop16,
    tx_event,
)

from devsen.ledger import (
    ChainReservation,
    EscrowSession,
    IdTagInfo,
    Ledger,
    id_tag_hash,
    session_token,
)
from devsen.ledger.ledger import SNAPSHOT_VERSION
from devsen.ledger.reservations import reservation_token
from primitives.hashing import id_tag_hash as hash_tag

HOLDER = "TAG-RES"
HOLDER_ESCROW = b"\x0a" * 32
HOLDER_ESCROW_201 = b"\x0b" * 32
EXPIRES_S = T0_MS // 1000 + 900  # 15 minutes after the first block


def reserved_world(connector: int = 1, charger: str = CHARGER, expires_s: int = EXPIRES_S) -> World:
    """CP-1 (or CS-2) with `connector` reserved for TAG-RES, which also has an escrow session there."""
    world = World()
    world.chain.id_tags[hash_tag(HOLDER)] = IdTagInfo("0x" + "ee" * 20)
    opened = T0_MS // 1000 - 60
    escrow = HOLDER_ESCROW if charger == CHARGER else HOLDER_ESCROW_201
    world.chain.sessions[escrow] = EscrowSession(escrow, "0x" + "ee" * 20, charger, connector, id_tag_hash(HOLDER),
                                                 DEPOSIT, opened)
    world.chain.reserved[7] = ChainReservation(7, charger, connector, id_tag_hash(HOLDER), expires_s)
    return world


def status16(reply: dict[str, object]) -> object:
    info = reply["idTagInfo"]
    assert isinstance(info, dict)
    return info["status"]


def status201(reply: dict[str, object]) -> object:
    info = reply["idTokenInfo"]
    assert isinstance(info, dict)
    return info["status"]


def test_hostile_start_by_another_idtag_on_a_reserved_connector_is_refused() -> None:
    world = reserved_world()
    assert status16(world.one(start16(connector=1, tag="TAG-OK"))) == "Blocked"
    assert world.ledger.open_sessions() == ()
    assert status16(world.one(start16(connector=2, tag="TAG-OK"))) == "Accepted"  # the other connector is free


def test_the_holder_starts_normally_and_consumes_the_reservation() -> None:
    world = reserved_world()
    reply = world.one(start16(connector=1, tag=HOLDER))
    assert status16(reply) == "Accepted"
    assert len(world.ledger.reservations.table) == 1
    tx = reply["transactionId"]
    world.one(stop16(int(str(tx)), 2_000, T0_MS + 5_000))
    # consumed: the connector is free for others although the chain still lists the reservation
    assert status16(world.one(start16(connector=1, tag="TAG-OK"))) == "Accepted"


def test_the_holders_session_token_starts_a_remote_start_on_the_reserved_connector() -> None:
    world = reserved_world()
    assert status16(world.one(start16(connector=1, tag=session_token(HOLDER_ESCROW)))) == "Accepted"


def test_expiry_releases_the_connector() -> None:
    world = reserved_world(expires_s=T0_MS // 1000 + 2)
    assert status16(world.one(start16(connector=1, tag="TAG-OK"))) == "Blocked"
    world.now_ms = T0_MS + 3_000
    assert status16(world.one(start16(connector=1, tag="TAG-OK"))) == "Accepted"


def test_a_cancelled_reservation_no_longer_holds() -> None:
    world = reserved_world()
    assert status16(world.one(start16(connector=1, tag="TAG-OK"))) == "Blocked"
    world.chain.end_reservation(7)
    assert status16(world.one(start16(connector=1, tag="TAG-OK"))) == "Accepted"


def test_v201_authorization_by_another_idtoken_is_refused_the_holders_accepted() -> None:
    world = reserved_world(charger=CHARGER_201)
    started = tx_event("Started", "T-1", evse=1, tag="TAG-OK")
    assert status201(world.one(started)) == "Blocked"
    other = reserved_world(charger=CHARGER_201)
    assert status201(other.one(tx_event("Started", "T-2", evse=1, tag=HOLDER))) == "Accepted"
    assert len(other.ledger.reservations.table) == 1


def test_authorize_is_refused_only_when_every_connector_is_held_for_others() -> None:
    world = reserved_world()
    authorize = {"idTag": "TAG-OK"}
    assert status16(world.one(ev("Authorize", authorize))) == "Accepted"  # connector 2 is free
    world.chain.reserved[8] = ChainReservation(8, CHARGER, 2, id_tag_hash(HOLDER), EXPIRES_S)
    assert status16(world.one(ev("Authorize", authorize))) == "Blocked"
    assert status16(world.one(ev("Authorize", {"idTag": HOLDER}))) == "Accepted"


def test_consumed_reservations_survive_a_snapshot_and_are_pruned_after_expiry() -> None:
    world = reserved_world(expires_s=T0_MS // 1000 + 5)
    world.one(start16(connector=1, tag=HOLDER))
    assert SNAPSHOT_VERSION == 8
    restored = Ledger.from_bytes(world.ledger.to_bytes())
    assert restored.state_hash() == world.ledger.state_hash()
    assert len(restored.reservations.table) == 1
    world.now_ms = T0_MS + 10_000
    world.one(ev("Heartbeat", {}))
    assert len(world.ledger.reservations.table) == 0


RESERVATION_ACTIONS = ("ReserveNow", "CancelReservation")


def reservation_commands(outcome: Any) -> list[Any]:
    """The reservation commands a block admitted (its driver's escrow session also gets a remote start)."""
    return [a for a in outcome.admitted if a.record.action in RESERVATION_ACTIONS]


def test_a_reserve_now_is_issued_once_per_reservation_in_the_chargers_version() -> None:
    from ocpp.messages import get_validator

    for charger, version in ((CHARGER, "1.6"), (CHARGER_201, "2.0.1")):
        world = reserved_world(charger=charger)
        first = world.block(ev("Heartbeat", {}, version=version))
        (admitted,) = reservation_commands(first)
        record = admitted.record
        assert (record.action, record.ocpp_version, record.signer, record.charger_id) == (
            "ReserveNow", version, b"", charger)
        payload = json.loads(record.payload_json)
        get_validator(2, "ReserveNow", version).validate(payload)
        token = reservation_token(id_tag_hash(HOLDER))
        if version == "1.6":
            assert (payload["reservationId"], payload["connectorId"], payload["idTag"]) == (7, 1, token)
        else:
            assert (payload["id"], payload["evseId"], payload["groupIdToken"]["idToken"]) == (7, 1, token)
        assert record.expires_at_ms == EXPIRES_S * 1000
        assert world.block(ev("Heartbeat", {}, version=version)).admitted == ()  # once
        assert [r.action for _, r in world.ledger.commands.pending_for(charger)
                if r.action in RESERVATION_ACTIONS] == ["ReserveNow"]


def test_the_holders_authorize_names_the_reservation_group_so_the_charger_admits_its_card() -> None:
    world = reserved_world()
    info = world.one(ev("Authorize", {"idTag": HOLDER}))["idTagInfo"]
    assert isinstance(info, dict) and info["parentIdTag"] == reservation_token(id_tag_hash(HOLDER))
    other = world.one(ev("Authorize", {"idTag": "TAG-OK"}))["idTagInfo"]
    # another driver's card is in its own group (its escrow session here), never the holder's
    assert isinstance(other, dict) and other["parentIdTag"] == reservation_token(id_tag_hash("TAG-OK"))
    assert other["parentIdTag"] != info["parentIdTag"]
    world201 = reserved_world(charger=CHARGER_201)
    reply = world201.one(ev("Authorize", {"idToken": {"idToken": HOLDER, "type": "ISO14443"}}, version="2.0.1"))
    token_info = reply["idTokenInfo"]
    assert isinstance(token_info, dict)
    assert token_info["groupIdToken"] == {"idToken": reservation_token(id_tag_hash(HOLDER)), "type": "Central"}


def test_a_reservation_cancelled_on_chain_gets_one_cancel_reservation_an_expired_one_none() -> None:
    world = reserved_world()
    assert [a.record.action for a in reservation_commands(world.block(ev("Heartbeat", {})))] == ["ReserveNow"]
    world.chain.end_reservation(7)  # the driver cancelled on chain
    (cancel,) = world.block(ev("Heartbeat", {})).admitted
    assert cancel.record.action == "CancelReservation" and json.loads(cancel.record.payload_json) == {
        "reservationId": 7}
    assert world.block(ev("Heartbeat", {})).admitted == ()  # once
    restored = Ledger.from_bytes(world.ledger.to_bytes())
    assert restored.state_hash() == world.ledger.state_hash()

    expiring = reserved_world(expires_s=T0_MS // 1000 + 2)
    expiring.block(ev("Heartbeat", {}))
    assert len(expiring.ledger.reservations.sent) == 1
    restored = Ledger.from_bytes(expiring.ledger.to_bytes())
    assert restored.state_hash() == expiring.ledger.state_hash()
    expiring.now_ms = T0_MS + 5_000
    expiring.chain.end_reservation(7)  # closed after expiry: the charger's own expired already
    assert expiring.block(ev("Heartbeat", {})).admitted == ()
    assert len(expiring.ledger.reservations.sent) == 0
