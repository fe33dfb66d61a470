"""ValidatorSet operator registry: a full node bonds at least `minOperatorStake` and registers as
an operator of the network (it may then vouch for charger events); the registry is bounded and
leaves with the stake (issue 15: the slots cannot be griefed).

Hostile cases: a deployment without an operator minimum (refused by the constructor and by
`devsen chain deploy`), a dust registration on a network whose validator minimum is 0 (the
`chain deploy` default), an account below the operator minimum, an oversized peer id, a second
registration, leaving twice, an unbonding account registering again; a slashed operator stops
counting and anyone frees its slot, a healthy one cannot be pruned; a quorum removal refuses too
few, forged, other-operator and other-epoch signatures, and bars the removed account. (The
MAX_OPERATORS bound is read, not filled: 256 funded accounts cost ~1,000 transactions; what fills
it now costs 256 x minOperatorStake, locked for the unbonding period.)"""

from __future__ import annotations

from pathlib import Path

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

from anchoring.chain import ChainClient, ChainRevert, StakingParams, TransactionSender
from anchoring.chain.deploy import DEFAULT_MIN_OPERATOR_STAKE, deploy_main
from consensus.signing import OPERATOR_REMOVAL_TYPE
from consensus.types import Vote, VoteType
from contracts import load_artifact
from primitives.eip712 import SigningKey, typed_digest

MIN_STAKE = 1_000 * TOKEN
MIN_OPERATOR_STAKE = 400 * TOKEN  # not the validator minimum: the registry must use its own
UNBONDING_S = 3600
TERMS = StakingParams(min_stake=MIN_STAKE, unbonding_s=UNBONDING_S, slash_bps=5_000, reporter_share_bps=1_000,
                      min_operator_stake=MIN_OPERATOR_STAKE)
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "operator_registry.json"
_gas: dict[str, int] = {}


@pytest.fixture
def world(chain: Web3) -> World:
    return build_world(chain, staking=TERMS)


def _funded(world: World, key: SigningKey, amount: int) -> ChainClient:
    fund(world.w3, Web3.to_checksum_address(key.address))
    client = world.client_for(key.secret.hex())
    client.faucet_mint(client.sender.address, amount)  # type: ignore[union-attr]
    client.approve(world.deployment.validator_set, amount)
    return client


def _is_operator(world: World, key: SigningKey) -> bool:
    return bool(world.relayer.read("ValidatorSet", "isOperator", Web3.to_checksum_address(key.address),
                                   block="latest"))


def test_an_operator_registers_with_stake_and_leaves_with_it(world: World) -> None:
    operator, poor = validator_keys(2, seed="operators")
    client = _funded(world, operator, 2 * MIN_OPERATOR_STAKE)
    hostile = _funded(world, poor, MIN_OPERATOR_STAKE)
    assert world.relayer.staking_terms("latest").min_operator_stake == MIN_OPERATOR_STAKE
    expect_revert("InsufficientOperatorStake", hostile.register_operator, MIN_OPERATOR_STAKE - 1, b"p", "ws://p/ocpp")
    expect_revert("PeerIdTooLong", hostile.register_operator, MIN_OPERATOR_STAKE, b"x" * 65, "ws://p/ocpp")
    assert world.relayer.operators("latest") == ()
    _gas["registerOperator"] = client.register_operator(MIN_OPERATOR_STAKE, b"peer-full", "ws://full/ocpp").gas_used
    assert world.relayer.operators("latest") == (operator.address,)
    assert _is_operator(world, operator)
    expect_revert("AlreadyAnOperator", client.register_operator, MIN_OPERATOR_STAKE, b"peer-full", "ws://full/ocpp")
    # an operator is not a validator: it cannot sign a quorum, and the set is unchanged
    assert Web3.to_checksum_address(operator.address) not in world.relayer.validator_set("latest").addresses()
    client.leave_operators()
    assert world.relayer.operators("latest") == ()
    expect_revert("NotAnOperator", client.leave_operators)
    # registered again, then unbonding ends the registration; bonding back in is refused
    client.register_operator(1, b"peer-full", "ws://full/ocpp")  # the stake already reaches the minimum
    assert world.relayer.operators("latest") == (operator.address,)
    client.begin_unbonding()
    assert world.relayer.operators("latest") == ()
    expect_revert("AlreadyUnbonding", client.register_operator, MIN_OPERATOR_STAKE, b"peer-full", "ws://full/ocpp")
    advance_time(world.w3, UNBONDING_S + 100)
    client.withdraw_stake()
    assert not _is_operator(world, operator)


