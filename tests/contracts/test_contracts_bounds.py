"""The contracts refuse, at write time, the values the ledger would refuse (issue 10): more
than 64 connectors, a maximum power outside 1..4 MW, and deposits below MIN_DEPOSIT (so
sessions cannot be spammed at one base unit each)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import TOKEN, World, build_world

from anchoring.chain import ChainRevert, connect
from anchoring.chain.client import DEFAULT_MAX_POWER_W
from devsen.ledger.chain import MAX_CONNECTORS, MAX_POWER_W

SALT = b"\x01" * 16
AUTH_HASH = b"\x02" * 32


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(connect("tester"))


def _create(world: World, cbid: str, **overrides: int) -> None:
    args: dict[str, Any] = {"connector_count": 2, "price_per_kwh": 1, "per_minute_fee": 0, **overrides}
    world.manager.create_device(cbid, location="", auth_salt=SALT, auth_hash=AUTH_HASH, **args)


def _revert_name(fn, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ChainRevert) as info:
        fn(*args, **kwargs)
    return info.value.name


def test_contract_bounds_match_the_ledger(world: World) -> None:
    factory = world.deployer.contracts["DeviceFactory"].functions
    assert factory.MAX_CONNECTORS().call() == MAX_CONNECTORS
    assert factory.MAX_POWER_W().call() == MAX_POWER_W
    assert factory.DEFAULT_MAX_POWER_W().call() == DEFAULT_MAX_POWER_W


def test_255_connectors_are_refused_at_write_time(world: World) -> None:
    assert _revert_name(_create, world, "HOSTILE-255", connector_count=255) == "ConnectorCountInvalid"
    assert _revert_name(_create, world, "HOSTILE-65", connector_count=65) == "ConnectorCountInvalid"
    _create(world, "BOUND-64", connector_count=64)
    assert _revert_name(world.manager.update_device, "setConnectorCount", "BOUND-64", 255) == "ConnectorCountInvalid"
    record = world.deployer.device("BOUND-64", "latest")
    assert record is not None and record.connector_count == 64
    assert world.deployer.device("HOSTILE-255", "latest") is None


def test_max_power_is_set_at_creation_bounded_and_changed_by_the_manager(world: World) -> None:
    _create(world, "POWER-1", max_power_w=22_000)
    record = world.deployer.device("POWER-1", "latest")
    assert record is not None and record.max_power_w == 22_000
    _create(world, "POWER-DEFAULT")
    default = world.deployer.device("POWER-DEFAULT", "latest")
    assert default is not None and default.max_power_w == DEFAULT_MAX_POWER_W == 350_000
    assert _revert_name(_create, world, "POWER-0", max_power_w=0) == "MaxPowerInvalid"
    assert _revert_name(_create, world, "POWER-HUGE", max_power_w=MAX_POWER_W + 1) == "MaxPowerInvalid"
    assert _revert_name(world.driver.update_device, "setMaxPower", "POWER-1", 50_000) == "NotDeviceManager"
    assert _revert_name(world.manager.update_device, "setMaxPower", "POWER-1", 0) == "MaxPowerInvalid"
    receipt = world.manager.update_device("setMaxPower", "POWER-1", 50_000)
    events = world.deployer.contracts["DeviceFactory"].events.DeviceMaxPowerChanged().process_receipt(receipt.raw)
    assert [e["args"]["maxPowerW"] for e in events] == [50_000]
    later = world.deployer.device("POWER-1", "latest")
    assert later is not None and later.max_power_w == 50_000


def test_one_unit_deposits_are_refused_on_chain(world: World) -> None:
    _create(world, "SPAM-1")
    world.driver.register_id_tag("SPAM-TAG")
    world.driver.faucet_mint(world.driver.sender.address, 10 * TOKEN)  # type: ignore[union-attr]
    world.driver.approve(world.deployment.escrow, 2**256 - 1)
    minimum = world.deployer.contracts["Escrow"].functions.MIN_DEPOSIT().call()
    assert minimum == 1_000
    for deposit in (1, minimum - 1):
        assert _revert_name(world.driver.open_session, "SPAM-1", 1, "SPAM-TAG", deposit) == "DepositInvalid"
    session_id, _ = world.driver.open_session("SPAM-1", 1, "SPAM-TAG", minimum)
    assert world.deployer.session(session_id, "latest") is not None
