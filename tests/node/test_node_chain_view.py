"""The ledger's chain view over the real contracts (in-process py-evm chain): reads at the
agreed block, the cross-block read cache and its invalidation by contract events."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from web3 import Web3

from anchoring.chain import connect
from anchoring.chain.client import DeviceRecord
from devsen.chain_view import ContractChainAccess, SessionIndex
from devsen.ledger import id_tag_hash
from devsen.ledger.chain import DeviceInfo, IdTagInfo

_spec = importlib.util.spec_from_file_location(  # the contract tests' deployment helper
    "contracts_test_world", Path(__file__).resolve().parents[1] / "contracts" / "conftest.py")
assert _spec is not None and _spec.loader is not None
_world = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _world  # dataclasses look their module up there
_spec.loader.exec_module(_world)
build_world = _world.build_world


def test_views_follow_the_chain_and_the_cache_drops_only_touched_keys() -> None:
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
    assert cast(DeviceInfo, view.device("CP-A")).tariff.price_per_kwh == 100
    assert cast(DeviceInfo, view.device("CP-B")).connector_count == 2
    assert view.device("NOPE") is None
    assert cast(IdTagInfo, view.id_tag(id_tag_hash("TAG-1"))).revoked is False
    assert view.id_tag(id_tag_hash("OTHER")) is None
    epoch, validators, _ = access.validators_at(first)
    assert epoch == 0 and len(validators) == 4
    misses = access.cache.misses

    manager.update_device("setTariff", "CP-A", 250, 5)
    world.driver.revoke_id_tag("TAG-1")
    later = w3.eth.block_number
    view = access.view_at(later)
    assert cast(DeviceInfo, view.device("CP-A")).tariff == type(cast(DeviceInfo, view.device("CP-A")).tariff)(250, 5)  # re-read: touched
    assert cast(IdTagInfo, view.id_tag(id_tag_hash("TAG-1"))).revoked is True  # re-read: touched
    assert cast(DeviceInfo, view.device("CP-B")).connector_count == 2  # untouched: from the cache
    assert view.device("NOPE") is None
    access.validators_at(later)
    assert access.cache.misses == misses + 2 and access.cache.hits >= 3

    # Going back (a node replaying old blocks) empties the cache and reads at that block.
    old = access.view_at(first)
    assert cast(DeviceInfo, old.device("CP-A")).tariff.price_per_kwh == 100
    assert cast(IdTagInfo, old.id_tag(id_tag_hash("TAG-1"))).revoked is False


def test_reservations_are_read_once_per_device_until_a_reservation_event_or_the_device_changes() -> None:
    """A device's reservations come from the read cache across Ethereum blocks (not one eth_call
    per charger per consensus block); a ReservationMade / Ended, or a change of the device's
    record, drops them, so the next view reads the chain again."""
    world = build_world(connect("tester"))
    w3: Web3 = world.w3
    for charger in ("CP-R", "CP-Q"):
        world.manager.create_device(charger, location="x", connector_count=2, price_per_kwh=100, per_minute_fee=5,
                                    auth_salt=b"\x01" * 16, auth_hash=b"\x02" * 32)
    world.driver.register_id_tag("TAG-R")
    world.driver.faucet_mint(world.driver.sender.address, 100 * _world.TOKEN)
    world.driver.approve(world.deployment.escrow, 2**256 - 1)
    access = ContractChainAccess(world.deployer, SessionIndex(world.deployer, world.deployment.deploy_block))
    reads: list[str] = []
    original = world.deployer.reservations_of

    def counted(charge_box_id: str, block: Any) -> Any:
        reads.append(charge_box_id)
        return original(charge_box_id, block)

    world.deployer.reservations_of = counted
    assert access.view_at(w3.eth.block_number).reservations("CP-R") == []
    world.driver.register_id_tag("TAG-PAD")  # a block passes, no reservation event
    assert access.view_at(w3.eth.block_number).reservations("CP-R") == []
    assert reads == ["CP-R"], "untouched: the second view answers from the cache"

    now = int(w3.eth.get_block("latest")["timestamp"])
    rid, _ = world.driver.reserve("CP-R", 1, "TAG-R", now + 600)
    view = access.view_at(w3.eth.block_number)
    assert [r.reservation_id for r in view.reservations("CP-R")] == [rid]
    assert view.reservations("CP-Q") == []
    world.driver.cancel_reservation(rid)
    assert access.view_at(w3.eth.block_number).reservations("CP-R") == []
    assert reads == ["CP-R", "CP-R", "CP-Q", "CP-R"]
    world.manager.update_device("setTariff", "CP-Q", 250, 5)  # a DeviceFactory event of CP-Q only
    view = access.view_at(w3.eth.block_number)
    assert view.reservations("CP-Q") == [] and view.reservations("CP-R") == []
    assert reads == ["CP-R", "CP-R", "CP-Q", "CP-R", "CP-Q"]


def test_session_index_holds_only_open_sessions_within_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settled and refunded sessions leave the index; requests beyond the per-charger bound are
    ignored (deterministically, by log order) instead of raising inside apply."""
    import devsen.chain_view as chain_view
    from anchoring.escrow_sign import settlement_batch_digest

    monkeypatch.setattr(chain_view, "MAX_OPEN_PER_CHARGER", 3)
    monkeypatch.setattr(chain_view, "CLOSED_KEPT_BLOCKS", 5)
    world = build_world(connect("tester"))
    w3: Web3 = world.w3
    world.manager.create_device("CP-S", location="x", connector_count=2, price_per_kwh=100, per_minute_fee=0,
                                auth_salt=b"\x01" * 16, auth_hash=b"\x02" * 32, max_power_w=22_000)
    world.driver.register_id_tag("TAG-S")
    world.driver.faucet_mint(world.driver.sender.address, 100 * _world.TOKEN)
    world.driver.approve(world.deployment.escrow, 2**256 - 1)
    ids = [world.driver.open_session("CP-S", 1, "TAG-S", _world.TOKEN)[0] for _ in range(4)]
    index = SessionIndex(world.deployer, world.deployment.deploy_block)
    access = ContractChainAccess(world.deployer, index)
    opened = w3.eth.block_number
    view = access.view_at(opened)
    assert cast(DeviceInfo, view.device("CP-S")).max_power_w == 22_000
    assert [s.session_id for s in view.open_escrow_sessions("CP-S")] == ids[:3]
    assert index.ignored == 1 and len(index) == 3  # the 4th is beyond the bound

    digest = settlement_batch_digest(world.deployment.domain("Escrow"), [(ids[0], 1, 10)])
    world.relayer.settle_batch([(ids[0], 1, 10)], _world.quorum_signatures(world.validators[:3], digest))
    _world.advance_time(w3, _world.REFUND_TIMEOUT_S + 1)
    world.driver.refund(ids[1])
    closed = w3.eth.block_number
    assert index.session_ids("CP-S", closed) == [ids[2]]
    assert index.session_ids("CP-S", closed - 1) == ids[1:3], "a view just before the refund still sees it"
    for _ in range(6):
        world.driver.register_id_tag(f"TAG-PAD-{_}")  # blocks pass
    assert index.session_ids("CP-S", w3.eth.block_number) == [ids[2]]
    assert len(index) == 1, "closed sessions are forgotten once the asked block is past them"
    view = access.view_at(w3.eth.block_number)
    assert [s.session_id for s in view.open_escrow_sessions("CP-S")] == [ids[2]]


