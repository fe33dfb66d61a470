"""The ledger settles at the tariff copied into the escrow session, and closes a transaction
before its escrow becomes refundable (issue 12, part 3)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from ledger_world import BLOCK_MS, CHARGER, DEPOSIT, ESCROW_1, T0_MS, TARIFF, World, start16, stop16

from devsen.ledger import EscrowSession, Tariff
from devsen.ledger.kinds import REFUND_DEADLINE, REFUND_MARGIN_MS

AGREED = Tariff(price_per_kwh=1_000, per_minute_fee=0)


def with_escrow(world: World, **changes: object) -> None:
    session = world.chain.sessions[ESCROW_1]
    world.chain.sessions[ESCROW_1] = replace(session, **changes)  # type: ignore[arg-type]


def test_settlement_uses_the_tariff_copied_at_opening_not_the_devices_current_one() -> None:
    world = World()
    with_escrow(world, tariff=AGREED)
    assert world.chain.devices[CHARGER].tariff == TARIFF != AGREED  # the manager raised the price since
    tx = world.one(start16(meter=1_000))["transactionId"]
    out = world.block(stop16(tx, 11_000, T0_MS + 60_000))
    assert [(o.energy_wh, o.amount) for o in out.settlements] == [(10_000, 10_000 * AGREED.price_per_kwh // 1000)]


def test_without_a_copied_tariff_the_device_tariff_applies() -> None:
    world = World()
    tx = world.one(start16(meter=1_000))["transactionId"]
    out = world.block(stop16(tx, 11_000, T0_MS + 60_000))
    assert out.settlements[0].amount == 10_000 * TARIFF.price_per_kwh // 1000  # under a minute of block time


def test_transaction_is_closed_and_settled_before_the_refund_deadline() -> None:
    world = World()
    refund_at_s = T0_MS // 1000 + 24 * 3600  # a 25 h refund timeout: the full margin applies
    with_escrow(world, refund_at_s=refund_at_s)
    tx = world.one(start16(meter=1_000))["transactionId"]
    world.one(start16(connector=2, meter=0))  # ESCROW_2 has no deadline: stays open
    world.block()
    assert len(world.ledger.open_sessions()) == 2
    world.now_ms = refund_at_s * 1000 - REFUND_MARGIN_MS
    out = world.block()
    assert [o.session_id for o in out.settlements] == [ESCROW_1]
    assert REFUND_DEADLINE in [a.kind for a in world.ledger.anomalies()]
    assert [s.connector_id for s in world.ledger.open_sessions()] == [2]
    assert world.now_ms - BLOCK_MS < refund_at_s * 1000 - REFUND_MARGIN_MS + BLOCK_MS  # not one block late
    # the charger's late stop names a closed transaction: nothing more is owed
    late = world.block(stop16(tx, 50_000, world.now_ms))
    assert late.settlements == ()


def test_an_escrow_within_the_margin_is_not_bound() -> None:
    world = World()
    with_escrow(world, opened_at_s=T0_MS // 1000 - 20 * 3600, refund_at_s=T0_MS // 1000 + 3600)
    reply = world.one(start16(meter=1_000))
    assert reply["idTagInfo"]["status"] != "Accepted"


@pytest.mark.parametrize("changes", [
    {"refund_at_s": 5}, {"refund_at_s": 2**70}, {"tariff": "cheap"},
])
def test_escrow_terms_out_of_bounds_are_refused(changes: dict[str, object]) -> None:
    session = EscrowSession(ESCROW_1, "0x" + "dd" * 20, CHARGER, 1, b"\x00" * 32, DEPOSIT, 1_000)
    with pytest.raises(ValueError):
        replace(session, **changes)  # type: ignore[arg-type]


def test_forced_close_is_deterministic_across_a_snapshot_restore() -> None:
    from devsen.ledger import Ledger

    world = World()
    refund_at_s = T0_MS // 1000 + 24 * 3600
    with_escrow(world, refund_at_s=refund_at_s)
    world.one(start16(meter=1_000))
    restored = World()
    restored.chain, restored.now_ms = world.chain, world.now_ms
    restored.ledger = Ledger.from_bytes(world.ledger.to_bytes())
    for w in (world, restored):
        w.now_ms = refund_at_s * 1000 - REFUND_MARGIN_MS
    assert world.block().state_hash == restored.block().state_hash
