"""ValidatorSet staking: candidates bond ChargeToken, quorum-approved sets must be staked,
leaving validators unbond and withdraw after the period, and double-signing is slashed once.

Hostile cases: an unstaked newcomer, withdrawal before the period, forged and non-conflicting
evidence, votes of different heights or rounds, replayed evidence, a non-validator signer and a
token that re-enters `withdraw`. Gas per evidence submission goes to bench/results/slashing.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import (
    TOKEN,
    World,
    advance_time,
    build_world,
    fund,
    quorum_signatures,
    validator_keys,
    write_gas_figures,
)
from test_contracts_core import expect_revert
from web3 import Web3

from anchoring.chain import ChainClient, StakingParams, TransactionSender
from consensus.signing import VALIDATOR_SET_UPDATE_TYPE
from consensus.types import Vote, VoteType
from contracts import load_artifact
from contracts.build import compile_contracts
from primitives.eip712 import Domain, SigningKey, typed_digest
from primitives.hashing import validators_hash

MIN_STAKE = 1_000 * TOKEN
UNBONDING_S = 7 * 24 * 3600
TERMS = StakingParams(min_stake=MIN_STAKE, unbonding_s=UNBONDING_S, slash_bps=5_000, reporter_share_bps=1_000)
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "slashing.json"
HASH_A, HASH_B, HASH_C = b"\xaa" * 32, b"\xbb" * 32, b"\xcc" * 32
_gas: dict[str, Any] = {}


@pytest.fixture
def staked(chain: Web3) -> World:
    """A deployment with a minimum stake; the 4 bootstrap validators bond it."""
    world = build_world(chain, staking=TERMS)
    for key in world.validators:
        _bond(world, key, MIN_STAKE)
    return world


def _as(world: World, key: SigningKey) -> ChainClient:
    fund(world.w3, Web3.to_checksum_address(key.address))
    return world.client_for(key.secret.hex())


def _bond(world: World, key: SigningKey, amount: int, *, candidate: bool = False) -> ChainClient:
    client = _as(world, key)
    client.faucet_mint(client.sender.address, amount)  # type: ignore[union-attr]
    client.approve(world.deployment.validator_set, amount)
    if candidate:
        _gas["registerCandidate"] = client.register_candidate(amount, b"peer-new", "ws://new/ocpp").gas_used
    else:
        client.bond(amount)
    return client


def _sorted(addresses: list[str] | list[bytes]) -> list[str]:
    return sorted((Web3.to_checksum_address(a) for a in addresses), key=lambda a: bytes.fromhex(a[2:]))


def _update(world: World, signers: list[SigningKey], epoch: int, new_set: list[str]) -> int:
    digest = typed_digest(world.deployment.domain("ValidatorSet"), VALIDATOR_SET_UPDATE_TYPE,
                          [epoch, validators_hash(new_set)])
    receipt = world.relayer.update_validators(epoch, new_set, quorum_signatures(signers, digest))
    return receipt.gas_used


def _vote(world: World, key: SigningKey, block_hash: bytes, *, height: int = 10, round: int = 0,
          vote_type: VoteType = VoteType.PRECOMMIT, domain: Domain | None = None) -> Vote:
    return Vote.sign(key, domain or world.deployment.domain("ValidatorSet"), vote_type, height, round, block_hash)


def _submit(client: ChainClient, a: Vote, b: Vote) -> int:
    receipt = client.submit_vote_evidence(int(a.vote_type), a.height, a.round, a.block_hash, a.signature,
                                          b.block_hash, b.signature)
    return receipt.gas_used


def test_candidate_joins_only_with_stake(staked: World) -> None:
    keys = staked.validators
    newcomer, unstaked = validator_keys(2, seed="candidate")
    # below the minimum: the registration itself is refused
    poor = _as(staked, newcomer)
    poor.faucet_mint(poor.sender.address, MIN_STAKE)  # type: ignore[union-attr]
    poor.approve(staked.deployment.validator_set, MIN_STAKE)
    expect_revert("InsufficientStake", poor.register_candidate, MIN_STAKE - 1, b"p", "ws://p/ocpp")
    _bond(staked, newcomer, MIN_STAKE, candidate=True)
    # a quorum cannot admit an account without stake
    with_unstaked = _sorted([*(k.address for k in keys), unstaked.address])
    revert = expect_revert("InsufficientStake", _update, staked, keys[:3], 1, with_unstaked)
    assert Web3.to_checksum_address(revert.args_decoded[1]) == Web3.to_checksum_address(unstaked.address)
    # the staked candidate is admitted by the existing quorum path
    five = _sorted([*(k.address for k in keys), newcomer.address])
    _gas["updateValidators_5_staked"] = _update(staked, keys[:3], 1, five)
    assert staked.relayer.validator_set("latest").addresses() == tuple(five)
    stake = staked.relayer.stake(newcomer.address, "latest")
    assert stake.stake == MIN_STAKE and stake.was_validator and stake.withdrawable_at == 0


def test_a_sponsor_bonds_for_an_account_that_alone_unbonds(staked: World) -> None:
    candidate = validator_keys(1, seed="sponsored")[0]
    sponsor = staked.new_actor()
    sponsor.faucet_mint(sponsor.sender.address, MIN_STAKE)  # type: ignore[union-attr]
    sponsor.approve(staked.deployment.validator_set, MIN_STAKE)
    sponsor.send("ValidatorSet", "bondFor", Web3.to_checksum_address(candidate.address), MIN_STAKE, gas=120_000)
    assert staked.relayer.stake(candidate.address, "latest").stake == MIN_STAKE
    expect_revert("NothingToWithdraw", sponsor.begin_unbonding)  # the sponsor owns no stake
    _as(staked, candidate).begin_unbonding()


def test_deploy_bonds_the_bootstrap_set(chain: Web3) -> None:
    from anchoring.chain import ValidatorSpec, deploy_all

    world = build_world(chain)
    keys = validator_keys(3, seed="genesis-stake")
    assert world.deployer.sender is not None
    deployment = deploy_all(world.deployer.sender, [ValidatorSpec(Web3.to_checksum_address(k.address)) for k in keys],
                            token_supply=3 * MIN_STAKE, staking=TERMS, genesis_stake=MIN_STAKE)
    client = ChainClient(world.w3, deployment)
    assert all(client.stake(k.address, "latest").stake == MIN_STAKE for k in keys)
    assert client.staking_terms("latest").min_stake == MIN_STAKE
    assert client.validator_set(deployment.deploy_block).addresses()  # the genesis set reads at deploy_block
    with pytest.raises(ValueError, match="genesis_stake"):
        deploy_all(world.deployer.sender, [ValidatorSpec(Web3.to_checksum_address(k.address)) for k in keys],
                   token_supply=MIN_STAKE, staking=TERMS, genesis_stake=MIN_STAKE)


def test_bootstrap_validators_must_bond_before_the_first_update(chain: Web3) -> None:
    world = build_world(chain, staking=TERMS)  # nobody bonded
    keys = world.validators
    same = _sorted([k.address for k in keys])
    expect_revert("InsufficientStake", _update, world, keys[:3], 1, same)


def test_validator_leaves_and_withdraws_after_unbonding(staked: World) -> None:
    keys = staked.validators
    leaver = _as(staked, keys[3])
    address = leaver.sender.address  # type: ignore[union-attr]
    expect_revert("StillAValidator", leaver.begin_unbonding)
    expect_revert("NotUnbonding", leaver.withdraw_stake)
    _update(staked, keys[:3], 1, _sorted([k.address for k in keys[:3]]))
    before = staked.relayer.token_balance(address, "latest")
    _gas["beginUnbonding"] = leaver.begin_unbonding().gas_used
    expect_revert("AlreadyUnbonding", leaver.begin_unbonding)
    expect_revert("UnbondingNotOver", leaver.withdraw_stake)  # hostile: withdrawal before the period
    # an unbonding account can neither add stake nor be voted back in
    expect_revert("AlreadyUnbonding", leaver.bond, 1)
    expect_revert("InsufficientStake", _update, staked, keys[:3], 2, _sorted([k.address for k in keys]))
    advance_time(staked.w3, UNBONDING_S - 120)
    expect_revert("UnbondingNotOver", leaver.withdraw_stake)
    advance_time(staked.w3, 180)
    _gas["withdraw"] = leaver.withdraw_stake().gas_used
    assert staked.relayer.token_balance(address, "latest") == before + MIN_STAKE
    assert staked.relayer.stake(address, "latest").stake == 0
    expect_revert("NotUnbonding", leaver.withdraw_stake)  # paid once


def test_double_sign_is_slashed_once(staked: World) -> None:
    offender = staked.validators[1]
    reporter = staked.new_actor()
    a, b = _vote(staked, offender, HASH_A), _vote(staked, offender, HASH_B)
    _gas["submitVoteEvidence"] = _submit(reporter, a, b)
    slashed = MIN_STAKE * 5_000 // 10_000
    reward = slashed * 1_000 // 10_000
    assert staked.relayer.stake(offender.address, "latest").stake == MIN_STAKE - slashed
    assert staked.relayer.token_balance(reporter.sender.address, "latest") == reward  # type: ignore[union-attr]
    assert staked.relayer.read("ValidatorSet", "totalBurnt", block="latest") == slashed - reward
    assert staked.relayer.offence_slashed(offender.address, 2, 10, 0, "latest")
    # replayed: the same pair, the pair swapped, a third block for the same slot
    expect_revert("EvidenceAlreadySubmitted", _submit, reporter, a, b)
    expect_revert("EvidenceAlreadySubmitted", _submit, staked.new_actor(), b, a)
    expect_revert("EvidenceAlreadySubmitted", _submit, reporter, a, _vote(staked, offender, HASH_C))
    # a separate offence (prevotes of that slot, a nil vote against a block vote) slashes again
    nil = _vote(staked, offender, b"\x00" * 32, vote_type=VoteType.PREVOTE)
    _submit(reporter, nil, _vote(staked, offender, HASH_A, vote_type=VoteType.PREVOTE))
    assert staked.relayer.stake(offender.address, "latest").stake == (MIN_STAKE - slashed) // 2
    # a slashed validator falls below the minimum: the quorum cannot keep it in the next set
    expect_revert("InsufficientStake", _update, staked, staked.validators[:3], 1,
                  _sorted([k.address for k in staked.validators]))


def test_evidence_that_proves_nothing_is_refused(staked: World) -> None:
    keys = staked.validators
    offender, other = keys[0], keys[2]
    reporter = staked.new_actor()
    vote = _vote(staked, offender, HASH_A)
    expect_revert("EvidenceNotConflicting", _submit, reporter, vote, vote)  # the same vote twice
    # votes of different heights, rounds or types are no double-sign: the second one, read at
    # the first one's slot, recovers to some other address
    for kwargs in ({"height": 11}, {"round": 1}, {"vote_type": VoteType.PREVOTE}):
        later = _vote(staked, offender, HASH_B, **kwargs)
        expect_revert("EvidenceSignersDiffer", _submit, reporter, vote, later)
    # two validators, one vote each
    expect_revert("EvidenceSignersDiffer", _submit, reporter, vote, _vote(staked, other, HASH_B))
    # forged: a flipped byte, a high-s twin, garbage length
    forged = Vote(vote.vote_type, vote.height, vote.round, HASH_B, vote.validator,
                  vote.signature[:40] + bytes([vote.signature[40] ^ 1]) + vote.signature[41:])
    expect_revert("EvidenceSignersDiffer", _submit, reporter, vote, forged)
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    b = _vote(staked, offender, HASH_B)
    high_s = b.signature[:32] + (n - int.from_bytes(b.signature[32:64], "big")).to_bytes(32, "big") \
        + bytes([55 - b.signature[64]])
    expect_revert("SignatureSInvalid", reporter.submit_vote_evidence, 2, 10, 0, HASH_A, vote.signature, HASH_B, high_s)
    expect_revert("SignatureLengthInvalid", reporter.submit_vote_evidence, 2, 10, 0, HASH_A, vote.signature,
                  HASH_B, b.signature[:64])
    expect_revert("EvidenceVoteTypeInvalid", reporter.submit_vote_evidence, 3, 10, 0, HASH_A, vote.signature,
                  HASH_B, b.signature)
    # a non-validator's double-sign, and a validator's votes signed for another network
    outsider = staked.outsider_key
    expect_revert("EvidenceSignerNeverValidator", _submit, reporter, _vote(staked, outsider, HASH_A),
                  _vote(staked, outsider, HASH_B))
    elsewhere = Domain(staked.deployment.chain_id + 1, bytes.fromhex(staked.deployment.validator_set[2:]))
    # (read under this network's domain each recovers to an unrelated address)
    expect_revert("EvidenceSignersDiffer", _submit, reporter, _vote(staked, offender, HASH_A, domain=elsewhere),
                  _vote(staked, offender, HASH_B, domain=elsewhere))
    for key in keys:
        assert staked.relayer.stake(key.address, "latest").stake == MIN_STAKE  # nobody was slashed


def test_evidence_reaches_an_unbonding_validator_but_not_a_withdrawn_one(staked: World) -> None:
    keys = staked.validators
    leaver = _as(staked, keys[3])
    _update(staked, keys[:3], 1, _sorted([k.address for k in keys[:3]]))
    leaver.begin_unbonding()
    reporter = staked.new_actor()
    _submit(reporter, _vote(staked, keys[3], HASH_A, height=5), _vote(staked, keys[3], HASH_B, height=5))
    assert staked.relayer.stake(keys[3].address, "latest").stake == MIN_STAKE // 2
    advance_time(staked.w3, UNBONDING_S + 60)
    leaver.withdraw_stake()
    expect_revert("NothingToSlash", _submit, reporter, _vote(staked, keys[3], HASH_A, height=6),
                  _vote(staked, keys[3], HASH_B, height=6))


def test_withdraw_cannot_be_reentered(chain: Web3, tmp_path: Path) -> None:
    """A stake token that calls withdraw() again from inside the payout gets Reentrancy; the
    stake is paid once."""
    source = Path(__file__).parent / "hostile"
    artifact = compile_contracts(source, ("ReentrantToken",))["ReentrantToken"]
    world = build_world(chain)
    sender: TransactionSender = world.deployer.sender  # type: ignore[assignment]
    token_address = sender.deploy(artifact["abi"], artifact["bytecode"], (), gas=1_500_000).contract_address
    assert token_address is not None
    keys = validator_keys(1, seed="reentry")
    vs_artifact = load_artifact("ValidatorSet")
    vs_address = sender.deploy(
        vs_artifact["abi"], vs_artifact["bytecode"],
        ([Web3.to_checksum_address(keys[0].address)], [b""], [""], (token_address, 0, 60, 5_000, 1_000, TOKEN)),
        gas=6_000_000,
    ).contract_address
    assert vs_address is not None
    token = world.w3.eth.contract(address=Web3.to_checksum_address(token_address), abi=artifact["abi"])
    sender.send(token.functions.setTarget(vs_address), gas=100_000)
    sender.send(token.functions.stake(5 * TOKEN), gas=300_000)
    advance_time(world.w3, 120)
    sender.send(token.functions.attack(), gas=400_000)
    assert token.functions.transfersIn().call() == 1
    assert token.functions.paidOut().call() == 5 * TOKEN
    assert not token.functions.reentrySucceeded().call()
    assert bytes(token.functions.reentryRevert().call())[:4] == Web3.keccak(text="Reentrancy()")[:4]


def test_zz_write_gas_figures(chain: Web3) -> None:
    """bench/results/slashing.json: gas of each staking operation (from the anvil run)."""
    if "submitVoteEvidence" not in _gas or chain.provider.__class__.__name__ == "EthereumTesterProvider":
        pytest.skip("figures are recorded from the anvil run")
    write_gas_figures(RESULTS, _gas, what="gas used per ValidatorSet staking operation, anvil, solc 0.8.37 "
                      "optimizer 200 runs", min_stake_base_units=MIN_STAKE, slash_bps=5_000, reporter_share_bps=1_000)
