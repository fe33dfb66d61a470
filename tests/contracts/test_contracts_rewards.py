"""The Rewards contract: funding, quorum-signed distribution, and hostile submitters (in-process chain)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import TOKEN, fund, quorum_signatures, validator_keys
from eth_account import Account
from web3 import Web3

from anchoring.chain import (
    ChainClient,
    ChainRevert,
    TransactionSender,
    ValidatorSpec,
    connect,
    deploy_all,
)
from anchoring.rewards import RewardSubject, distribute, paid_to
from anchoring.rewards import fund as fund_pool
from devsen.ledger.uptime import split_pool
from primitives.eip712 import Domain

BUDGET = 1_000 * TOKEN


@pytest.fixture(scope="module")
def net() -> tuple[ChainClient, ChainClient, list, Domain]:  # type: ignore[type-arg]
    w3 = connect("tester")
    deployer, funder = Account.create(), Account.create()
    for account in (deployer, funder):
        fund(w3, account.address)
    keys = validator_keys(4)
    deployment = deploy_all(
        TransactionSender(w3, deployer.key),
        [ValidatorSpec(Web3.to_checksum_address(k.address)) for k in keys],
        faucet=True,
        reward_epoch_budget=BUDGET,
    )
    client = ChainClient(w3, deployment, TransactionSender(w3, funder.key))
    client.faucet_mint(funder.address, 1_000_000 * TOKEN)
    return client, ChainClient(w3, deployment), keys, deployment.domain("Rewards")


def owners(n: int) -> list[str]:
    """n fresh addresses in the order a RewardSubject keeps its payouts (by address bytes; sorting
    the mixed-case checksum strings differs now and then, which made the amounts' order random)."""
    return sorted((Account.create().address for _ in range(n)), key=lambda a: bytes.fromhex(a[2:]))


def subject_for(epoch: int, amounts: list[int]) -> RewardSubject:
    return RewardSubject.from_payouts(epoch, list(zip(owners(len(amounts)), amounts, strict=True)))


def expect_revert(name: str | set[str], fn, *args) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ChainRevert) as info:
        fn(*args)
    assert info.value.name in ({name} if isinstance(name, str) else name), info.value


FOREIGN = {"SignerNotValidator", "SignersNotSorted"}  # a signature over another digest recovers elsewhere


def test_fund_and_pay_a_quorum_signed_epoch(net) -> None:  # type: ignore[no-untyped-def]
    client, reader, keys, domain = net
    fund_pool(client, 2 * BUDGET)
    assert reader.read("Rewards", "pool", block="latest") == 2 * BUDGET
    rewards = split_pool(BUDGET, [(o, w) for o, w in zip(owners(3), (5, 3, 1), strict=True)])
    subject = RewardSubject.from_payouts(7, [(r.owner, r.amount) for r in rewards])
    sigs = quorum_signatures(keys[:3], subject.digest(domain))  # 3 of 4 is a quorum
    assert reader.read("Rewards", "distributionDigest", 7, 0, 1, *_arrays(subject), block="latest") == subject.digest(domain)
    receipt = distribute(client, subject, sigs)
    for owner, amount in subject.payouts:
        assert paid_to(reader, 7, "0x" + owner.hex()) == amount
        assert reader.token_balance(Web3.to_checksum_address(owner), "latest") == amount
    assert reader.read("Rewards", "pool", block="latest") == 2 * BUDGET - subject.total
    print(f"distribute: 3 payouts, 3 signatures: {receipt.gas_used} gas")
    expect_revert("RewardPartAlreadyPaid", distribute, client, subject, sigs)  # replay


def _arrays(subject: RewardSubject) -> tuple[list[str], list[int]]:
    from anchoring.rewards import owners_and_amounts

    return owners_and_amounts(subject)


def test_non_quorum_and_outsider_signatures_fail(net) -> None:  # type: ignore[no-untyped-def]
    client, _reader, keys, domain = net
    fund_pool(client, BUDGET)
    subject = subject_for(8, [10, 20])
    digest = subject.digest(domain)
    expect_revert("TooFewSignatures", distribute, client, subject, quorum_signatures(keys[:2], digest))
    outsiders = validator_keys(3, seed="outsider")
    expect_revert("SignerNotValidator", distribute, client, subject, quorum_signatures(outsiders, digest))


