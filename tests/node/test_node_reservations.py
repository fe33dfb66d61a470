"""On the real contracts (in-process py-evm chain) and the ledger: a reservation made in the
Escrow is read at the agreed Ethereum block and holds its connector for the driver (issue 13)."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from anchoring.chain import connect
from devsen.chain_facts import ChainFacts, chain_keys, read_facts
from devsen.chain_view import ContractChainAccess, SessionIndex
from devsen.ledger import BlockContext, Ledger
from ocpp_adapter.events import ChargerEvent

_spec = importlib.util.spec_from_file_location(  # the contract tests' deployment helper
    "contracts_test_world_reservations", Path(__file__).resolve().parents[1] / "contracts" / "conftest.py")
assert _spec is not None and _spec.loader is not None
_world = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _world
_spec.loader.exec_module(_world)

INGRESS = "0x" + "a1" * 20


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def start(tag: str, message_id: str, at_ms: int) -> ChargerEvent:
    payload = {"connectorId": 1, "idTag": tag, "meterStart": 1_000, "timestamp": iso(at_ms)}
    return ChargerEvent("CP-R", "1.6", "StartTransaction", message_id, payload, INGRESS, at_ms)


def test_an_escrow_reservation_read_at_the_agreed_block_holds_the_connector() -> None:
    world = _world.build_world(connect("tester"))
    world.manager.create_device("CP-R", location="x", connector_count=2, price_per_kwh=1_000, per_minute_fee=100,
                                auth_salt=b"\x01" * 16, auth_hash=b"\x02" * 32)
    driver: Any = world.driver
    driver.register_id_tag("TAG-R")
    driver.faucet_mint(driver.sender.address, 10 * _world.TOKEN)
    driver.approve(world.deployment.escrow, 10 * _world.TOKEN)
    rival = world.new_actor()
    rival.register_roles(1)
    rival.register_id_tag("TAG-OTHER")  # registered, but not the holder
    now_s = int(world.w3.eth.get_block("latest")["timestamp"])
    reservation_id, _ = driver.reserve("CP-R", 1, "TAG-R", now_s + 600)
    access = ContractChainAccess(world.deployer, SessionIndex(world.deployer, world.deployment.deploy_block))
    head = world.w3.eth.block_number
    view = access.view_at(head)
    (held,) = view.reservations("CP-R")
    assert (held.reservation_id, held.connector_id, held.expires_at_s) == (reservation_id, 1, now_s + 600)
    assert view.reservations("CP-NONE") == []  # an unregistered device has none

    ledger = Ledger()
    t0 = (now_s + 1) * 1000
    events = [start("TAG-OTHER", "s1", t0)]
    keys = chain_keys(events, ledger)
    facts = ChainFacts(head, b"\x01" * 32, b"", keys, **read_facts(view, keys))
    out = ledger.apply_block(BlockContext(1, t0, head, b"\x01" * 32), facts.view(), events)
    reply = out.results[0].reply
    assert reply is not None and reply["idTagInfo"]["status"] == "Blocked"
    assert facts.reservations["CP-R"] == (held,)
