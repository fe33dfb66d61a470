"""Remote start: the session token idTag of an open escrow session authorizes and binds it.

A node answers the Escrow's SessionRequested with a remote start whose idTag is
`session_token(session_id)`; the ledger accepts that idTag only at the session's charger and
connector (EVSE) while the session is open on chain, and binds exactly that session.
"""

from __future__ import annotations

from typing import Any

import pytest
from ledger_world import (
    ACCEPTED_16,
    ACCEPTED_201,
    CHARGER,
    CHARGER_201,
    ESCROW_1,
    ESCROW_2,
    ESCROW_201,
    T0_MS,
    TARIFF,
    World,
    ev,
    start16,
    stop16,
    tx_event,
)

from devsen.ledger import SettlementOrder, is_session_token, session_token

TOKEN_1 = session_token(ESCROW_1)  # CP-1 (1.6), connector 1
TOKEN_201 = session_token(ESCROW_201)  # CS-2 (2.0.1), EVSE 1


def authorize16(tag: str, charger: str = CHARGER) -> str:
    world = World()
    status: str = world.one(ev("Authorize", {"idTag": tag}, charger=charger))["idTagInfo"]["status"]
    return status


def authorize201(world: World, tag: str, charger: str = CHARGER_201) -> str:
    payload: dict[str, Any] = {"idToken": {"idToken": tag, "type": "Central"}}
    status: str = world.one(ev("Authorize", payload, version="2.0.1", charger=charger))["idTokenInfo"]["status"]
    return status


def test_session_token_shape() -> None:
    assert TOKEN_1 == "S" + "01" * 9 + "0" and len(TOKEN_1) == 20
    lettered = session_token(b"\xab" * 32)
    assert is_session_token(TOKEN_1) and is_session_token(lettered)
    for not_token in ("TAG-OK", TOKEN_1[:-1], TOKEN_1 + "0", "s" + TOKEN_1[1:], lettered.upper(), "S" + "g" * 19):
        assert not is_session_token(not_token)
    with pytest.raises(ValueError):
        session_token(b"\x01" * 31)


def test_v16_token_is_accepted_only_at_its_charger() -> None:
    assert authorize16(TOKEN_1) == "Accepted"
    assert authorize16(session_token(ESCROW_201)) == "Invalid"  # a session of another charger
    assert authorize16(TOKEN_1, charger="OFF-1") == "Invalid"  # registered but inactive device
    assert authorize16("S" + "ab" * 9 + "a") == "Invalid"  # token shape, no such session


def test_v16_remote_start_binds_the_token_session_and_settles() -> None:
    world = World()
    reply = world.one(start16(connector=1, tag=TOKEN_1, meter=1_000))
    assert reply["idTagInfo"] == ACCEPTED_16
    (session,) = world.ledger.open_sessions()
    assert session.bound and session.escrow_session_id == ESCROW_1
    # the same token cannot start a second transaction on the other connector
    assert world.one(start16(connector=2, tag=TOKEN_1))["idTagInfo"]["status"] == "Invalid"
    outcome = world.block(stop16(reply["transactionId"], 4_000, T0_MS, idTag=TOKEN_1))
    assert outcome.results[0].reply == {"idTagInfo": ACCEPTED_16}
    assert outcome.settlements == (SettlementOrder(ESCROW_1, 3_000, 3_000 * TARIFF.price_per_kwh // 1000),)


def test_v16_token_for_another_connector_is_refused() -> None:
    world = World()
    reply = world.one(start16(connector=2, tag=TOKEN_1))
    assert reply["idTagInfo"]["status"] == "Invalid"
    assert world.ledger.open_sessions() == ()
    # the RFID path still binds connector 2's own session
    assert world.one(start16(connector=2, tag="TAG-OK"))["idTagInfo"]["status"] == "Accepted"
    assert world.ledger.open_sessions()[0].escrow_session_id == ESCROW_2


def test_v16_token_of_a_settled_session_is_refused() -> None:
    world = World()
    world.chain.close_escrow_session(ESCROW_1)
    assert world.one(ev("Authorize", {"idTag": TOKEN_1}))["idTagInfo"]["status"] == "Invalid"
    assert world.one(start16(connector=1, tag=TOKEN_1))["idTagInfo"]["status"] == "Invalid"
    assert world.ledger.open_sessions() == ()


def test_v16_token_while_its_session_is_in_use_gets_no_second_binding() -> None:
    world = World()
    first = world.one(start16(connector=1, tag=TOKEN_1))
    world.block(stop16(first["transactionId"], 2_000, T0_MS))
    # settled by the ledger but not yet closed on chain: the escrow is owed, not free
    assert world.one(start16(connector=1, tag=TOKEN_1))["idTagInfo"]["status"] == "Blocked"
    assert world.ledger.open_sessions() == ()


def test_v201_token_authorizes_at_its_station_only() -> None:
    world = World()
    assert authorize201(world, TOKEN_201) == "Accepted"
    assert authorize201(world, TOKEN_1) == "Invalid"  # a session of another charger
    world.chain.close_escrow_session(ESCROW_201)
    assert authorize201(world, TOKEN_201) == "Invalid"  # settled or refunded on chain


def test_v201_remote_start_binds_the_token_session_and_settles() -> None:
    world = World()
    reply = world.one(tx_event("Started", "rs-1", tag=TOKEN_201, wh=2_000))
    assert reply == {"idTokenInfo": ACCEPTED_201}
    (session,) = world.ledger.open_sessions()
    assert session.bound and session.escrow_session_id == ESCROW_201
    outcome = world.block(tx_event("Ended", "rs-1", seq=1, tag=TOKEN_201, wh=7_000, at_ms=T0_MS))
    assert outcome.results[0].reply == {"idTokenInfo": ACCEPTED_201}
    assert outcome.settlements == (SettlementOrder(ESCROW_201, 5_000, 5_000 * TARIFF.price_per_kwh // 1000),)


def test_v201_token_for_another_evse_or_settled_session_leaves_the_transaction_unpaid() -> None:
    world = World()
    assert world.one(tx_event("Started", "rs-2", evse=2, tag=TOKEN_201, wh=0))["idTokenInfo"]["status"] == "Invalid"
    (session,) = world.ledger.open_sessions()
    assert not session.bound
    world.chain.close_escrow_session(ESCROW_201)
    assert world.one(tx_event("Started", "rs-3", evse=1, tag=TOKEN_201, wh=0))["idTokenInfo"]["status"] == "Invalid"
    outcome = world.block(tx_event("Ended", "rs-2", seq=1, evse=2, wh=5_000), tx_event("Ended", "rs-3", seq=1, wh=1))
    assert outcome.settlements == ()
    assert world.ledger.open_sessions() == ()
