"""End to end on the real contracts (in-process py-evm chain) and the ledger: a tariff change
after opening does not change the settlement, which settleBatch then pays (issue 12, part 3)."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from anchoring.chain import SessionStatus, connect
from anchoring.escrow_sign import settlement_batch_digest
from devsen.chain_view import ContractChainAccess, SessionIndex
from devsen.ledger import BlockContext, DeviceInfo, Ledger
from ocpp_adapter.events import ChargerEvent

_spec = importlib.util.spec_from_file_location(  # the contract tests' deployment helper
    "contracts_test_world_terms", Path(__file__).resolve().parents[1] / "contracts" / "conftest.py")
assert _spec is not None and _spec.loader is not None
_world = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _world
_spec.loader.exec_module(_world)

PRICE = 300_000
INGRESS = "0x" + "a1" * 20


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def event(action: str, payload: dict[str, object], message_id: str, at_ms: int) -> ChargerEvent:
    return ChargerEvent("CP-T", "1.6", action, message_id, payload, INGRESS, at_ms)


def test_tariff_change_after_opening_does_not_change_the_settlement() -> None:
    world = _world.build_world(connect("tester"))
    world.manager.create_device("CP-T", location="x", connector_count=2, price_per_kwh=PRICE, per_minute_fee=0,
                                auth_salt=b"\x01" * 16, auth_hash=b"\x02" * 32)
    world.driver.register_id_tag("TAG-T")
    world.driver.faucet_mint(world.driver.sender.address, 100 * _world.TOKEN)
    world.driver.approve(world.deployment.escrow, 20 * _world.TOKEN)
    session_id, _ = world.driver.open_session("CP-T", 1, "TAG-T", 20 * _world.TOKEN)
    world.manager.update_device("setTariff", "CP-T", 3 * PRICE, 0)  # the manager triples the price
    access = ContractChainAccess(world.deployer, SessionIndex(world.deployer, world.deployment.deploy_block))
    head = world.w3.eth.block_number
    view = access.view_at(head)
    assert cast(DeviceInfo, view.device("CP-T")).tariff.price_per_kwh == 3 * PRICE
    escrow = view.escrow_session(session_id)
    assert escrow is not None and escrow.tariff is not None and escrow.tariff.price_per_kwh == PRICE
    assert escrow.refund_at_s == escrow.opened_at_s + _world.REFUND_TIMEOUT_S

    ledger = Ledger()
    t0 = escrow.opened_at_s * 1000 + 1_000
    boot: dict[str, object] = {"chargePointVendor": "v", "chargePointModel": "m"}
    ledger.apply_block(BlockContext(1, t0, head, b"\x01" * 32), view, [event("BootNotification", boot, "b1", t0)])
    start = {"connectorId": 1, "idTag": "TAG-T", "meterStart": 1_000, "timestamp": iso(t0)}
    out = ledger.apply_block(BlockContext(2, t0 + 1_000, head, b"\x01" * 32), view,
                             [event("StartTransaction", start, "s1", t0 + 1_000)])
    reply = out.results[0].reply
    assert reply is not None and reply["idTagInfo"]["status"] == "Accepted"
    stop = {"transactionId": reply["transactionId"], "meterStop": 11_000, "timestamp": iso(t0 + 600_000)}
    out = ledger.apply_block(BlockContext(3, t0 + 600_000, head, b"\x01" * 32), view,
                             [event("StopTransaction", stop, "e1", t0 + 600_000)])
    assert [(o.session_id, o.energy_wh, o.amount) for o in out.settlements] == [(session_id, 10_000, 10 * PRICE)]

    entries = [(o.session_id, o.energy_wh, o.amount) for o in out.settlements]
    digest = settlement_batch_digest(world.deployment.domain("Escrow"), entries)
    world.relayer.settle_batch(entries, _world.quorum_signatures(world.validators[:3], digest))
    settled = world.deployer.session(session_id, "latest")
    assert settled is not None and settled.status is SessionStatus.SETTLED and settled.settled_amount == 10 * PRICE
