"""Contract behaviour and every revert path, on the in-process chain and on anvil."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    REFUND_TIMEOUT_S,
    TOKEN,
    World,
    advance_time,
    fund,
    quorum_signatures,
    validator_keys,
)
from web3 import Web3

from anchoring.chain import (
    ChainClient,
    ChainError,
    ChainRevert,
    Deployment,
    SessionStatus,
    device_id_of,
)
from anchoring.escrow_sign import settlement_batch_digest
from anchoring.merkle import MerkleTree
from consensus.signing import ANCHOR_BATCH_TYPE, VALIDATOR_SET_UPDATE_TYPE
from primitives.credentials import hash_charger_password, new_auth_credential
from primitives.eip712 import Domain, SigningKey, typed_digest
from primitives.hashing import id_tag_hash, validators_hash

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "merkle_v1.json"
SALT = bytes(range(16))
AUTH_HASH = bytes(range(32))
_counter = [0]


def unique(prefix: str) -> str:
    _counter[0] += 1
    return f"{prefix}-{_counter[0]}"


def make_device(world: World, connectors: int = 2) -> str:
    charge_box_id = unique("CB")
    world.manager.create_device(
        charge_box_id, location="Main St 1", connector_count=connectors, price_per_kwh=300_000,
        per_minute_fee=0, auth_salt=SALT, auth_hash=AUTH_HASH,
    )
    return charge_box_id


def open_session(world: World, deposit: int = 20 * TOKEN) -> tuple[bytes, str]:
    charge_box_id = make_device(world)
    tag = unique("TAG")
    world.driver.register_id_tag(tag)
    world.driver.faucet_mint(world.driver.sender.address, deposit)  # type: ignore[union-attr]
    world.driver.approve(world.deployment.escrow, deposit)
    session_id, _ = world.driver.open_session(charge_box_id, 1, tag, deposit)
    return session_id, charge_box_id


def settlement_sigs(world: World, session_id: bytes, energy: int, amount: int,
                    keys: list[SigningKey] | None = None, domain: Domain | None = None) -> list[bytes]:
    """Signatures over the one-entry SettlementBatch of (session_id, energy, amount)."""
    domain = domain or world.deployment.domain("Escrow")
    digest = settlement_batch_digest(domain, [(session_id, energy, amount)])
    return quorum_signatures(keys if keys is not None else world.validators[:3], digest)


def settle(world: World, session_id: bytes, energy: int, amount: int, sigs: list[bytes]) -> list[int]:
    """settleBatch of one entry; the SettlementSkipped reasons it emitted."""
    from web3.logs import DISCARD

    receipt = world.relayer.settle_batch([(session_id, energy, amount)], sigs)
    skipped = world.relayer.contracts["Escrow"].events.SettlementSkipped().process_receipt(receipt.raw, errors=DISCARD)
    return [int(e["args"]["reason"]) for e in skipped]


def anchor_sigs(world: World, batch: tuple[int, bytes, int, int, int], keys: list[SigningKey] | None = None,
                domain: Domain | None = None) -> list[bytes]:
    domain = domain or world.deployment.domain("Anchor")
    digest = typed_digest(domain, ANCHOR_BATCH_TYPE, batch)
    return quorum_signatures(keys if keys is not None else world.validators[:3], digest)


def expect_revert(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> ChainRevert:
    with pytest.raises(ChainRevert) as info:
        fn(*args, **kwargs)
    assert info.value.name == name, info.value
    return info.value


# ---- registries -----------------------------------------------------------------------


def test_device_lifecycle_and_unauthorized_update(world: World) -> None:
    cbid = make_device(world, connectors=3)
    block = world.deployer.block_number()
    record = world.deployer.device(cbid, block)
    assert record is not None
    assert (record.manager, record.connector_count, record.active) == (world.manager.sender.address, 3, True)  # type: ignore[union-attr]
    assert (record.auth_salt, record.auth_hash, record.price_per_kwh) == (SALT, AUTH_HASH, 300_000)
    assert device_id_of(cbid) in world.deployer.device_ids(block)
    expect_revert("NotDeviceManager", world.driver.update_device, "setTariff", cbid, 1, 1)
    expect_revert("DeviceAlreadyExists", world.manager.create_device, cbid, location="", connector_count=1,
                  price_per_kwh=1, per_minute_fee=0, auth_salt=SALT, auth_hash=AUTH_HASH)
    expect_revert("ChargeBoxIdInvalid", world.manager.create_device, "bad/id", location="", connector_count=1,
                  price_per_kwh=1, per_minute_fee=0, auth_salt=SALT, auth_hash=AUTH_HASH)
    expect_revert("NotADeviceManagerAccount", world.driver.create_device, unique("CB"), location="",
                  connector_count=1, price_per_kwh=1, per_minute_fee=0, auth_salt=SALT, auth_hash=AUTH_HASH)
    world.manager.update_device("setTariff", cbid, 250_000, 10)
    world.manager.update_device("setActive", cbid, False)
    later = world.deployer.device(cbid, world.deployer.block_number())
    assert later is not None and (later.price_per_kwh, later.per_minute_fee, later.active) == (250_000, 10, False)
    # reads at the earlier block still see the earlier state
    assert world.deployer.device(cbid, block) == record
    assert world.deployer.device("no-such-box", block) is None


def test_device_auth_credential_is_scrypt_of_password(world: World) -> None:
    salt, auth_hash = new_auth_credential("s3cret-charger-password")
    assert auth_hash == hash_charger_password("s3cret-charger-password", salt) != hash_charger_password("other", salt)
    assert hashlib.scrypt(b"s3cret-charger-password", salt=salt, n=16384, r=8, p=1, dklen=32) == auth_hash
    cbid = unique("CB")
    world.manager.create_device(cbid, location="", connector_count=1, price_per_kwh=1, per_minute_fee=0,
                                auth_salt=salt, auth_hash=auth_hash)
    record = world.deployer.device(cbid, "latest")
    assert record is not None and hash_charger_password("s3cret-charger-password", record.auth_salt) == record.auth_hash
    with pytest.raises(ValueError):
        hash_charger_password("x", b"short")


def test_id_tags_are_hashed_revocable_and_unique(world: World) -> None:
    tag = unique("TAG")
    world.driver.register_id_tag(tag)
    record = world.deployer.id_tag(id_tag_hash(tag), "latest")
    assert record is not None and record.account == world.driver.sender.address and not record.revoked  # type: ignore[union-attr]
    other = world.new_actor()
    other.register_roles(1)
    expect_revert("IdTagAlreadyRegistered", other.register_id_tag, tag)
    expect_revert("NotIdTagOwner", other.revoke_id_tag, tag)
    world.driver.revoke_id_tag(tag)
    revoked = world.deployer.id_tag(id_tag_hash(tag), "latest")
    assert revoked is not None and revoked.revoked
    expect_revert("IdTagIsRevoked", world.driver.revoke_id_tag, tag)
    expect_revert("MissingRoles", world.manager.register_id_tag, unique("TAG"))


# ---- escrow ---------------------------------------------------------------------------


def test_settlement_pays_manager_and_refunds_rest(world: World) -> None:
    session_id, _ = open_session(world, deposit=20 * TOKEN)
    block = world.deployer.block_number()
    session = world.deployer.session(session_id, block)
    assert session is not None and session.status is SessionStatus.OPEN and session.deposit == 20 * TOKEN
    manager, driver = world.manager.sender.address, world.driver.sender.address  # type: ignore[union-attr]
    before = (world.deployer.token_balance(manager, block), world.deployer.token_balance(driver, block))
    assert settle(world, session_id, 12_000, 7 * TOKEN, settlement_sigs(world, session_id, 12_000, 7 * TOKEN)) == []
    after_block = world.deployer.block_number()
    assert world.deployer.token_balance(manager, after_block) == before[0] + 7 * TOKEN
    assert world.deployer.token_balance(driver, after_block) == before[1] + 13 * TOKEN
    settled = world.deployer.session(session_id, after_block)
    assert settled is not None and settled.status is SessionStatus.SETTLED
    assert (settled.energy_wh, settled.settled_amount) == (12_000, 7 * TOKEN)
    # double settlement: skipped (SKIP_CLOSED), nothing paid twice
    assert settle(world, session_id, 12_000, 7 * TOKEN, settlement_sigs(world, session_id, 12_000, 7 * TOKEN)) == [2]
    assert world.deployer.token_balance(manager, "latest") == before[0] + 7 * TOKEN


def test_settlement_revert_paths(world: World) -> None:
    session_id, _ = open_session(world, deposit=5 * TOKEN)
    amount = 4 * TOKEN
    sigs = settlement_sigs(world, session_id, 1000, amount)
    send = world.relayer.settle_batch
    entries = [(session_id, 1000, amount)]
    expect_revert("TooFewSignatures", send, entries, sigs[:2])
    expect_revert("DuplicateSigner", send, entries, [sigs[0], sigs[0], sigs[1]])
    expect_revert("SignersNotSorted", send, entries, [sigs[1], sigs[0], sigs[2]])
    outsider = settlement_sigs(world, session_id, 1000, amount, keys=world.validators[:2] + [world.outsider_key])
    expect_revert("SignerNotValidator", send, entries, outsider)
    wrong_chain = Domain(world.deployment.chain_id + 1, world.deployment.domain("Escrow").verifying_contract)
    expect_revert("SignerNotValidator", send, entries, settlement_sigs(world, session_id, 1000, amount, domain=wrong_chain))
    # a signature made for another contract (the Anchor's domain) does not count here
    expect_revert("SignerNotValidator", send, entries,
                  settlement_sigs(world, session_id, 1000, amount, domain=world.deployment.domain("Anchor")))
    high_s = bytearray(sigs[0])
    high_s[32:64] = (0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
                     - int.from_bytes(sigs[0][32:64], "big")).to_bytes(32, "big")
    expect_revert("SignatureSInvalid", send, entries, [bytes(high_s)] + sigs[1:])
    over = 5 * TOKEN + 1  # above the deposit: skipped (SKIP_AMOUNT), the session stays open
    assert settle(world, session_id, 1000, over, settlement_sigs(world, session_id, 1000, over)) == [3]
    unknown = b"\x01" * 32  # no such session: skipped (SKIP_UNKNOWN)
    assert settle(world, unknown, 1000, amount, settlement_sigs(world, unknown, 1000, amount)) == [1]
    session = world.deployer.session(session_id, "latest")
    assert session is not None and session.status is SessionStatus.OPEN
    assert settle(world, session_id, 1000, amount, sigs) == []  # all four signatures also fine: see anchor test


def test_open_session_checks(world: World) -> None:
    cbid = make_device(world, connectors=2)
    tag = unique("TAG")
    world.driver.register_id_tag(tag)
    world.driver.faucet_mint(world.driver.sender.address, TOKEN)  # type: ignore[union-attr]
    world.driver.approve(world.deployment.escrow, TOKEN)
    expect_revert("ConnectorInvalid", world.driver.open_session, cbid, 3, tag, TOKEN)
    expect_revert("IdTagNotValidForDriver", world.driver.open_session, cbid, 1, unique("TAG"), TOKEN)
    expect_revert("DepositInvalid", world.driver.open_session, cbid, 1, tag, 0)
    expect_revert("DepositInvalid", world.driver.open_session, cbid, 1, tag, 2**96)
    expect_revert("UnknownDevice", world.driver.open_session, "nope", 1, tag, TOKEN)
    expect_revert("InsufficientAllowance", world.driver.open_session, cbid, 1, tag, 2 * TOKEN)
    expected_id = world.driver.next_session_id(world.driver.sender.address, "latest")  # type: ignore[union-attr]
    session_id, _ = world.driver.open_session(cbid, 2, tag, TOKEN)
    assert session_id == expected_id
    world.manager.update_device("setActive", cbid, False)
    expect_revert("DeviceInactive", world.driver.open_session, cbid, 1, tag, TOKEN)


def test_refund_only_after_timeout_and_only_by_driver(world: World) -> None:
    session_id, _ = open_session(world, deposit=3 * TOKEN)
    expect_revert("RefundTooEarly", world.driver.refund, session_id)
    advance_time(world.w3, REFUND_TIMEOUT_S + 1)
    expect_revert("NotSessionDriver", world.relayer.refund, session_id)
    driver = world.driver.sender.address  # type: ignore[union-attr]
    before = world.deployer.token_balance(driver, "latest")
    world.driver.refund(session_id)
    assert world.deployer.token_balance(driver, "latest") == before + 3 * TOKEN
    expect_revert("SessionNotOpen", world.driver.refund, session_id)
    assert settle(world, session_id, 1, 1, settlement_sigs(world, session_id, 1, 1)) == [2]  # refunded: skipped


# ---- anchor ---------------------------------------------------------------------------


def test_anchor_batches_contiguous_and_replay_rejected(world: World) -> None:
    client = world.relayer
    start = client.next_batch_id("latest")
    first = client.next_first_height("latest")
    tree = MerkleTree([bytes([i]) * 32 for i in range(5)])
    batch = (start, tree.root, first, first + 9, 5)
    client.submit_anchor_batch(*batch, anchor_sigs(world, batch, keys=world.validators))
    stored = client.anchored_batch(start, "latest")
    assert stored is not None and (stored.root, stored.first_height, stored.last_height) == (tree.root, first, first + 9)
    assert client.next_batch_id("latest") == start + 1
    expect_revert("BatchAlreadyAnchored", client.submit_anchor_batch, *batch, anchor_sigs(world, batch))
    gap = (start + 1, tree.root, first + 11, first + 12, 5)
    expect_revert("HeightsNotContiguous", client.submit_anchor_batch, *gap, anchor_sigs(world, gap))
    skip = (start + 2, tree.root, first + 10, first + 12, 5)
    expect_revert("BatchIdOutOfOrder", client.submit_anchor_batch, *skip, anchor_sigs(world, skip))
    empty_bad = (start + 1, b"\x00" * 32, first + 10, first + 10, 1)
    expect_revert("RootEventCountMismatch", client.submit_anchor_batch, *empty_bad, anchor_sigs(world, empty_bad))
    nxt = (start + 1, b"\x00" * 32, first + 10, first + 10, 0)
    expect_revert("TooFewSignatures", client.submit_anchor_batch, *nxt, anchor_sigs(world, nxt)[:2])
    wrong_chain = Domain(world.deployment.chain_id + 1, world.deployment.domain("Anchor").verifying_contract)
    expect_revert("SignerNotValidator", client.submit_anchor_batch, *nxt, anchor_sigs(world, nxt, domain=wrong_chain))
    client.submit_anchor_batch(*nxt, anchor_sigs(world, nxt))
    for index in range(5):
        proof = tree.proof(index)
        assert client.verify_inclusion(start, bytes([index]) * 32, proof.siblings, proof.directions, "latest")
    proof = tree.proof(0)
    assert not client.verify_inclusion(start, b"\x09" * 32, proof.siblings, proof.directions, "latest")
    assert not client.verify_inclusion(start + 1, bytes(32), [], 0, "latest")  # zero root never verifies
    assert not client.verify_inclusion(start + 5, bytes(32), [], 0, "latest")  # unknown batch
    assert client.anchored_batch(start + 5, "latest") is None
    expect_revert("UnknownBatch", client.read, "Anchor", "batch", start + 5, block="latest")


def test_anchor_verify_inclusion_matches_shared_vectors(world: World) -> None:
    """The contract accepts exactly the shared vectors' proofs (anchoring/MERKLE.md)."""
    cases = [c for c in json.loads(VECTORS.read_text())["cases"] if c["leaves"]]
    client = world.relayer
    checked = 0
    for case in cases[:8]:
        batch_id = client.next_batch_id("latest")
        first = client.next_first_height("latest")
        root = bytes.fromhex(case["root"][2:])
        batch = (batch_id, root, first, first, int(case["leaf_count"]))
        client.submit_anchor_batch(*batch, anchor_sigs(world, batch))
        for leaf in case["leaves"]:
            event_id = bytes.fromhex(leaf["event_id"][2:])
            proof = [bytes.fromhex(p[2:]) for p in leaf["proof"]]
            directions = leaf["directions"]
            assert client.verify_inclusion(batch_id, event_id, proof, directions, "latest")
            assert not client.verify_inclusion(batch_id, event_id, proof, directions | (1 << len(proof)), "latest")
            if proof:
                assert not client.verify_inclusion(batch_id, event_id, proof, directions ^ 1, "latest")
                # an inner node presented as an event id never verifies (leaf tag 0x00)
                assert not client.verify_inclusion(batch_id, proof[-1], proof[:-1], directions, "latest")
            checked += 1
    assert checked >= 20