def test_out_of_bound_device_data_is_unregistered_not_an_exception() -> None:
    """If the chain ever reports a device beyond the ledger's bounds (255 connectors, e.g. from
    an older DeviceFactory), the conversion treats it as unregistered instead of raising."""
    import dataclasses

    from anchoring.chain.client import DeviceRecord
    from devsen.chain_view import _to_ledger_device

    record = DeviceRecord(b"\x01" * 32, "CP-255", "0x" + "11" * 20, "", 2, 1, 0, b"\x01" * 16, b"\x02" * 32, b"",
                          True, 350_000)
    assert _to_ledger_device(record) is not None
    assert _to_ledger_device(dataclasses.replace(record, connector_count=255)) is None
    assert _to_ledger_device(dataclasses.replace(record, max_power_w=0)) is None
    assert _to_ledger_device(dataclasses.replace(record, price_per_kwh=2**300)) is None


def test_reads_by_block_hash_follow_that_block_and_fail_for_a_block_not_on_the_chain(tmp_path: Path) -> None:
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
        assert cast(DeviceInfo, view.device("CP-A")).tariff.price_per_kwh == 100  # the state at that hash, not the head's
        assert view.device("NOPE") is None  # a revert (UnknownDevice) decoded as before
        assert cast(DeviceRecord, client.device("CP-A", "latest")).price_per_kwh == 250
        epoch, validators, _ = access.validators_at(first, first_hash)
        assert epoch == 0 and len(validators) == 4
        with pytest.raises(Exception) as failure:
            client.device("CP-A", cast(Any, BlockHash(b"\x42" * 32)))
        assert isinstance(failure.value, ChainReadError) or "block" in str(failure.value).lower()