def test_wrong_domain_or_tampered_amount_fails(net) -> None:  # type: ignore[no-untyped-def]
    client, _reader, keys, domain = net
    subject = subject_for(9, [10, 20])
    anchor_domain = Domain(domain.chain_id, bytes.fromhex(client.deployment.anchor[2:]))
    expect_revert(FOREIGN, distribute, client, subject, quorum_signatures(keys, subject.digest(anchor_domain)))
    signed = quorum_signatures(keys, subject.digest(domain))
    inflated = replace(subject, payouts=((subject.payouts[0][0], 10_000), subject.payouts[1]))
    expect_revert(FOREIGN, distribute, client, inflated, signed)


def test_sum_above_budget_or_pool_fails(net) -> None:  # type: ignore[no-untyped-def]
    client, reader, keys, domain = net
    above = subject_for(10, [BUDGET, 1])
    expect_revert("RewardAboveBudget", distribute, client, above, quorum_signatures(keys, above.digest(domain)))
    pool = reader.read("Rewards", "pool", block="latest")
    # drain the pool with budget-sized epochs, then one more is above the pool
    epoch = 11
    while pool >= BUDGET:
        full = subject_for(epoch, [BUDGET])
        distribute(client, full, quorum_signatures(keys, full.digest(domain)))
        pool -= BUDGET
        epoch += 1
    short = subject_for(epoch, [pool + 1])
    expect_revert("RewardAbovePool", distribute, client, short, quorum_signatures(keys, short.digest(domain)))


def test_unsorted_or_zero_payouts_refused_before_signing() -> None:
    a, b = bytes(19) + b"\x01", bytes(19) + b"\x02"
    with pytest.raises(ValueError):
        RewardSubject(1, ((b, 1), (a, 1)))
    with pytest.raises(ValueError):
        RewardSubject(1, ((a, 0),))
    with pytest.raises(ValueError):
        RewardSubject(1, ((a, 1), (a, 1)))


