"""DeviceFactory's signed-meter fields: the manager sets the meter's OCMF key and the
`requireSignedMeter` policy; nobody else can; the policy needs a key; the chain view hands
both to the ledger."""

from __future__ import annotations

import pytest
from conftest import World, build_world
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from anchoring.chain import ChainRevert, connect
from devsen.chain_view import _to_ledger_device
from devsen.wallet import set_meter_key
from ocpp_adapter import ocmf

KEY = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(connect("tester"))


def _revert(fn, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ChainRevert) as info:
        fn(*args)
    return info.value.name


def test_manager_sets_key_and_policy(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.manager.create_device("METER-1", location="", connector_count=2, price_per_kwh=1, per_minute_fee=0,
                                auth_salt=b"\x01" * 16, auth_hash=b"\x02" * 32)
    assert _revert(world.manager.update_device, "setRequireSignedMeter", "METER-1", True) == "SignedMeterNeedsKey"
    assert _revert(world.driver.update_device, "setChargerPublicKey", "METER-1", KEY) == "NotDeviceManager"
    assert _revert(world.manager.update_device, "setChargerPublicKey", "METER-1", b"\x30" * 129) \
        == "ChargerPublicKeyTooLong"
    receipt = world.manager.update_device("setChargerPublicKey", "METER-1", KEY)
    with capsys.disabled():
        print(f"\nsetChargerPublicKey ({len(KEY)}-byte P-256 SPKI): {receipt.gas_used} gas")
    policy = world.manager.update_device("setRequireSignedMeter", "METER-1", True)
    with capsys.disabled():
        print(f"setRequireSignedMeter(true): {policy.gas_used} gas")
    record = world.deployer.device("METER-1", "latest")
    assert record is not None and record.charger_public_key == KEY and record.require_signed_meter
    info = _to_ledger_device(record)
    assert info is not None and info.meter_public_key == KEY and info.require_signed_meter
    world.manager.update_device("setChargerPublicKey", "METER-1", b"")  # clearing the key clears the policy
    cleared = world.deployer.device("METER-1", "latest")
    assert cleared is not None and not cleared.require_signed_meter and cleared.charger_public_key == b""


def test_wallet_refuses_an_unusable_key_before_paying_gas(world: World) -> None:
    world.manager.create_device("METER-2", location="", connector_count=1, price_per_kwh=1, per_minute_fee=0,
                                auth_salt=b"\x01" * 16, auth_hash=b"\x02" * 32)
    with pytest.raises(ocmf.OcmfError):
        set_meter_key(world.manager, "METER-2", b"\x30\x03abc", True)
    set_meter_key(world.manager, "METER-2", KEY, True)
    record = world.deployer.device("METER-2", "latest")
    assert record is not None and record.require_signed_meter


def test_wallet_meter_key_command(world: World) -> None:
    from devsen.wallet import _parser, _run

    world.manager.create_device("METER-3", location="", connector_count=1, price_per_kwh=1, per_minute_fee=0,
                                auth_salt=b"\x01" * 16, auth_hash=b"\x02" * 32)
    base = ["--rpc", "unused", "--deployment", "unused", "meter-key", "METER-3", "--public-key"]
    print(_run(_parser().parse_args([*base, KEY.hex()]), world.manager))
    record = world.deployer.device("METER-3", "latest")
    assert record is not None and record.charger_public_key == KEY and record.require_signed_meter
    _run(_parser().parse_args([*base, KEY.hex(), "--no-require-signed"]), world.manager)
    record = world.deployer.device("METER-3", "latest")
    assert record is not None and not record.require_signed_meter
    with pytest.raises(ValueError, match="--public-key"):
        _run(_parser().parse_args([*base, "zz"]), world.manager)