def test_dust_cannot_take_operator_slots_on_a_network_without_a_validator_minimum(chain: Web3) -> None:
    """The attack of issue 15: with minStake 0 (the `chain deploy` default) a registration used to
    cost one base unit, so one hostile party could take all 256 slots. The operator minimum is
    separate and never zero: dust is refused, and every slot costs the full minimum."""
    world = build_world(chain)  # minStake 0; minOperatorStake the deploy default
    assert world.relayer.staking_terms("latest").min_stake == 0
    assert world.relayer.staking_terms("latest").min_operator_stake == DEFAULT_MIN_OPERATOR_STAKE
    limit = int(world.relayer.read("ValidatorSet", "MAX_OPERATORS", block="latest"))
    assert limit == 256
    squatters = [_funded(world, key, 10) for key in validator_keys(3, seed="dust-operators")]
    for squatter in squatters:
        expect_revert("InsufficientOperatorStake", squatter.register_operator, 1, b"", "")
        expect_revert("InsufficientOperatorStake", squatter.register_operator, 10, b"", "")
    assert world.relayer.operators("latest") == ()
    assert world.relayer.registered_operators("latest") == ()
    # bonding dust first and registering with dust again does not add up to a slot either
    squatters[0].bond(5)
    expect_revert("InsufficientOperatorStake", squatters[0].register_operator, 5, b"", "")
    assert world.relayer.registered_operators("latest") == ()


def test_the_registry_is_bounded_and_swap_removal_keeps_it_consistent(world: World) -> None:
    """Removal from the middle (swap-and-pop) keeps every other operator listed."""
    keys = validator_keys(3, seed="bounded-operators")
    clients = [_funded(world, key, MIN_OPERATOR_STAKE + 1) for key in keys]
    for client in clients:
        client.register_operator(MIN_OPERATOR_STAKE, b"", "")
    assert set(world.relayer.operators("latest")) == {k.address for k in keys}
    clients[0].leave_operators()  # the first one: the last takes its slot
    assert set(world.relayer.operators("latest")) == {keys[1].address, keys[2].address}
    clients[2].leave_operators()
    assert world.relayer.operators("latest") == (keys[1].address,)
    clients[0].register_operator(1, b"", "")  # its stake is still bonded
    assert set(world.relayer.operators("latest")) == {keys[0].address, keys[1].address}


