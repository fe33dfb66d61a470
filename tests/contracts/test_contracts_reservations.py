"""Reservations in the Escrow (issue 13): a driver holds one connector for its idTag, paying the
device's per-minute fee per started minute; hostile reservers, cancellers and durations fail."""

from __future__ import annotations

import pytest
from conftest import TOKEN, World, advance_time, build_world
from test_contracts_escrow_terms import FEE, Driver, balance, expect_revert, make_device, unique
from web3.logs import DISCARD

from anchoring.chain import ChainClient, connect

MAX_RESERVATION_S = 2 * 3600


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(connect("tester"))


def now(world: World) -> int:
    return int(world.w3.eth.get_block("latest")["timestamp"])


def tagged(driver: ChainClient, amount: int = 10 * TOKEN) -> str:
    tag = unique("RTAG")
    driver.register_id_tag(tag)
    driver.faucet_mint(driver.sender.address, amount)  # type: ignore[union-attr]
    driver.approve(driver.deployment.escrow, amount)
    return tag


def reservation(world: World, reservation_id: int) -> dict[str, object]:
    row = world.deployer.read("Escrow", "reservation", reservation_id, block="latest")
    keys = ("reservationId", "connectorId", "status", "driver", "createdAt", "expiresAt", "deviceId",
            "idTagHash", "perMinuteFee", "fee")
    return dict(zip(keys, row, strict=True))


def test_reserve_locks_the_fee_and_cancel_refunds_the_unspent_minutes(world: World) -> None:
    cbid = make_device(world)
    driver = world.driver
    tag = tagged(driver)
    address, manager = driver.sender.address, world.manager.sender.address  # type: ignore[union-attr]
    before_d, before_m = balance(world, address), balance(world, manager)
    rid, _ = driver.reserve(cbid, 1, tag, now(world) + 15 * 60)
    row = reservation(world, rid)
    assert row["fee"] == 15 * FEE and row["status"] == 1 and row["connectorId"] == 1
    assert balance(world, address) == before_d - 15 * FEE
    listed = world.deployer.read("Escrow", "reservationsOf", cbid, block="latest")
    assert [r[0] for r in listed] == [rid]
    advance_time(world.w3, 130)  # 3 started minutes (the reserve block plus 130 s)
    driver.cancel_reservation(rid)
    spent = balance(world, manager) - before_m
    assert 3 * FEE <= spent <= 4 * FEE
    assert balance(world, address) == before_d - spent
    assert world.deployer.read("Escrow", "reservationsOf", cbid, block="latest") == []
    expect_revert("ReservationNotOpen", driver.cancel_reservation, rid)


def test_hostile_reserving_a_reserved_connector_is_refused_until_it_expires(world: World) -> None:
    cbid = make_device(world)
    rid, _ = world.driver.reserve(cbid, 1, tagged(world.driver), now(world) + 5 * 60)
    rival = Driver(world, unique("rival"))
    rival_tag = tagged(rival.client)
    expect_revert("ConnectorReserved", rival.client.reserve, cbid, 1, rival_tag, now(world) + 60)
    rival.client.reserve(cbid, 2, rival_tag, now(world) + 60)  # the other connector is free
    expect_revert("ReservationNotExpired", rival.client.close_reservation, rid)
    manager = world.manager.sender.address  # type: ignore[union-attr]
    before_m = balance(world, manager)
    advance_time(world.w3, 5 * 60 + 1)
    second, _ = rival.client.reserve(cbid, 1, rival_tag, now(world) + 60)  # closes the expired one first
    assert reservation(world, rid)["status"] == 2 and second == rid + 2
    assert balance(world, manager) - before_m == 5 * FEE  # the no-show pays the whole fee


def test_hostile_cancelling_someone_elses_reservation_fails(world: World) -> None:
    cbid = make_device(world)
    rid, _ = world.driver.reserve(cbid, 1, tagged(world.driver), now(world) + 10 * 60)
    thief = Driver(world, unique("thief"))
    expect_revert("NotReservationDriver", thief.client.cancel_reservation, rid)
    expect_revert("NotReservationDriver", world.manager.cancel_reservation, rid)
    expect_revert("UnknownReservation", thief.client.cancel_reservation, 10**6)
    advance_time(world.w3, 10 * 60 + 1)
    expect_revert("ReservationExpired", world.driver.cancel_reservation, rid)
    thief.client.close_reservation(rid)  # anyone closes an expired one, the fee goes to the manager
    assert reservation(world, rid)["status"] == 2


