"""ValidatorSet operator registry: a full node bonds and registers as an operator of the network
(it may then vouch for charger events); the registry is bounded and leaves with the stake.

Hostile cases: an account below the minimum stake, an oversized peer id, a second registration,
leaving twice, an unbonding account registering again. (The MAX_OPERATORS bound is read, not
filled: 256 funded accounts cost ~1,000 transactions.)"""

from __future__ import annotations

import pytest
from conftest import TOKEN, World, advance_time, build_world, fund, validator_keys
from test_contracts_core import expect_revert
from web3 import Web3

from anchoring.chain import ChainClient, StakingParams
from primitives.eip712 import SigningKey

MIN_STAKE = 1_000 * TOKEN
TERMS = StakingParams(min_stake=MIN_STAKE, unbonding_s=3600, slash_bps=5_000, reporter_share_bps=1_000)


@pytest.fixture
def world(chain: Web3) -> World:
    return build_world(chain, staking=TERMS)


def _funded(world: World, key: SigningKey, amount: int) -> ChainClient:
    fund(world.w3, Web3.to_checksum_address(key.address))
    client = world.client_for(key.secret.hex())
    client.faucet_mint(client.sender.address, amount)  # type: ignore[union-attr]
    client.approve(world.deployment.validator_set, amount)
    return client


def test_an_operator_registers_with_stake_and_leaves_with_it(world: World) -> None:
    operator, poor = validator_keys(2, seed="operators")
    client = _funded(world, operator, 2 * MIN_STAKE)
    hostile = _funded(world, poor, MIN_STAKE)
    expect_revert("InsufficientStake", hostile.register_operator, MIN_STAKE - 1, b"p", "ws://p/ocpp")
    expect_revert("PeerIdTooLong", hostile.register_operator, MIN_STAKE, b"x" * 65, "ws://p/ocpp")
    assert world.relayer.operators("latest") == ()
    gas = client.register_operator(MIN_STAKE, b"peer-full", "ws://full/ocpp").gas_used
    print(f"registerOperator: {gas} gas")
    assert world.relayer.operators("latest") == (operator.address,)
    assert world.relayer.read("ValidatorSet", "isOperator", Web3.to_checksum_address(operator.address), block="latest")
    expect_revert("AlreadyAnOperator", client.register_operator, MIN_STAKE, b"peer-full", "ws://full/ocpp")
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
    expect_revert("AlreadyUnbonding", client.register_operator, MIN_STAKE, b"peer-full", "ws://full/ocpp")
    advance_time(world.w3, 3700)
    client.withdraw_stake()
    assert not world.relayer.read("ValidatorSet", "isOperator", Web3.to_checksum_address(operator.address),
                                  block="latest")


def test_the_registry_is_bounded_and_swap_removal_keeps_it_consistent(chain: Web3) -> None:
    """With no minimum stake anyone can register (one base unit): MAX_OPERATORS bounds what nodes
    read per block; removal from the middle keeps every other operator listed."""
    world = build_world(chain)  # minStake 0 (the `chain deploy` default)
    limit = int(world.relayer.read("ValidatorSet", "MAX_OPERATORS", block="latest"))
    assert limit == 256
    keys = validator_keys(3, seed="bounded-operators")
    clients = [_funded(world, key, 10) for key in keys]
    for client in clients:
        client.register_operator(1, b"", "")
    assert set(world.relayer.operators("latest")) == {k.address for k in keys}
    clients[0].leave_operators()  # the first one: the last takes its slot
    assert set(world.relayer.operators("latest")) == {keys[1].address, keys[2].address}
    clients[2].leave_operators()
    assert world.relayer.operators("latest") == (keys[1].address,)
    clients[0].register_operator(1, b"", "")
    assert set(world.relayer.operators("latest")) == {keys[0].address, keys[1].address}