def test_a_slashed_operator_stops_counting_and_anyone_frees_its_slot(world: World) -> None:
    """A validator that also runs as an operator double-signs: the slash takes half its stake, it
    falls below minOperatorStake, `operators()`/`isOperator` drop it at once, and an outsider's
    `pruneOperator` frees its slot. A healthy operator and a non-operator cannot be pruned."""
    offender = world.validators[3]
    client = _funded(world, offender, MIN_OPERATOR_STAKE)
    client.register_operator(MIN_OPERATOR_STAKE, b"peer-v3-full", "ws://v3/ocpp")
    healthy_key = validator_keys(1, seed="healthy-operator")[0]
    healthy = _funded(world, healthy_key, MIN_OPERATOR_STAKE)
    healthy.register_operator(MIN_OPERATOR_STAKE, b"", "")
    assert set(world.relayer.operators("latest")) == {offender.address, healthy_key.address}
    outsider = world.client_for(validator_keys(1, seed="pruner")[0].secret.hex())
    fund(world.w3, outsider.sender.address)  # type: ignore[union-attr]
    expect_revert("OperatorStakeSufficient", outsider.prune_operator, offender.address)
    domain = world.deployment.domain("ValidatorSet")
    a = Vote.sign(offender, domain, VoteType.PRECOMMIT, 10, 0, b"\xaa" * 32)
    b = Vote.sign(offender, domain, VoteType.PRECOMMIT, 10, 0, b"\xbb" * 32)
    world.relayer.submit_vote_evidence(int(a.vote_type), a.height, a.round, a.block_hash, a.signature,
                                       b.block_hash, b.signature)
    assert world.relayer.stake(offender.address, "latest").stake == MIN_OPERATOR_STAKE // 2
    assert world.relayer.operators("latest") == (healthy_key.address,)  # no longer counts
    assert not _is_operator(world, offender)
    assert set(world.relayer.registered_operators("latest")) == {offender.address, healthy_key.address}
    expect_revert("OperatorStakeSufficient", outsider.prune_operator, healthy_key.address)
    expect_revert("NotAnOperator", outsider.prune_operator, outsider.sender.address)  # type: ignore[union-attr]
    _gas["pruneOperator"] = outsider.prune_operator(offender.address).gas_used
    assert world.relayer.registered_operators("latest") == (healthy_key.address,)
    expect_revert("NotAnOperator", outsider.prune_operator, offender.address)  # once
    # it can come back only by topping its stake up to the minimum
    client.faucet_mint(client.sender.address, MIN_OPERATOR_STAKE)  # type: ignore[union-attr]
    client.approve(world.deployment.validator_set, MIN_OPERATOR_STAKE)
    expect_revert("InsufficientOperatorStake", client.register_operator, 1, b"", "")
    client.register_operator(MIN_OPERATOR_STAKE // 2, b"", "")
    assert _is_operator(world, offender)


def _removal(world: World, signers: list[SigningKey], operator: bytes, epoch: int = 0) -> list[bytes]:
    digest = typed_digest(world.deployment.domain("ValidatorSet"), OPERATOR_REMOVAL_TYPE, [epoch, operator])
    return quorum_signatures(signers, digest)


def test_a_quorum_removes_and_bars_an_operator_and_nobody_else_can(world: World) -> None:
    """`removeOperator` needs a quorum (3 of 4) of the current set over OperatorRemoval(epoch,
    operator): too few, outsiders' (forged), another operator's and another epoch's signatures
    are refused. The removed account cannot register again; its stake stays its own."""
    target_key, bystander_key = validator_keys(2, seed="removed-operator")
    target = _funded(world, target_key, MIN_OPERATOR_STAKE)
    target.register_operator(MIN_OPERATOR_STAKE, b"peer-bad", "ws://bad/ocpp")
    bystander = _funded(world, bystander_key, MIN_OPERATOR_STAKE)
    bystander.register_operator(MIN_OPERATOR_STAKE, b"", "")
    validators, relayer = world.validators, world.relayer
    expect_revert("TooFewSignatures", relayer.remove_operator, target_key.address,
                  _removal(world, validators[:2], target_key.address))
    forgers = validator_keys(3, seed="forgers")
    expect_revert("SignerNotValidator", relayer.remove_operator, target_key.address,
                  _removal(world, forgers, target_key.address))
    # two validators and one outsider: still not a quorum of the set
    expect_revert("SignerNotValidator", relayer.remove_operator, target_key.address,
                  _removal(world, [*validators[:2], forgers[0]], target_key.address))
    # a quorum's signatures over another operator, or another epoch, recover other signers
    expect_revert("SignerNotValidator", relayer.remove_operator, target_key.address,
                  _removal(world, validators[:3], bystander_key.address))
    expect_revert("SignerNotValidator", relayer.remove_operator, target_key.address,
                  _removal(world, validators[:3], target_key.address, epoch=1))
    # the target cannot remove itself with its own key either
    expect_revert("SignerNotValidator", target.remove_operator, target_key.address,
                  _removal(world, [target_key, *validators[:2]], target_key.address))
    assert set(relayer.operators("latest")) == {target_key.address, bystander_key.address}
    signatures = _removal(world, validators[:3], target_key.address)
    _gas["removeOperator_3_signatures"] = relayer.remove_operator(target_key.address, signatures).gas_used
    assert relayer.operators("latest") == (bystander_key.address,)
    assert relayer.read("ValidatorSet", "operatorBanned", Web3.to_checksum_address(target_key.address),
                        block="latest")
    expect_revert("NotAnOperator", relayer.remove_operator, target_key.address, signatures)  # a replay
    expect_revert("OperatorBanned", target.register_operator, MIN_OPERATOR_STAKE, b"peer-bad", "ws://bad/ocpp")
    # removal takes the slot, not the money: the stake unbonds and is withdrawn as usual
    target.begin_unbonding()
    advance_time(world.w3, UNBONDING_S + 100)
    target.withdraw_stake()
    assert target.token_balance(Web3.to_checksum_address(target_key.address), "latest") == MIN_OPERATOR_STAKE


def test_a_deployment_without_an_operator_minimum_is_refused(chain: Web3, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The constructor refuses minOperatorStake 0 (`OperatorStakeZero`); `StakingParams` and
    `devsen chain deploy --min-operator-stake 0` refuse it before any transaction, naming the flag."""
    world = build_world(chain)
    sender: TransactionSender = world.deployer.sender  # type: ignore[assignment]
    artifact = load_artifact("ValidatorSet")
    one = [Web3.to_checksum_address(world.validators[0].address)]
    token = world.deployment.charge_token
    with pytest.raises(ChainRevert) as refused:
        sender.deploy(artifact["abi"], artifact["bytecode"], (one, [b""], [""], (token, 0, 60, 5_000, 1_000, 0)),
                      gas=6_000_000)
    assert refused.value.name == "OperatorStakeZero"
    with pytest.raises(ValueError, match="--min-operator-stake"):
        StakingParams(min_operator_stake=0)
    key_file = tmp_path / "deployer.key"
    key_file.write_text("0x" + "11" * 32)
    code = deploy_main(["deploy", "--rpc", "http://127.0.0.1:9", "--validators", one[0], "--out",
                        str(tmp_path / "d.json"), "--key-file", str(key_file), "--min-operator-stake", "0"])
    err = capsys.readouterr().err
    assert code == 1 and "--min-operator-stake: 0 is refused" in err and "256 operator slots" in err
    assert not (tmp_path / "d.json").exists()


def test_zz_write_gas_figures(chain: Web3) -> None:
    """bench/results/operator_registry.json: gas of registering, pruning and removing an operator
    (from the anvil run), beside the full-registry read figure."""
    if len(_gas) < 3 or chain.provider.__class__.__name__ == "EthereumTesterProvider":
        pytest.skip("figures are recorded from the anvil run")
    write_gas_figures(RESULTS, _gas, what="ValidatorSet operator registry on anvil, solc 0.8.37 optimizer 200 runs",
                      source="tests/contracts/test_contracts_operators.py (registerOperator with a peer id and "
                      "an endpoint, first registration; removeOperator with 3 of 4 signatures) and "
                      "tests/contracts/test_contracts_stake_cli.py (operators() read of a full registry)")