def test_hostile_durations_devices_connectors_and_tags_are_refused(world: World) -> None:
    cbid = make_device(world)
    driver = world.driver
    tag = tagged(driver)
    t = now(world)
    expect_revert("ReservationDurationInvalid", driver.reserve, cbid, 1, tag, t + MAX_RESERVATION_S + 60)
    expect_revert("ReservationDurationInvalid", driver.reserve, cbid, 1, tag, t)
    expect_revert("ReservationDurationInvalid", driver.reserve, cbid, 1, tag, 0)
    expect_revert("UnknownDevice", driver.reserve, unique("NOPE"), 1, tag, t + 60)
    expect_revert("ConnectorInvalid", driver.reserve, cbid, 3, tag, t + 60)
    expect_revert("ConnectorInvalid", driver.reserve, cbid, 0, tag, t + 60)
    other = Driver(world, unique("other"))
    expect_revert("IdTagNotValidForDriver", other.client.reserve, cbid, 1, tag, t + 60)
    free = make_device(world, fee=0)
    expect_revert("ReservationFeeZero", driver.reserve, free, 1, tag, t + 60)
    poor = Driver(world, unique("poor"))
    poor_tag = unique("RTAG")
    poor.client.register_id_tag(poor_tag)  # no tokens approved
    with pytest.raises(Exception):  # noqa: B017 - the token's own revert
        poor.client.reserve(cbid, 1, poor_tag, t + 60)
    assert world.deployer.read("Escrow", "reservationsOf", cbid, block="latest") == []


