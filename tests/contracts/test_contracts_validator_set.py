"""ValidatorSet: peer ids are unique on chain, and every epoch's set stays readable."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import World, build_world, fund, quorum_signatures, validator_keys
from test_contracts_core import expect_revert
from web3 import Web3

from anchoring.chain import ChainClient
from anchoring.chain.client import GAS
from consensus.signing import VALIDATOR_SET_UPDATE_TYPE
from primitives.eip712 import SigningKey, typed_digest
from primitives.hashing import validators_hash


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
    assert fresh.relayer.peer_id_holder(b"peer-0", "latest") == v0.sender.address  # type: ignore[union-attr]
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


def test_node_builds_from_hostile_chain_bindings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A ValidatorSet read (an old deployment without PeerIdTaken, or a lying RPC) where one
    validator squats this node's peer id, one binds garbage and one an over-long endpoint:
    before, `build_node` raised in ValidatorDirectory.replace and the node could not start."""
    import dataclasses

    from anchoring.chain import ChainClient as Client
    from anchoring.chain import ValidatorSetState
    from anchoring.chain.anvil import running_anvil
    from devsen.devnet import deploy_network, prepare_nodes
    from devsen.node import build_node, merge_bindings

    with running_anvil(tmp_path / "anvil.log") as anvil:
        deployment_path = tmp_path / "deployment.json"
        nodes = prepare_nodes(tmp_path, 4, deployment_path, anvil.url)
        deploy_network(anvil, nodes, deployment_path)
        peers = [n.keys.peer_id.to_bytes() for n in nodes]
        real = Client.validator_set

        def hostile(self: Client, block: object) -> ValidatorSetState:
            state = real(self, block)  # type: ignore[arg-type]
            by_peer = {bytes(v.peer_id): v for v in state.validators}
            squatter, garbage, verbose = (by_peer[p] for p in peers[1:])
            swapped = {squatter.address: dataclasses.replace(squatter, peer_id=peers[0]),  # node 1's id
                       garbage.address: dataclasses.replace(garbage, peer_id=b"\xff" * 200),
                       verbose.address: dataclasses.replace(verbose, endpoint="ws://" + "x" * 100_000)}
            return ValidatorSetState(state.epoch, tuple(swapped.get(v.address, v) for v in state.validators),
                                     state.quorum)

        Client.validator_set = hostile  # type: ignore[method-assign]
        try:
            parts = build_node(nodes[0].config)
            # node 2 sees its id squatted and re-publishes it with an endpoint the contract refuses
            # (EndpointTooLong): logged with the fix, and the node still builds
            long_host = dataclasses.replace(nodes[1].config.ocpp, host="h" * 300)
            second = build_node(dataclasses.replace(nodes[1].config, ocpp=long_host))
            assert second.service.config.directory.peer_of(nodes[1].keys.validator.address) == peers[1]
            assert "EndpointTooLong" in caplog.text and "refused this node's peer id" in caplog.text
        finally:
            Client.validator_set = real  # type: ignore[method-assign]
        directory = parts.service.config.directory
        me = nodes[0].keys.validator.address
        assert directory.peer_of(me) == peers[0] and directory.address_of(peers[0]) == me  # its own id stays its own
        assert nodes[1].keys.validator.address not in directory  # the squatter is refused
        assert directory.peer_of(nodes[3].keys.validator.address) == peers[3]
        assert nodes[2].keys.validator.address not in directory  # a 200-byte id is unusable
        # a later refresh with a duplicate claim keeps the incumbent and never raises
        squat = {nodes[1].keys.validator.address: peers[0], me: peers[0], b"bad": b"x"}
        directory.replace(merge_bindings(directory, (me,), squat))
        assert directory.address_of(peers[0]) == me
