"""Events vouched by a registered operator (a full node, not a validator) move no money beyond what
charger-signed readings and the driver's vouchers allow (LEDGER.md "Events vouched by an operator").

Hostile: a full node vouching an inflated stop on an unsigned device, or only the start of a
session a validator stops, settles 0; the same session through a validator still pays (the
rule is about the voucher, not the session); a signed-meter device and a voucher-mode session
settle what their signatures back; operator-vouched presence earns no uptime."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ledger_world import CHARGER, DEPOSIT, ESCROW_1, T0_MS, TARIFF, World, ev, start16, stop16
from test_ledger_signed import doc, meter16, signed16, signed_world
from test_ledger_vouchers import DOMAIN, DRIVER, voucher_world

from devsen.ledger import BlockContext
from devsen.ledger.ledger import BlockOutcome
from devsen.ledger.vouchers import sign_voucher
from ocpp_adapter.events import ChargerEvent

VALIDATOR = "0x" + "a1" * 20  # ledger_world's default ingress
OPERATOR = "0x" + "f5" * 20


def by_operator(event: ChargerEvent) -> ChargerEvent:
    return replace(event, ingress_node=OPERATOR)


class NetworkWorld(World):
    """World whose blocks name their validator set (as the node's application does)."""

    def block(self, *events: ChargerEvent, advance_ms: int = 1_000, vouchers: tuple[Any, ...] = ()) -> BlockOutcome:
        ctx = BlockContext(self.ledger.height + 1, self.now_ms, 100 + self.ledger.height, b"\xee" * 32,
                           validators=frozenset({VALIDATOR}))
        self.now_ms += advance_ms
        return self.ledger.apply_block(ctx, self.chain, list(events), list(vouchers))


def _as_network(world: World) -> NetworkWorld:
    network = NetworkWorld()
    network.chain = world.chain
    return network


def _session(world: World, *, start_by: str, stop_by: str, meter_stop: int = 40_000) -> Any:
    """Start (meter 1,000 Wh) and an hour later stop a 1.6 session on connector 1."""
    start = start16(meter=1_000)
    result = world.block(by_operator(start) if start_by == OPERATOR else start).results[0]
    assert result.reply is not None and result.reply["idTagInfo"]["status"] == "Accepted"
    tx = result.reply["transactionId"]
    world.now_ms = T0_MS + 3_601_000
    stop = stop16(tx, meter_stop, T0_MS + 3_600_000)
    return world.block(by_operator(stop) if stop_by == OPERATOR else stop)


def kinds(world: World) -> list[str]:
    return [a.kind for a in world.ledger.anomalies()]


def test_an_operator_inflating_energy_on_an_unsigned_device_settles_nothing() -> None:
    world = NetworkWorld()
    outcome = _session(world, start_by=VALIDATOR, stop_by=OPERATOR, meter_stop=2**40)
    assert [(o.energy_wh, o.amount) for o in outcome.settlements] == [(0, 0)]
    assert "operator_unbacked" in kinds(world)
    anomaly = [a for a in world.ledger.anomalies() if a.kind == "operator_unbacked"][0]
    assert OPERATOR in anomaly.detail
    # the start alone through an operator taints the session too (its meterStart is the operator's word)
    world = NetworkWorld()
    outcome = _session(world, start_by=OPERATOR, stop_by=VALIDATOR)
    assert [(o.energy_wh, o.amount) for o in outcome.settlements] == [(0, 0)]


def test_the_same_session_through_validators_pays_and_the_rule_is_deterministic() -> None:
    world = NetworkWorld()
    outcome = _session(world, start_by=VALIDATOR, stop_by=VALIDATOR)
    energy = 39_000
    assert [(o.energy_wh, o.amount) for o in outcome.settlements] == [
        (energy, min(energy * TARIFF.price_per_kwh // 1000 + 60 * TARIFF.per_minute_fee, DEPOSIT))]
    assert "operator_unbacked" not in kinds(world)
    start, stop, hashes = by_operator(start16(meter=1_000)), by_operator(stop16(1, 2**40, T0_MS + 3_600_000)), []
    for _ in range(2):  # the same blocks on two nodes: the same state (the operator mark included)
        world = NetworkWorld()
        world.block(start)
        world.block(stop)
        hashes.append(world.ledger.state_hash())
    assert hashes[0] == hashes[1]
    # a ledger without a validator set in its blocks (in-process tests) treats every voucher as one
    plain = World()
    tx = plain.one(by_operator(start16(meter=1_000)))["transactionId"]
    plain.now_ms = T0_MS + 3_601_000
    assert plain.block(by_operator(stop16(tx, 40_000, T0_MS + 3_600_000))).settlements[0].energy_wh == 39_000


def test_a_signed_meter_device_settles_its_signed_energy_through_an_operator() -> None:
    world = _as_network(signed_world())
    a, b = T0_MS + 1_000, T0_MS + 1_801_000
    tx_reply = world.block(by_operator(start16(meter=1_000))).results[0].reply
    assert tx_reply is not None
    tx = tx_reply["transactionId"]
    world.block(by_operator(meter16(tx, doc(1, (a, "B", 10_000)))))
    world.now_ms = T0_MS + 3_601_000
    outcome = world.block(by_operator(stop16(tx, 999_999, T0_MS + 3_600_000,
                                             transactionData=signed16(doc(2, (b, "E", 15_000))))))
    assert [(o.energy_wh, o.amount) for o in outcome.settlements] == [
        (5_000, 5_000 * TARIFF.price_per_kwh // 1000 + 30 * TARIFF.per_minute_fee)]
    assert "operator_unbacked" not in kinds(world)


def test_a_voucher_mode_session_through_an_operator_settles_at_most_the_voucher() -> None:
    world = _as_network(voucher_world())
    voucher = sign_voucher(DRIVER, DOMAIN, ESCROW_1, 7_000)
    reply = world.block(by_operator(start16(meter=1_000))).results[0].reply
    assert reply is not None
    world.block(vouchers=((voucher, DRIVER.address),))
    world.now_ms = T0_MS + 3_601_000
    outcome = world.block(by_operator(stop16(reply["transactionId"], 2**40, T0_MS + 3_600_000)))
    assert [o.amount for o in outcome.settlements] == [7_000]  # min(metered, the driver's voucher)
    assert "operator_unbacked" not in kinds(world)


def test_operator_vouched_presence_earns_no_uptime() -> None:
    boot = {"chargePointVendor": "V", "chargePointModel": "M"}
    world = NetworkWorld()
    world.block(by_operator(ev("BootNotification", boot)))
    assert world.ledger.uptime(CHARGER) is None
    world.block(ev("BootNotification", boot))
    assert world.ledger.uptime(CHARGER) is not None
