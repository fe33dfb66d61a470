"""The ledger's chain view over the real contracts (in-process py-evm chain): reads at the
agreed block, the cross-block read cache and its invalidation by contract events."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from web3 import Web3

from anchoring.chain import connect
from devsen.chain_view import ContractChainAccess, SessionIndex
from devsen.ledger import id_tag_hash

_spec = importlib.util.spec_from_file_location(  # the contract tests' deployment helper
    "contracts_test_world", Path(__file__).resolve().parents[1] / "contracts" / "conftest.py")
assert _spec is not None and _spec.loader is not None
_world = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _world  # dataclasses look their module up there
_spec.loader.exec_module(_world)
build_world = _world.build_world


def test_views_follow_the_chain_and_the_cache_drops_only_touched_keys():
    world = build_world(connect("tester"))
    w3: Web3 = world.w3
    manager = world.manager
    for charger in ("CP-A", "CP-B"):
        manager.create_device(charger, location="x", connector_count=2, price_per_kwh=100, per_minute_fee=0,
                              auth_salt=b"\x01" * 16, auth_hash=b"\x02" * 32)
    world.driver.register_id_tag("TAG-1")
    access = ContractChainAccess(world.deployer, SessionIndex(world.deployer, world.deployment.deploy_block))

    first = w3.eth.block_number
    view = access.view_at(first)
    assert view.device("CP-A").tariff.price_per_kwh == 100
    assert view.device("CP-B").connector_count == 2
    assert view.device("NOPE") is None
    assert view.id_tag(id_tag_hash("TAG-1")).revoked is False
    assert view.id_tag(id_tag_hash("OTHER")) is None
    epoch, validators, _ = access.validators_at(first)
    assert epoch == 0 and len(validators) == 4
    misses = access.cache.misses

    manager.update_device("setTariff", "CP-A", 250, 5)
    world.driver.revoke_id_tag("TAG-1")
    later = w3.eth.block_number
    view = access.view_at(later)
    assert view.device("CP-A").tariff == type(view.device("CP-A").tariff)(250, 5)  # re-read: touched
    assert view.id_tag(id_tag_hash("TAG-1")).revoked is True  # re-read: touched
    assert view.device("CP-B").connector_count == 2  # untouched: from the cache
    assert view.device("NOPE") is None
    access.validators_at(later)
    assert access.cache.misses == misses + 2 and access.cache.hits >= 3

    # Going back (a node replaying old blocks) empties the cache and reads at that block.
    old = access.view_at(first)
    assert old.device("CP-A").tariff.price_per_kwh == 100
    assert old.id_tag(id_tag_hash("TAG-1")).revoked is False


def test_reads_by_block_hash_follow_that_block_and_fail_for_a_block_not_on_the_chain(tmp_path):
    """EIP-1898 on anvil: a read pinned by hash answers that block's state; a hash that is not
    on the canonical chain (a reorged-out block) fails instead of answering from another fork."""
    import pytest

    from anchoring.chain.anvil import running_anvil
    from devsen.chain_view import BlockHash, ChainClientByHash, ChainReadError

    with running_anvil(tmp_path / "anvil.log") as anvil:
        world = build_world(connect(anvil.url))
        w3: Web3 = world.w3
        world.manager.create_device("CP-A", location="x", connector_count=2, price_per_kwh=100, per_minute_fee=0,
                                    auth_salt=b"\x01" * 16, auth_hash=b"\x02" * 32)
        first = w3.eth.block_number
        first_hash = bytes(w3.eth.get_block(first)["hash"])
        world.manager.update_device("setTariff", "CP-A", 250, 5)
        client = ChainClientByHash(w3, world.deployment)
        access = ContractChainAccess(client, SessionIndex(client, world.deployment.deploy_block))
        view = access.view_at(first, first_hash)
        assert view.device("CP-A").tariff.price_per_kwh == 100  # the state at that hash, not the head's
        assert view.device("NOPE") is None  # a revert (UnknownDevice) decoded as before
        assert client.device("CP-A", "latest").price_per_kwh == 250
        epoch, validators, _ = access.validators_at(first, first_hash)
        assert epoch == 0 and len(validators) == 4
        with pytest.raises(Exception) as failure:
            client.device("CP-A", BlockHash(b"\x42" * 32))
        assert isinstance(failure.value, ChainReadError) or "block" in str(failure.value).lower()
