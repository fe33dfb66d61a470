"""ValidatorSet: peer ids are unique on chain, and every epoch's set stays readable."""

from __future__ import annotations

import pytest
from conftest import World, build_world, fund, quorum_signatures, validator_keys
from test_contracts_core import expect_revert
from web3 import Web3

from anchoring.chain import ChainClient, validators_hash
from anchoring.chain.client import GAS
from consensus.signing import VALIDATOR_SET_UPDATE_TYPE, SigningKey, typed_digest


@pytest.fixture
def fresh(chain: Web3) -> World:
    """A deployment of its own: these tests change the validator set."""
    return build_world(chain)


def _as(world: World, key: SigningKey) -> ChainClient:
    fund(world.w3, Web3.to_checksum_address(key.address))
    return world.client_for(key.secret.hex())


def _update(world: World, signers: list[SigningKey], epoch: int, new_set: list[str]) -> int:
    digest = typed_digest(world.deployment.domain("ValidatorSet"), VALIDATOR_SET_UPDATE_TYPE,
                          [epoch, validators_hash(new_set)])
    receipt = world.relayer.update_validators(epoch, new_set, quorum_signatures(signers, digest))
    return int(receipt.raw["blockNumber"])


def _checksummed(keys: list[SigningKey]) -> list[str]:
    return sorted((Web3.to_checksum_address(k.address) for k in keys), key=lambda a: bytes.fromhex(a[2:]))


def test_duplicate_peer_id_is_refused_on_chain(fresh: World) -> None:
    """A validator squatting another validator's peer id (which made every node fail to start)
    is refused with PeerIdTaken; an id is freed when its validator changes it."""
    v0, v1 = (_as(fresh, k) for k in fresh.validators[:2])
    expect_revert("PeerIdTaken", v1.set_validator_info, b"peer-0", "ws://squatter/ocpp")
    assert fresh.relayer.peer_id_holder(b"peer-0", "latest") == v0.sender.address
    v1.set_validator_info(b"peer-1", "ws://other-endpoint/ocpp")  # re-publishing its own id is fine
    v0.set_validator_info(b"peer-0b", "ws://v0/ocpp")  # frees peer-0
    assert fresh.relayer.peer_id_holder(b"peer-0", "latest") is None
    v1.set_validator_info(b"peer-0", "ws://v1/ocpp")
    assert fresh.relayer.peer_id_holder(b"peer-1", "latest") is None  # v1's old id is free again
    peers = [v.peer_id for v in fresh.relayer.validator_set("latest").validators]
    assert len(set(peers)) == len(peers)


def test_constructor_refuses_duplicate_peer_ids(chain: Web3) -> None:
    from anchoring.chain import ValidatorSpec, deploy_all
    from anchoring.chain.errors import ChainRevert

    world = build_world(chain)
    keys = validator_keys(2, seed="dup")
    specs = [ValidatorSpec(Web3.to_checksum_address(k.address), b"same", "ws://x/ocpp") for k in keys]
    with pytest.raises(ChainRevert) as info:
        assert world.deployer.sender is not None
        deploy_all(world.deployer.sender, specs)
    assert info.value.name == "PeerIdTaken"


def test_removed_validator_frees_its_peer_id_and_history_stays(fresh: World) -> None:
    client = fresh.relayer
    keys = fresh.validators
    genesis_block = client.epoch_record(0, "latest")
    assert genesis_block is not None and genesis_block.validators == tuple(_checksummed(keys))
    # epoch 1: validator 3 replaced by a newcomer, who takes the removed validator's peer id
    newcomer = validator_keys(1, seed="newcomer")[0]
    epoch1 = _checksummed([*keys[:3], newcomer])
    block1 = _update(fresh, keys[:3], 1, epoch1)
    assert client.peer_id_holder(b"peer-3", "latest") is None
    _as(fresh, newcomer).set_validator_info(b"peer-3", "ws://newcomer/ocpp")
    # epoch 2: a 7-validator set (gas of the history write within GAS)
    bigger = _checksummed([*keys[:3], newcomer, *validator_keys(3, seed="more")])
    block2 = _update(fresh, [*keys[:2], newcomer], 2, bigger)
    assert client.epoch_count("latest") == 3
    record1, record2 = client.epoch_record(1, "latest"), client.epoch_record(2, "latest")
    assert record1 is not None and record1.validators == tuple(epoch1) and record1.start_block == block1
    assert record2 is not None and record2.validators == tuple(bigger) and record2.start_block == block2
    assert client.epoch_record(3, "latest") is None
    assert [client.epoch_at_block(n, "latest") for n in (0, genesis_block.start_block, block1 - 1, block1,
                                                         block2 - 1, block2, block2 + 10**6)] == [0, 0, 0, 1, 1, 2, 2]
    assert client.validator_set("latest").addresses() == tuple(bigger)


def test_update_gas_of_the_largest_set_fits_the_budget(fresh: World) -> None:
    """The history write costs gas per validator: the client's budget covers 128 validators."""
    keys = fresh.validators
    big = _checksummed(validator_keys(128, seed="max"))
    digest = typed_digest(fresh.deployment.domain("ValidatorSet"), VALIDATOR_SET_UPDATE_TYPE,
                          [1, validators_hash(big)])
    receipt = fresh.relayer.update_validators(1, big, quorum_signatures(keys[:3], digest))
    used = int(receipt.raw["gasUsed"])
    budget = GAS["updateValidatorsBase"] + GAS["perValidator"] * 128 + GAS["perSignature"] * 3
    assert used < budget, (used, budget)
    assert fresh.relayer.epoch_record(1, "latest") is not None