def test_wallet_rewards_shows_earned_and_paid(net) -> None:  # type: ignore[no-untyped-def]
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from devsen.ledger.uptime import DeviceUptime, OwnerReward, RewardDistribution
    from devsen.rewards_view import rewards_document
    from devsen.wallet import owner_rewards

    client, reader, keys, domain = net
    owner = owners(1)[0].lower()
    dist = RewardDistribution(40, 3_600_000, BUDGET, 7_200_000, (OwnerReward(owner, BUDGET // 2, 3_600_000),),
                              (DeviceUptime("CP-9", owner, 2, 3_600_000, 3_600_000),))
    fund_pool(client, BUDGET)
    subject = RewardSubject.from_payouts(40, [(owner, BUDGET // 2)])
    distribute(client, subject, quorum_signatures(keys, subject.digest(domain)))

    class Node(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            body = json.dumps(rewards_document([dist], self.path.rsplit("/", 1)[1])).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Node)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        text, doc = owner_rewards(reader, f"http://127.0.0.1:{server.server_address[1]}", owner)
    finally:
        server.shutdown()
        thread.join(timeout=5)
    assert doc["epochs"][0]["amount_units"] == doc["epochs"][0]["paid_units"] == BUDGET // 2
    assert doc["epochs"][0]["devices"][0]["uptime_ppm"] == 500_000
    assert "CP-9: 2 connectors, online 100.00%, connectors up 50.00%" in text
    with pytest.raises(ValueError, match="--node"):
        owner_rewards(reader, "http://127.0.0.1:9", owner)


def test_attestation_path_quorum_pays_and_hostile_attestations_fail(net) -> None:  # type: ignore[no-untyped-def]
    """Validators attest a reward subject (payload 0xA5); the book's quorum is what the contract pays."""
    from anchoring.attestations import AttestationError, attest, decode_attestation
    from anchoring.batches import AttestationBook

    client, reader, keys, domain = net
    fund_pool(client, BUDGET)
    subject = subject_for(50, [7, 9, 11])
    other = Domain(domain.chain_id, bytes.fromhex(client.deployment.escrow[2:]))
    book = AttestationBook([k.address for k in keys], other, other, domain)
    book.expect(subject)
    assert book.open_subjects() == [subject]
    quorum = None
    for height, key in enumerate(keys[:3], start=1):
        payload = attest(subject, key, domain).encode()
        assert payload[0] == 0xA5
        decoded = decode_attestation(payload)
        assert decoded.subject == subject
        quorum = book.on_committed(decoded, height) or quorum
    assert quorum is not None and len(quorum.signatures) == 3
    distribute(client, quorum.subject, quorum.signatures)  # type: ignore[arg-type]
    assert paid_to(reader, 50, "0x" + subject.payouts[0][0].hex()) == 7

    # hostile: other terms, another domain, an outsider, garbage, a book without Rewards
    tampered = replace(subject, payouts=((subject.payouts[0][0], 8), *subject.payouts[1:]))
    book.expect(subject_for(51, [1]))
    with pytest.raises(AttestationError):
        book.check(attest(tampered, keys[3], domain))
    fresh = subject_for(52, [1])
    book.expect(fresh)
    with pytest.raises(AttestationError):
        book.check(attest(fresh, keys[3], other))
    with pytest.raises(AttestationError):
        book.check(attest(fresh, validator_keys(1, seed="outsider")[0], domain))
    good = attest(fresh, keys[0], domain).encode()
    for bad in (good[:-1], good + b"\x00", b"\xa5" + b"\xff" * 40, b"\xa5" + b"\x00" * 20_000):
        with pytest.raises(AttestationError):
            decode_attestation(bad)
    bare = AttestationBook([k.address for k in keys], other, other)
    bare.expect(fresh)
    with pytest.raises(AttestationError, match="no Rewards contract"):
        bare.check(decode_attestation(good))


def test_more_owners_than_one_transaction_pays_is_refused_before_signing() -> None:
    from anchoring.rewards import MAX_PAYOUTS

    too_many = [((i + 1).to_bytes(20, "big"), 1) for i in range(MAX_PAYOUTS + 1)]
    with pytest.raises(ValueError, match="at most"):
        RewardSubject(1, tuple(too_many))
    assert len(RewardSubject(1, tuple(too_many[:MAX_PAYOUTS])).payouts) == MAX_PAYOUTS


def _random_owners(n: int) -> list[str]:
    import os

    return ["0x" + os.urandom(20).hex() for _ in range(n)]


def _send_part(client: ChainClient, epoch: int, part: int, parts: int, subject: RewardSubject,
               sigs: list[bytes]) -> None:
    """`distribute` with any (part, parts), bypassing RewardSubject's own checks (a hostile submitter)."""
    from anchoring.rewards import owners_and_amounts

    client.send("Rewards", "distribute", epoch, part, parts, *owners_and_amounts(subject), sigs, gas=3_000_000)


def test_an_epoch_of_450_owners_is_paid_in_3_parts_each_once(net) -> None:  # type: ignore[no-untyped-def]
    from anchoring.rewards import MAX_PAYOUTS, reward_parts

    client, reader, keys, domain = net
    fund_pool(client, 2 * BUDGET)
    epoch, amount = 60, BUDGET // 1_000
    parts = reward_parts(epoch, [(o, amount) for o in _random_owners(450)])
    assert [(p.part, p.parts, len(p.payouts)) for p in parts] == [(0, 3, 200), (1, 3, 200), (2, 3, 50)]
    sigs = [quorum_signatures(keys[:3], p.digest(domain)) for p in parts]
    digest = reader.read("Rewards", "distributionDigest", epoch, 1, 3, *_arrays(parts[1]), block="latest")
    assert digest == parts[1].digest(domain)
    # hostile: part 1's signatures on part 0's payouts (a forged part), and a partial quorum
    expect_revert(FOREIGN, distribute, client, parts[0], sigs[1])
    expect_revert("TooFewSignatures", distribute, client, parts[0], sigs[0][:2])
    gas = []
    for part, part_sigs in zip((parts[2], parts[0], parts[1]), (sigs[2], sigs[0], sigs[1]), strict=True):  # any order
        assert not reader.read("Rewards", "epochPaid", epoch, block="latest")
        gas.append(distribute(client, part, part_sigs).gas_used)
        expect_revert("RewardPartAlreadyPaid", distribute, client, part, part_sigs)  # replayed part
    assert reader.read("Rewards", "epochPaid", epoch, block="latest")
    assert reader.read("Rewards", "epochTotal", epoch, block="latest") == 450 * amount
    for part in parts:
        for owner, paid in part.payouts[:: MAX_PAYOUTS // 4]:
            assert paid_to(reader, epoch, "0x" + owner.hex()) == paid
    print(f"distribute per part: {gas} gas (50, 200, 200 payouts)")


def test_parts_above_the_budget_or_out_of_range_are_refused(net) -> None:  # type: ignore[no-untyped-def]
    client, reader, keys, domain = net
    fund_pool(client, 2 * BUDGET)
    epoch = 70
    # a quorum-signed split whose parts together exceed the epoch budget: the second part is refused
    first = RewardSubject.from_payouts(epoch, [(o, BUDGET * 6 // 10) for o in _random_owners(1)])
    first = replace(first, part=0, parts=2)
    second = replace(RewardSubject.from_payouts(epoch, [(o, BUDGET * 6 // 10) for o in _random_owners(1)]),
                     part=1, parts=2)
    distribute(client, first, quorum_signatures(keys, first.digest(domain)))
    expect_revert("RewardAboveBudget", distribute, client, second, quorum_signatures(keys, second.digest(domain)))
    assert reader.read("Rewards", "epochTotal", epoch, block="latest") == BUDGET * 6 // 10
    # the epoch's part count is fixed by its first paid part
    other = replace(second, payouts=((second.payouts[0][0], 1),), part=1, parts=3)
    expect_revert("RewardPartsMismatch", distribute, client, other, quorum_signatures(keys, other.digest(domain)))
    # part index out of range (signed as the contract would hash it, so only the range check refuses)
    subject = RewardSubject.from_payouts(71, [(o, 1) for o in _random_owners(1)])
    for part, parts in ((3, 3), (0, 0), (0, 65), (2**32 - 1, 2)):
        digest = reader.read("Rewards", "distributionDigest", 71, part, parts, *_arrays(subject), block="latest")
        with pytest.raises(ChainRevert) as info:
            _send_part(client, 71, part, parts, subject, quorum_signatures(keys, digest))
        assert info.value.name == "RewardPartOutOfRange", info.value
    with pytest.raises(ValueError, match="part"):
        replace(subject, part=3, parts=3)  # and the node never signs one


def test_the_gas_estimate_covers_the_first_part_of_a_fresh_contract() -> None:
    """The costliest single payout: a new deployment's first part (every counter zero-to-nonzero)."""
    w3 = connect("tester")
    deployer, funder = Account.create(), Account.create()
    for account in (deployer, funder):
        fund(w3, account.address)
    keys = validator_keys(4)
    deployment = deploy_all(TransactionSender(w3, deployer.key),
                            [ValidatorSpec(Web3.to_checksum_address(k.address)) for k in keys],
                            faucet=True, reward_epoch_budget=BUDGET)
    client = ChainClient(w3, deployment, TransactionSender(w3, funder.key))
    client.faucet_mint(funder.address, BUDGET)
    fund_pool(client, BUDGET)
    subject = RewardSubject.from_payouts(1, [(owners(1)[0], BUDGET)])
    receipt = distribute(client, subject, quorum_signatures(keys[:3], subject.digest(deployment.domain("Rewards"))))
    assert paid_to(client, 1, "0x" + subject.payouts[0][0].hex()) == BUDGET
    print(f"first part of a fresh contract, 1 payout: {receipt.gas_used} gas")
