"""Settlement batches are a pure function of the ledger (issue 12, part 3): every node that
applied the same blocks, or restored a snapshot of them, derives the same batches for a
settlement window, and a session closed on chain meanwhile drops out of them alike."""

from __future__ import annotations

from ledger_world import ESCROW_1, ESCROW_2, ESCROW_201, World, start16, stop16, tx_event

from anchoring.attestations import Settlement, SettlementBatch
from anchoring.batches import settlement_batches, settlement_window_closes
from devsen.ledger import Ledger
from ocpp_adapter.events import ChargerEvent

EVERY = 4


def _window(ledger: Ledger, height: int) -> list[SettlementBatch]:
    orders = ledger.settlements_ordered_between(height - EVERY + 1, height)
    return settlement_batches(height, [Settlement(o.session_id, o.energy_wh, o.amount) for o in orders])


def _drive(world: World) -> dict[int, list[SettlementBatch]]:
    """Three sessions: two stop in the same block, one in a later window. Returns the batches
    of every window that closed, by closing height."""
    closed: dict[int, list[SettlementBatch]] = {}

    def block(*events: ChargerEvent) -> None:
        world.block(*events)
        if settlement_window_closes(world.ledger.height, EVERY):
            closed[world.ledger.height] = _window(world.ledger, world.ledger.height)

    tx1 = world.one(start16(connector=1))["transactionId"]
    tx2 = world.one(start16(connector=2))["transactionId"]
    block(tx_event("Started", "T-201", tag="TAG-OK", wh=0))
    world.now_ms += 600_000
    block(stop16(tx2, 3_000, world.now_ms - 1_000), stop16(tx1, 2_000, world.now_ms - 1_000))  # height 4
    for _ in range(3):
        block()
    block(tx_event("Ended", "T-201", seq=1, wh=4_000, at_ms=world.now_ms - 1_000))  # height 8
    return closed


def test_every_node_derives_the_same_settlement_batches() -> None:
    first, second = World(), World()
    batches = _drive(first)
    assert batches == _drive(second)
    assert sorted(batches) == [4, 8]
    window_4, window_8 = batches[4], batches[8]
    assert len(window_4) == 1 and [e.session_id for e in window_4[0].entries] == [ESCROW_2, ESCROW_1]
    assert [b.batch_id for b in window_4] == [4 * 64]
    assert [e.session_id for e in window_8[0].entries] == [ESCROW_201]
    assert [(b.settlements_hash, b.entries) for b in window_4] == \
        [(b.settlements_hash, b.entries) for b in _drive(World())[4]]  # entries too, not only identity
    # a node restored from a snapshot of height 8 derives the same window
    restored = Ledger.from_bytes(first.ledger.to_bytes())
    assert _window(restored, 8) == window_8 and _window(restored, 8)[0].entries == window_8[0].entries


def test_a_session_closed_on_chain_before_its_window_closes_drops_out_alike() -> None:
    worlds = [World(), World()]
    derived = []
    for world in worlds:
        tx1 = world.one(start16(connector=1))["transactionId"]
        tx2 = world.one(start16(connector=2))["transactionId"]
        world.now_ms += 600_000
        world.block(stop16(tx1, 2_000, world.now_ms - 1_000), stop16(tx2, 3_000, world.now_ms - 1_000))  # 3
        world.chain.close_escrow_session(ESCROW_1)  # e.g. the manager closed it with a voucher
        world.block()  # 4: the ledger releases the closed session's order
        derived.append(_window(world.ledger, 4))
    assert derived[0] == derived[1]
    assert [e.session_id for b in derived[0] for e in b.entries] == [ESCROW_2]