def test_wallet_reserve_and_cancel_reservation_commands(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from devsen import wallet

    monkeypatch.setattr(wallet, "wait_for_confirmations", lambda *args, **kwargs: True)  # a still chain
    base = ["--rpc", "unused", "--deployment", "unused"]
    cbid = make_device(world)
    driver = world.driver
    tag = tagged(driver)
    text, doc = wallet._run(wallet._parser().parse_args([*base, "reserve", cbid, "1", "--minutes", "15", "--id-tag", tag]),
                            driver)
    assert doc["fee_units"] == 15 * FEE and doc["connector"] == 1
    assert f"reservation {doc['reservation_id']}: {cbid} connector 1" in text and "Z" in doc["expires_at"]
    with pytest.raises(ValueError, match="--minutes must be in 1..120"):
        wallet._run(wallet._parser().parse_args([*base, "reserve", cbid, "2", "--minutes", "121", "--id-tag", tag]), driver)
    with pytest.raises(ValueError, match="is not a registered device"):
        wallet._run(wallet._parser().parse_args([*base, "reserve", "NOPE-X", "1", "--minutes", "5", "--id-tag", tag]),
                    driver)
    text, cancelled = wallet._run(wallet._parser().parse_args([*base, "cancel-reservation", str(doc["reservation_id"])]),
                                  driver)
    assert cancelled["reservation_id"] == doc["reservation_id"] and "cancelled" in text
    assert reservation(world, int(doc["reservation_id"]))["status"] == 2


# ---------------------------------------------------------------- a start applies the fee to the session


def settle(world: World, session_id: bytes, amount: int) -> None:
    from conftest import quorum_signatures
    from test_contracts_escrow_terms import batch_digest

    entries = [(session_id, 1_000, amount)]
    world.relayer.settle_batch(entries, quorum_signatures(world.validators[:3], batch_digest(world, entries)))


def reserved_session(world: World, deposit: int = 2 * TOKEN) -> tuple[str, int, bytes, int]:
    """(device, reservation id, session id, fee): the driver reserves connector 1 for 15 minutes
    and then opens its session there with the same idTag."""
    cbid = make_device(world)
    driver = world.driver
    tag = tagged(driver)
    rid, _ = driver.reserve(cbid, 1, tag, now(world) + 15 * 60)
    fee = 15 * FEE
    before = balance(world, driver.sender.address)  # type: ignore[union-attr]
    session_id, receipt = driver.open_session(cbid, 1, tag, deposit)
    applied = driver.contracts["Escrow"].events.ReservationApplied().process_receipt(receipt.raw, errors=DISCARD)
    assert [(e["args"]["reservationId"], bytes(e["args"]["sessionId"]), e["args"]["fee"]) for e in applied] == [
        (rid, session_id, fee)]
    assert balance(world, driver.sender.address) == before - deposit  # type: ignore[union-attr]
    return cbid, rid, session_id, fee


def test_a_start_by_the_holder_applies_the_fee_to_the_session_and_it_is_not_paid_twice(world: World) -> None:
    driver, manager = world.driver.sender.address, world.manager.sender.address  # type: ignore[union-attr]
    open_before = world.deployer.open_deposits("latest")
    cbid, rid, session_id, fee = reserved_session(world, deposit=2 * TOKEN)
    session = world.deployer.session(session_id, "latest")
    assert session is not None and session.deposit == 2 * TOKEN + fee  # the fee is part of the prepayment
    assert world.deployer.read("Escrow", "sessionReservationFee", session_id, block="latest") == fee
    assert reservation(world, rid)["fee"] == 0 and reservation(world, rid)["status"] == 1  # still holds the connector
    assert world.deployer.open_deposits("latest") == open_before + 2 * TOKEN + fee
    before_d, before_m = balance(world, driver), balance(world, manager)
    settle(world, session_id, 1 * TOKEN)  # charged more than the fee: the fee counts toward it
    assert balance(world, manager) - before_m == 1 * TOKEN
    assert balance(world, driver) - before_d == 2 * TOKEN + fee - 1 * TOKEN
    # the reservation ends paying nothing more: its fee went into the session
    advance_time(world.w3, 15 * 60 + 1)
    before_m = balance(world, manager)
    world.driver.close_reservation(rid)
    assert balance(world, manager) == before_m and reservation(world, rid)["status"] == 2
    assert world.deployer.open_deposits("latest") == open_before


def test_a_session_cheaper_than_the_fee_still_pays_the_fee(world: World) -> None:
    driver, manager = world.driver.sender.address, world.manager.sender.address  # type: ignore[union-attr]
    _, _, session_id, fee = reserved_session(world)
    before_d, before_m = balance(world, driver), balance(world, manager)
    settle(world, session_id, fee // 3)
    assert balance(world, manager) - before_m == fee
    assert balance(world, driver) - before_d == 2 * TOKEN
    settled = world.deployer.session(session_id, "latest")
    assert settled is not None and settled.settled_amount == fee


def test_a_session_opened_and_never_charged_refunds_all_but_the_fee(world: World) -> None:
    driver, manager = world.driver.sender.address, world.manager.sender.address  # type: ignore[union-attr]
    _, _, session_id, fee = reserved_session(world)
    timeout = world.deployer.refund_timeout("latest")
    advance_time(world.w3, timeout + 1)
    before_d, before_m = balance(world, driver), balance(world, manager)
    world.driver.refund(session_id)
    assert balance(world, manager) - before_m == fee  # like a no-show
    assert balance(world, driver) - before_d == 2 * TOKEN


def test_hostile_others_cannot_take_or_end_someone_elses_reservation_fee(world: World) -> None:
    cbid = make_device(world)
    holder = world.driver
    tag = tagged(holder)
    rid, _ = holder.reserve(cbid, 1, tag, now(world) + 10 * 60)
    fee = 10 * FEE
    rival = Driver(world, unique("rival"))
    rival_tag = tagged(rival.client)
    # a rival's session on the reserved connector takes no fee (the ledger refuses its start there)
    rival_session, receipt = rival.client.open_session(cbid, 1, rival_tag, 1 * TOKEN)
    assert rival.client.contracts["Escrow"].events.ReservationApplied().process_receipt(receipt.raw, errors=DISCARD) == ()
    assert world.deployer.read("Escrow", "sessionReservationFee", rival_session, block="latest") == 0
    # nor can it name the holder's idTag, cancel it, or close it before expiry
    expect_revert("IdTagNotValidForDriver", rival.client.open_session, cbid, 1, tag, 1 * TOKEN)
    expect_revert("NotReservationDriver", rival.client.cancel_reservation, rid)
    expect_revert("ReservationNotExpired", rival.client.close_reservation, rid)
    # the holder's session on the other connector, or with another of its idTags, takes no fee either
    other_tag = tagged(holder)
    elsewhere, _ = holder.open_session(cbid, 2, tag, 1 * TOKEN)
    other, _ = holder.open_session(cbid, 1, other_tag, 1 * TOKEN)
    for session_id in (elsewhere, other):
        assert world.deployer.read("Escrow", "sessionReservationFee", session_id, block="latest") == 0
    assert reservation(world, rid)["fee"] == fee
    # the fee applies once: a second session of the holder gets none
    first, _ = holder.open_session(cbid, 1, tag, 1 * TOKEN)
    second, _ = holder.open_session(cbid, 1, tag, 1 * TOKEN)
    assert world.deployer.read("Escrow", "sessionReservationFee", first, block="latest") == fee
    assert world.deployer.read("Escrow", "sessionReservationFee", second, block="latest") == 0
    # after expiry a late session of the holder takes nothing, and the no-show path is unchanged
    late_rid, _ = holder.reserve(cbid, 2, tag, now(world) + 60)
    advance_time(world.w3, 61)
    late, _ = holder.open_session(cbid, 2, tag, 1 * TOKEN)
    assert world.deployer.read("Escrow", "sessionReservationFee", late, block="latest") == 0
    manager = world.manager.sender.address  # type: ignore[union-attr]
    before_m = balance(world, manager)
    rival.client.close_reservation(late_rid)
    assert balance(world, manager) - before_m == FEE
