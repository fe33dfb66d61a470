"""DeviceFactory sites (issue 13, load management): a device manager opens a site with a
maximum power and puts its chargers in it; only the manager of both the device and the site
may; hostile accounts (a driver, another device manager) cannot open, change or load a site,
nor move a charger they do not manage; bad powers are refused by name; the chain view hands
the site's power to the ledger with the device."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import World, build_world

from anchoring.chain import ChainRevert, connect

SALT, AUTH = b"\x01" * 16, b"\x02" * 32


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(connect("tester"))


def _revert(fn: Any, *args: Any) -> str:
    with pytest.raises(ChainRevert) as info:
        fn(*args)
    return str(info.value.name)


def _device(client: Any, charge_box_id: str) -> None:
    client.create_device(charge_box_id, location="", connector_count=2, price_per_kwh=1, per_minute_fee=0,
                         auth_salt=SALT, auth_hash=AUTH, max_power_w=22_000)


def test_manager_opens_a_site_and_puts_its_chargers_in_it(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("SITE-A1", "SITE-A2"):
        _device(world.manager, name)
    created = world.manager.create_site(50_000, 4_000)
    site_id = int(world.deployer.read("DeviceFactory", "siteCount", block="latest"))
    site = world.deployer.site(site_id, "latest")
    assert site is not None and (site.max_power_w, site.min_session_w) == (50_000, 4_000)
    assert site.manager.lower() == world.manager.sender.address.lower()  # type: ignore[union-attr]
    joined = world.manager.set_device_site("SITE-A1", site_id)
    world.manager.set_device_site("SITE-A2", site_id)
    with capsys.disabled():
        print(f"\ncreateSite: {created.gas_used} gas, setDeviceSite: {joined.gas_used} gas")
    record = world.deployer.device("SITE-A1", "latest")
    assert record is not None and record.site_id == site_id
    world.manager.set_site_power(site_id, 30_000, 0)
    site = world.deployer.site(site_id, "latest")
    assert site is not None and (site.max_power_w, site.min_session_w) == (30_000, 0)
    world.manager.set_device_site("SITE-A2", 0)  # out of any site
    record = world.deployer.device("SITE-A2", "latest")
    assert record is not None and record.site_id == 0
    assert world.deployer.site(site_id + 99, "latest") is None


def test_hostile_accounts_cannot_open_change_or_load_a_site(world: World) -> None:
    _device(world.manager, "SITE-B1")
    world.manager.create_site(40_000, 1_000)
    mine = int(world.deployer.read("DeviceFactory", "siteCount", block="latest"))
    rival = world.new_actor()
    rival.register_roles(2)  # another device manager, with a charger and a site of its own
    _device(rival, "RIVAL-1")
    rival.create_site(10_000, 1_000)
    theirs = mine + 1

    assert _revert(world.driver.create_site, 10_000, 0) == "NotADeviceManagerAccount"
    assert _revert(rival.set_site_power, mine, 1, 0) == "NotSiteManager"
    assert _revert(world.driver.set_site_power, mine, 1, 0) == "NotSiteManager"
    assert _revert(rival.set_device_site, "RIVAL-1", mine) == "NotSiteManager"  # load my site with theirs
    assert _revert(rival.set_device_site, "SITE-B1", theirs) == "NotDeviceManager"  # move my charger
    assert _revert(rival.set_device_site, "SITE-B1", 0) == "NotDeviceManager"  # or take it out
    assert _revert(world.manager.set_device_site, "SITE-B1", theirs) == "NotSiteManager"
    assert _revert(world.manager.set_device_site, "SITE-B1", 9_999) == "UnknownSite"
    assert _revert(world.manager.set_device_site, "NO-SUCH-DEVICE", mine) == "UnknownDevice"
    for power, minimum in ((0, 0), (1_000, 1_001), (4_000_000_001, 0)):
        assert _revert(world.manager.create_site, power, minimum) == "SitePowerInvalid"
        assert _revert(world.manager.set_site_power, mine, power, minimum) == "SitePowerInvalid"
    site = world.deployer.site(mine, "latest")
    assert site is not None and (site.max_power_w, site.min_session_w) == (40_000, 1_000)
    record = world.deployer.device("RIVAL-1", "latest")
    assert record is not None and record.site_id == 0
