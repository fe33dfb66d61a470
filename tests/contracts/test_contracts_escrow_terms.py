"""Escrow terms the driver agreed to: tariff copied at opening, refund only after the
deadline, batch settlement under one quorum, and the manager's voucher close (issue 12)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from conftest import (
    REFUND_TIMEOUT_S,
    TOKEN,
    World,
    advance_time,
    build_world,
    fund,
    quorum_signatures,
)
from eth_account import Account
from web3.logs import DISCARD

from anchoring.chain import ChainClient, ChainRevert, SessionStatus, connect
from anchoring.escrow_sign import settlement_batch_digest, sign_payment_voucher
from primitives.eip712 import SigningKey

SALT = bytes(range(16))
AUTH_HASH = bytes(range(32))
PRICE = 300_000
FEE = 5_000
_counter = [0]


def unique(prefix: str) -> str:
    _counter[0] += 1
    return f"{prefix}-T{_counter[0]}"


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(connect("tester"))


class Driver:
    """A driver actor whose key also signs vouchers."""

    def __init__(self, world: World, seed: str) -> None:
        secret = hashlib.sha256(seed.encode()).digest()
        self.key = SigningKey(secret)
        account = Account.from_key(secret)
        fund(world.w3, account.address)
        self.client: ChainClient = world.client_for(secret.hex())
        self.client.register_roles(1)
        self.address = account.address


def expect_revert(name: str, fn: Callable[..., Any], *args: Any) -> None:
    with pytest.raises(ChainRevert) as info:
        fn(*args)
    assert info.value.name == name, info.value


def make_device(world: World, price: int = PRICE, fee: int = FEE) -> str:
    cbid = unique("CB")
    world.manager.create_device(cbid, location="", connector_count=2, price_per_kwh=price, per_minute_fee=fee,
                                auth_salt=SALT, auth_hash=AUTH_HASH)
    return cbid


def open_for(world: World, driver: ChainClient, cbid: str, deposit: int = 20 * TOKEN,
             voucher_mode: bool = False) -> bytes:
    tag = unique("TAG")
    driver.register_id_tag(tag)
    driver.faucet_mint(driver.sender.address, deposit)  # type: ignore[union-attr]
    driver.approve(world.deployment.escrow, deposit)
    session_id, _ = driver.open_session(cbid, 1, tag, deposit, voucher_mode=voucher_mode)
    return session_id


def balance(world: World, address: str) -> int:
    return world.deployer.token_balance(address, "latest")


def test_tariff_is_copied_at_opening_and_later_changes_do_not_apply(world: World) -> None:
    cbid = make_device(world)
    session_id = open_for(world, world.driver, cbid)
    world.manager.update_device("setTariff", cbid, 10 * PRICE, 10 * FEE)
    later = open_for(world, world.driver, cbid)
    first, second = world.deployer.session(session_id, "latest"), world.deployer.session(later, "latest")
    assert first is not None and (first.price_per_kwh, first.per_minute_fee) == (PRICE, FEE)
    assert second is not None and (second.price_per_kwh, second.per_minute_fee) == (10 * PRICE, 10 * FEE)
    assert not first.voucher_mode


def test_refund_mid_session_fails_and_refund_after_settlement_gets_nothing(world: World) -> None:
    cbid = make_device(world)
    session_id = open_for(world, world.driver, cbid)
    refund_at = world.deployer.read("Escrow", "refundAt", session_id, block="latest")
    session = world.deployer.session(session_id, "latest")
    assert session is not None and refund_at == session.opened_at + REFUND_TIMEOUT_S
    expect_revert("RefundTooEarly", world.driver.refund, session_id)
    entries = [(session_id, 1000, 2 * TOKEN)]
    world.relayer.settle_batch(entries, quorum_signatures(world.validators[:3], batch_digest(world, entries)))
    advance_time(world.w3, REFUND_TIMEOUT_S + 1)
    expect_revert("SessionNotOpen", world.driver.refund, session_id)


def batch_digest(world: World, entries: list[tuple[bytes, int, int]]) -> bytes:
    return settlement_batch_digest(world.deployment.domain("Escrow"), entries)


def test_settle_batch_settles_many_skips_bad_entries_and_is_idempotent(world: World) -> None:
    cbid = make_device(world)
    other_cbid = make_device(world)
    ids = [open_for(world, world.driver, cbid, deposit=10 * TOKEN) for _ in range(3)]
    ids.append(open_for(world, world.driver, other_cbid, deposit=10 * TOKEN))
    manager, driver = world.manager.sender.address, world.driver.sender.address  # type: ignore[union-attr]
    before_m, before_d = balance(world, manager), balance(world, driver)
    open_before = world.deployer.open_deposits("latest")
    entries = [
        (ids[0], 100, 1 * TOKEN),
        (b"\x42" * 32, 1, 1),  # unknown session: skipped
        (ids[1], 200, 11 * TOKEN),  # above the deposit: skipped, the rest still settle
        (ids[2], 300, 3 * TOKEN),
        (ids[3], 400, 4 * TOKEN),
    ]
    sigs = quorum_signatures(world.validators[:3], batch_digest(world, entries))
    expect_revert("TooFewSignatures", world.relayer.settle_batch, entries, sigs[:2])
    receipt = world.relayer.settle_batch(entries, sigs)
    escrow = world.relayer.contracts["Escrow"]
    skipped = escrow.events.SettlementSkipped().process_receipt(receipt.raw, errors=DISCARD)
    assert [(bytes(e["args"]["sessionId"]), e["args"]["reason"]) for e in skipped] == [
        (b"\x42" * 32, 1), (ids[1], 3)]
    assert balance(world, manager) == before_m + 8 * TOKEN
    assert balance(world, driver) == before_d + 22 * TOKEN
    assert world.deployer.open_deposits("latest") == open_before - 30 * TOKEN
    states = [world.deployer.session(s, "latest") for s in ids]
    assert [s.status for s in states if s] == [SessionStatus.SETTLED, SessionStatus.OPEN,
                                              SessionStatus.SETTLED, SessionStatus.SETTLED]
    # a replayed batch changes nothing: every session closes once
    replay = world.relayer.settle_batch(entries, sigs)
    again = escrow.events.SettlementSkipped().process_receipt(replay.raw, errors=DISCARD)
    assert [e["args"]["reason"] for e in again] == [2, 1, 3, 2, 2]
    assert balance(world, manager) == before_m + 8 * TOKEN
    # signatures over a different list do not count
    tampered = [(ids[1], 200, 10 * TOKEN)]
    expect_revert("SignerNotValidator", world.relayer.settle_batch, tampered, sigs)
    expect_revert("BatchEmpty", world.relayer.settle_batch, [], sigs)


def test_close_with_voucher_pays_min_and_refunds_rest(world: World) -> None:
    alice = Driver(world, unique("alice"))
    cbid = make_device(world)
    session_id = open_for(world, alice.client, cbid, deposit=10 * TOKEN, voucher_mode=True)
    session = world.deployer.session(session_id, "latest")
    assert session is not None and session.voucher_mode
    domain = world.deployment.domain("Escrow")
    manager = world.manager.sender.address  # type: ignore[union-attr]
    before_m, before_a = balance(world, manager), balance(world, alice.address)
    voucher = sign_payment_voucher(alice.key, domain, session_id, 4 * TOKEN)
    world.manager.close_with_voucher(session_id, 4 * TOKEN, voucher)
    assert balance(world, manager) == before_m + 4 * TOKEN
    assert balance(world, alice.address) == before_a + 6 * TOKEN
    closed = world.deployer.session(session_id, "latest")
    assert closed is not None and closed.status is SessionStatus.SETTLED and closed.settled_amount == 4 * TOKEN
    # replay after close
    expect_revert("SessionNotOpen", world.manager.close_with_voucher, session_id, 4 * TOKEN, voucher)
    # the network's later settlement is a no-op (skipped as closed)
    entries = [(session_id, 1000, 9 * TOKEN)]
    receipt = world.relayer.settle_batch(entries, quorum_signatures(world.validators[:3], batch_digest(world, entries)))
    skipped = world.relayer.contracts["Escrow"].events.SettlementSkipped().process_receipt(receipt.raw, errors=DISCARD)
    assert [e["args"]["reason"] for e in skipped] == [2]
    assert balance(world, manager) == before_m + 4 * TOKEN


def test_voucher_above_deposit_pays_the_deposit(world: World) -> None:
    alice = Driver(world, unique("alice"))
    session_id = open_for(world, alice.client, make_device(world), deposit=5 * TOKEN, voucher_mode=True)
    manager = world.manager.sender.address  # type: ignore[union-attr]
    before_m, before_a = balance(world, manager), balance(world, alice.address)
    voucher = sign_payment_voucher(alice.key, world.deployment.domain("Escrow"), session_id, 50 * TOKEN)
    world.manager.close_with_voucher(session_id, 50 * TOKEN, voucher)
    assert (balance(world, manager), balance(world, alice.address)) == (before_m + 5 * TOKEN, before_a)


def test_voucher_close_refuses_hostile_parties(world: World) -> None:
    alice, mallory = Driver(world, unique("alice")), Driver(world, unique("mallory"))
    domain = world.deployment.domain("Escrow")
    cbid = make_device(world)
    session_id = open_for(world, alice.client, cbid, voucher_mode=True)
    other_session = open_for(world, alice.client, cbid, voucher_mode=True)
    plain = open_for(world, alice.client, cbid)
    voucher = sign_payment_voucher(alice.key, domain, session_id, 3 * TOKEN)
    # a non-manager (the driver herself, an outsider) cannot close
    expect_revert("NotSessionManager", alice.client.close_with_voucher, session_id, 3 * TOKEN, voucher)
    expect_revert("NotSessionManager", mallory.client.close_with_voucher, session_id, 3 * TOKEN, voucher)
    # a voucher signed by someone other than the driver
    forged = sign_payment_voucher(mallory.key, domain, session_id, 3 * TOKEN)
    expect_revert("VoucherSignerNotDriver", world.manager.close_with_voucher, session_id, 3 * TOKEN, forged)
    # a higher amount than the driver signed
    expect_revert("VoucherSignerNotDriver", world.manager.close_with_voucher, session_id, 9 * TOKEN, voucher)
    # the driver's voucher for another session
    expect_revert("VoucherSignerNotDriver", world.manager.close_with_voucher, other_session, 3 * TOKEN, voucher)
    # a voucher under another contract's domain
    anchor_signed = sign_payment_voucher(alice.key, world.deployment.domain("Anchor"), session_id, 3 * TOKEN)
    expect_revert("VoucherSignerNotDriver", world.manager.close_with_voucher, session_id, 3 * TOKEN, anchor_signed)
    # a session not opened in voucher mode
    plain_voucher = sign_payment_voucher(alice.key, domain, plain, 3 * TOKEN)
    expect_revert("NotVoucherSession", world.manager.close_with_voucher, plain, 3 * TOKEN, plain_voucher)
    # malformed signature
    expect_revert("SignatureLengthInvalid", world.manager.close_with_voucher, session_id, 3 * TOKEN, b"\x01" * 64)
    for sid in (session_id, other_session, plain):
        s = world.deployer.session(sid, "latest")
        assert s is not None and s.status is SessionStatus.OPEN


def test_batch_above_the_bound_and_refund_after_voucher_close_are_refused(world: World) -> None:
    too_many = [(bytes([i % 256, i // 256]) + b"\x00" * 30, 1, 1) for i in range(257)]
    digest = settlement_batch_digest(world.deployment.domain("Escrow"), too_many[:256])
    expect_revert("BatchTooLarge", world.relayer.settle_batch, too_many,
                  quorum_signatures(world.validators[:3], digest))
    alice = Driver(world, unique("alice"))
    session_id = open_for(world, alice.client, make_device(world), voucher_mode=True)
    voucher = sign_payment_voucher(alice.key, world.deployment.domain("Escrow"), session_id, TOKEN)
    world.manager.close_with_voucher(session_id, TOKEN, voucher)
    advance_time(world.w3, REFUND_TIMEOUT_S + 1)
    expect_revert("SessionNotOpen", alice.client.refund, session_id)


def test_hostile_account_cannot_settle_a_batch_with_forged_signatures(world: World) -> None:
    """Mallory (not a validator) sends settleBatch paying herself the whole deposit: her own
    signatures, a quorum padded with hers, a validator's signature repeated, signatures over
    another domain and a validator quorum over a different list all revert; nothing moves."""
    cbid = make_device(world)
    session_id = open_for(world, world.driver, cbid, deposit=10 * TOKEN)
    mallory = Driver(world, unique("mallory"))
    entries = [(session_id, 99_000, 10 * TOKEN)]
    digest = batch_digest(world, entries)
    outsiders = [SigningKey(bytes([0x50 + i]) * 32) for i in range(3)]
    honest = quorum_signatures(world.validators[:3], digest)
    padded = quorum_signatures([*world.validators[:2], world.outsider_key], digest)
    anchor_domain = quorum_signatures(world.validators[:3], settlement_batch_digest(
        world.deployment.domain("Anchor"), entries))
    other_list = quorum_signatures(world.validators[:3], batch_digest(world, [(session_id, 1, 1)]))
    before = balance(world, world.driver.sender.address)  # type: ignore[union-attr]
    expect_revert("SignerNotValidator", mallory.client.settle_batch, entries, quorum_signatures(outsiders, digest))
    expect_revert("SignerNotValidator", mallory.client.settle_batch, entries, padded)
    expect_revert("DuplicateSigner", mallory.client.settle_batch, entries, [honest[0]] * 3)
    for signatures in (anchor_domain, other_list):  # they recover to unrelated addresses, in any order
        with pytest.raises(ChainRevert) as info:
            mallory.client.settle_batch(entries, signatures)
        assert info.value.name in ("SignerNotValidator", "SignersNotSorted"), info.value
    expect_revert("TooFewSignatures", mallory.client.settle_batch, entries, honest[:2])
    session = world.deployer.session(session_id, "latest")
    assert session is not None and session.status is SessionStatus.OPEN
    assert balance(world, world.driver.sender.address) == before  # type: ignore[union-attr]
    # the honest quorum settles it, whoever relays it (settleBatch is permissionless)
    mallory.client.settle_batch(entries, honest)
    session = world.deployer.session(session_id, "latest")
    assert session is not None and session.status is SessionStatus.SETTLED and session.settled_amount == 10 * TOKEN