# ---- validator set --------------------------------------------------------------------


def test_validator_set_update_needs_quorum_of_current_set(world: World) -> None:
    client = world.relayer
    state = client.validator_set("latest")
    assert state.quorum == 3 and len(state.validators) == 4
    stays = world.validators[0]
    new_keys = validator_keys(6, seed="epoch1")
    new_set = sorted(Web3.to_checksum_address(k.address) for k in [*new_keys, stays])
    domain = world.deployment.domain("ValidatorSet")
    digest = typed_digest(domain, VALIDATOR_SET_UPDATE_TYPE, [state.epoch + 1, validators_hash(new_set)])
    expect_revert("SignerNotValidator", client.update_validators, state.epoch + 1, new_set,
                  quorum_signatures(new_keys[:5], digest))
    expect_revert("EpochMismatch", client.update_validators, state.epoch + 2, new_set,
                  quorum_signatures(world.validators[:3], digest))
    unsorted = typed_digest(domain, VALIDATOR_SET_UPDATE_TYPE, [state.epoch + 1, validators_hash(new_set[::-1])])
    expect_revert("ValidatorsNotSorted", client.update_validators, state.epoch + 1, new_set[::-1],
                  quorum_signatures(world.validators[:3], unsorted))
    client.update_validators(state.epoch + 1, new_set, quorum_signatures(world.validators[:3], digest))
    after = client.validator_set("latest")
    assert after.epoch == state.epoch + 1 and after.addresses() == tuple(new_set) and after.quorum == 5
    info = {v.address: v for v in after.validators}
    assert info[Web3.to_checksum_address(stays.address)].peer_id == b"peer-0"  # stayed: kept its info
    assert sum(v.peer_id == b"" for v in after.validators) == 6  # new: publish their own
    newcomer = world.client_for(new_keys[0].secret.hex())
    fund(world.w3, Web3.to_checksum_address(new_keys[0].address))
    newcomer.set_validator_info(b"peer-new-0", "ws://node0.example:8080/ocpp")
    published = {v.address: v for v in client.validator_set("latest").validators}
    assert published[Web3.to_checksum_address(new_keys[0].address)].endpoint == "ws://node0.example:8080/ocpp"
    # the old set can no longer anchor; the new one can, with 5 of 7
    batch = (client.next_batch_id("latest"), b"\x00" * 32, client.next_first_height("latest"),
             client.next_first_height("latest"), 0)
    expect_revert("TooFewSignatures", client.submit_anchor_batch, *batch,
                  anchor_sigs(world, batch, keys=world.validators))
    expect_revert("SignerNotValidator", client.submit_anchor_batch, *batch,
                  anchor_sigs(world, batch, keys=new_keys[:4] + [world.validators[1]]))
    client.submit_anchor_batch(*batch, anchor_sigs(world, batch, keys=new_keys[:5]))
    # restore the 4-validator set for other tests of this module
    old_set = [Web3.to_checksum_address(k.address) for k in world.validators]
    back = typed_digest(domain, VALIDATOR_SET_UPDATE_TYPE, [after.epoch + 1, validators_hash(old_set)])
    client.update_validators(after.epoch + 1, old_set, quorum_signatures(new_keys[:5], back))
    restored = client.validator_set("latest")
    assert restored.addresses() == tuple(old_set)
    assert [v.peer_id for v in restored.validators].count(b"peer-0") == 1


def test_deployment_file_round_trip(world: World, tmp_path: Path) -> None:
    path = tmp_path / "deployment.json"
    world.deployment.save(path)
    assert Deployment.load(path) == world.deployment
    world.deployer.check_deployment()
    moved = dataclasses.replace(world.deployment, chain_id=world.deployment.chain_id + 1)
    with pytest.raises(ChainError):
        ChainClient(world.w3, moved).check_deployment()
    empty = dataclasses.replace(world.deployment, anchor=Web3.to_checksum_address("0x" + "ab" * 20))
    with pytest.raises(ChainError):
        ChainClient(world.w3, empty).check_deployment()
