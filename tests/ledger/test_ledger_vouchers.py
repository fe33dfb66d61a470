"""Payment vouchers in the ledger: the latest valid voucher kept, refusals, the stop decision,
settlement = min(metered, voucher), and a Byzantine ingress validator inflating energy."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

from ledger_world import (
    CHARGER,
    DEPOSIT,
    ESCROW_1,
    ESCROW_2,
    T0_MS,
    TARIFF,
    World,
    ev,
    iso,
    start16,
    stop16,
)

from devsen.ledger import BlockContext, EscrowSession, Ledger, id_tag_hash
from devsen.ledger.ledger import BlockOutcome
from devsen.ledger.vouchers import (
    LatestVoucher,
    PaymentVoucher,
    chunk_amount,
    decode_voucher,
    sign_voucher,
)
from ocpp_adapter.events import ChargerEvent
from primitives.eip712 import Domain, SigningKey

DOMAIN = Domain(31337, b"\x42" * 20)
DRIVER = SigningKey(b"\x07" * 32)
OTHER = SigningKey(b"\x08" * 32)
CHUNK = chunk_amount(TARIFF.price_per_kwh)  # 0.5 kWh at 2000/kWh = 1000


def voucher_world(voucher_mode: bool = True) -> World:
    """The ledger world with ESCROW_1 (and ESCROW_2) opened by DRIVER, ESCROW_1 in voucher mode."""
    world = World()
    opened = T0_MS // 1000 - 3_600  # an hour ago: the energy bound is far above these readings
    for session_id, connector, mode in ((ESCROW_1, 1, voucher_mode), (ESCROW_2, 2, False)):
        world.chain.sessions[session_id] = EscrowSession(
            session_id, "0x" + DRIVER.address.hex(), CHARGER, connector, id_tag_hash("TAG-OK"), DEPOSIT, opened,
            voucher_mode=mode)
    return world


def apply_vouchers(world: World, *vouchers: PaymentVoucher, events: tuple[Any, ...] = ()) -> BlockOutcome:
    ctx = BlockContext(world.ledger.height + 1, world.now_ms, 100 + world.ledger.height, b"\xee" * 32)
    world.now_ms += 1_000
    outcome = world.ledger.apply_block(ctx, world.chain, list(events),
                                       [(v, v.signer(DOMAIN)) for v in vouchers])
    return outcome


def meter(wh: int, at_ms: int = T0_MS) -> ChargerEvent:
    return ev("MeterValues", {"connectorId": 1, "transactionId": 1, "meterValue": [
        {"timestamp": iso(at_ms), "sampledValue": [{"value": str(wh), "unit": "Wh"}]}]})


def test_voucher_payload_round_trips_and_recovers_the_driver() -> None:
    voucher = sign_voucher(DRIVER, DOMAIN, ESCROW_1, 1234)
    assert decode_voucher(voucher.encode()) == voucher
    assert voucher.signer(DOMAIN) == DRIVER.address


def test_latest_voucher_kept_and_bad_ones_refused() -> None:
    world = voucher_world()
    def sign(amount: int, key: SigningKey = DRIVER, sid: bytes = ESCROW_1) -> PaymentVoucher:
        return sign_voucher(key, DOMAIN, sid, amount)

    assert apply_vouchers(world, sign(1_000), sign(2_000)).voucher_refusals == (None, None)
    assert cast(LatestVoucher, world.ledger.vouchers.latest(ESCROW_1)).cumulative_amount == 2_000
    forged_other_session = PaymentVoucher(ESCROW_2, 5_000, sign(5_000).signature)  # signed for ESCROW_1
    refusals: Any = apply_vouchers(world, sign(2_000), sign(1_500), sign(DEPOSIT + 1), sign(3_000, OTHER),
                              forged_other_session, sign(3_000, sid=b"\x09" * 32)).voucher_refusals
    assert "not above the latest" in refusals[0] and "not above the latest" in refusals[1]
    assert "exceeds the deposit" in refusals[2]
    assert "not by the session's driver" in refusals[3] and "not by the session's driver" in refusals[4]
    assert "not open on chain" in refusals[5]
    assert cast(LatestVoucher, world.ledger.vouchers.latest(ESCROW_1)).cumulative_amount == 2_000
    assert world.ledger.vouchers.latest(ESCROW_2) is None


def test_voucher_state_is_in_the_hash_and_the_snapshot() -> None:
    world = voucher_world()
    before = world.ledger.state_hash()
    apply_vouchers(world, sign_voucher(DRIVER, DOMAIN, ESCROW_1, 700))
    restored = Ledger.from_bytes(world.ledger.to_bytes())
    assert restored.state_hash() == world.ledger.state_hash() != before
    assert cast(LatestVoucher, restored.vouchers.latest(ESCROW_1)).cumulative_amount == 700


def test_stop_when_metered_cost_runs_more_than_a_chunk_ahead() -> None:
    world = voucher_world()
    world.one(start16(meter=0))
    apply_vouchers(world, sign_voucher(DRIVER, DOMAIN, ESCROW_1, 2_000))
    assert apply_vouchers(world, events=(meter(1_400),)).stops == ()  # cost 2800, 800 ahead
    outcome = apply_vouchers(world, events=(meter(1_600),))  # cost 3200, 1200 ahead > one chunk (1000)
    assert [(s.session_id, s.charger_id, s.tx_ref, s.voucher_amount) for s in outcome.stops] == \
        [(ESCROW_1, CHARGER, "1", 2_000)]
    assert apply_vouchers(world, events=(meter(1_800),)).stops == ()  # decided once
    outcome = world.block(stop16(1, 1_900, T0_MS + 10_000))
    assert outcome.settlements[0].amount == 2_000  # min(metered 3800, voucher 2000)


def test_no_voucher_at_all_stops_after_one_chunk_and_settles_zero() -> None:
    world = voucher_world()
    world.one(start16(meter=0))
    assert apply_vouchers(world, events=(meter(400),)).stops == ()
    assert len(apply_vouchers(world, events=(meter(600),)).stops) == 1
    assert world.block(stop16(1, 700, T0_MS + 5_000)).settlements[0].amount == 0


def test_settlement_is_min_of_metered_and_voucher() -> None:
    world = voucher_world()
    world.one(start16(meter=0))
    apply_vouchers(world, sign_voucher(DRIVER, DOMAIN, ESCROW_1, 9_000))
    outcome = world.block(stop16(1, 2_000, T0_MS + 5_000))  # metered 4000 < voucher 9000
    assert outcome.settlements[0].amount == 4_000
    assert world.ledger.vouchers.latest(ESCROW_1) is None  # settled: the entry is dropped
    refusal: Any = apply_vouchers(world, sign_voucher(DRIVER, DOMAIN, ESCROW_1, 9_500)).voucher_refusals[0]
    assert "already settled" in refusal


def test_a_session_not_in_voucher_mode_settles_metered_and_is_never_stopped() -> None:
    world = voucher_world(voucher_mode=False)
    world.one(start16(meter=0))
    apply_vouchers(world, sign_voucher(DRIVER, DOMAIN, ESCROW_1, 1_000))
    assert apply_vouchers(world, events=(meter(5_000),)).stops == ()
    assert world.block(stop16(1, 5_000, T0_MS + 5_000)).settlements[0].amount == 10_000


def wallet_amount(committed_wh: int, battery_wh: int, signed: int, cap: int) -> int | None:
    """The stream wallet's rule (devsen.voucher_stream.next_voucher) in its simplest form."""
    from devsen.voucher_stream import StreamPolicy, next_voucher

    decision = next_voucher(StreamPolicy(cap=cap, chunk_amount=CHUNK, price_per_kwh=TARIFF.price_per_kwh,
                                         tolerance_wh=0), committed_wh,
                            committed_wh * TARIFF.price_per_kwh // 1000, signed, battery_wh)
    return decision.amount


def run_session(inflate: int, from_step: int = 10) -> tuple[int, int, bool]:
    """One voucher session, metering 200 Wh per block for 30 blocks; the ingress validator adds
    `inflate` Wh per reading from `from_step` on. The driver's wallet signs from the committed energy while it matches
    the car's own view. Returns (paid, true cost, stopped)."""
    world = voucher_world()
    world.one(start16(meter=0))
    signed, stopped, true_wh = 0, False, 0
    for step in range(1, 31):
        true_wh = 200 * step
        reported = true_wh + inflate * max(0, step - from_step)
        outcome = apply_vouchers(world, events=(meter(reported),))
        stopped = stopped or bool(outcome.stops)
        if stopped:
            break
        committed = world.ledger.open_sessions()[0].meter_last_wh or 0
        amount = wallet_amount(committed, true_wh, signed, cap=DEPOSIT)
        if amount is not None:
            apply_vouchers(world, sign_voucher(DRIVER, DOMAIN, ESCROW_1, amount))
            signed = amount
    stop = world.block(stop16(1, world.ledger.open_sessions()[0].meter_last_wh or 0, T0_MS + 1_000))
    true_cost = true_wh * TARIFF.price_per_kwh // 1000
    return stop.settlements[0].amount, true_cost, stopped


def test_a_byzantine_ingress_validator_inflating_energy_costs_the_driver_at_most_one_chunk() -> None:
    honest_paid, honest_true, honest_stopped = run_session(inflate=0)
    assert not honest_stopped and honest_paid == honest_true  # metered cost, under the voucher
    paid, true_cost, stopped = run_session(inflate=150)
    assert stopped  # the wallet stopped signing at the mismatch, the network stopped the charge
    assert paid <= true_cost + CHUNK
    assert paid - true_cost <= CHUNK


def test_hostile_escrow_voucher_mode_is_refused_as_bad_chain_data() -> None:
    world = voucher_world()
    bad = replace(world.chain.sessions[ESCROW_1])
    object.__setattr__(bad, "voucher_mode", 1)  # not a bool: chain data outside the bounds
    world.chain.sessions[ESCROW_1] = bad
    refusal: Any = apply_vouchers(world, sign_voucher(DRIVER, DOMAIN, ESCROW_1, 10)).voucher_refusals[0]
    assert "not open on chain" in refusal


def test_an_escrow_driver_that_is_not_an_address_refuses_every_voucher() -> None:
    world = voucher_world()
    world.chain.sessions[ESCROW_1] = replace(world.chain.sessions[ESCROW_1], driver="not-an-address")
    refusal: Any = apply_vouchers(world, sign_voucher(DRIVER, DOMAIN, ESCROW_1, 10)).voucher_refusals[0]
    assert "not by the session's driver" in refusal


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

STEP = st.one_of(
    st.tuples(st.just("voucher"), st.sampled_from([DRIVER, OTHER]), st.sampled_from([ESCROW_1, ESCROW_2, b"\x09" * 32]),
              st.integers(0, DEPOSIT + 10)),
    st.tuples(st.just("meter"), st.integers(0, 5_000)),
    st.tuples(st.just("close"), st.sampled_from([ESCROW_1, ESCROW_2])),
)


@settings(max_examples=40, deadline=None)
@given(st.booleans(), st.lists(STEP, max_size=12))
def test_any_voucher_sequence_is_total_deterministic_and_never_pays_more_than_signed(mode: bool, steps: list[Any]) -> None:
    worlds = [voucher_world(mode), voucher_world(mode)]
    start = start16(meter=0)  # the same events for both ledgers (message ids are fresh per event)
    for world in worlds:
        world.one(start)
    best: dict[bytes, int] = {}
    for step in steps:
        reading = meter(step[1]) if step[0] == "meter" else None
        voucher = sign_voucher(step[1], DOMAIN, step[2], step[3]) if step[0] == "voucher" else None
        for world in worlds:
            if voucher is not None:
                outcome = apply_vouchers(world, voucher)
                if outcome.voucher_refusals == (None,):
                    assert step[1] is DRIVER and voucher.cumulative_amount <= DEPOSIT
                    assert voucher.cumulative_amount > best.get(voucher.session_id, -1)
            elif reading is not None:
                apply_vouchers(world, events=(reading,))
            else:
                world.chain.close_escrow_session(step[1])
                apply_vouchers(world)
        if voucher is not None and (latest := worlds[0].ledger.vouchers.latest(voucher.session_id)) is not None:
            best[voucher.session_id] = latest.cumulative_amount
        assert worlds[0].ledger.state_hash() == worlds[1].ledger.state_hash()
    signed = worlds[0].ledger.vouchers.latest(ESCROW_1)
    outcome = worlds[0].block(stop16(1, 5_000, T0_MS + 1_000))
    if mode and outcome.settlements:
        assert outcome.settlements[0].amount <= (signed.cumulative_amount if signed else 0)


def test_a_restarted_ledger_stays_in_step_after_its_voucher_table_emptied() -> None:
    world = voucher_world()
    world.one(start16(meter=0))
    apply_vouchers(world, sign_voucher(DRIVER, DOMAIN, ESCROW_1, 500))
    world.block(stop16(1, 100, T0_MS + 1_000))  # settles: the table is empty again
    assert len(world.ledger.vouchers.table) == 0
    restored = World()
    restored.chain, restored.now_ms = world.chain, world.now_ms
    restored.ledger = Ledger.from_bytes(world.ledger.to_bytes())
    for w in (world, restored):
        w.now_ms = restored.now_ms
        apply_vouchers(w, sign_voucher(DRIVER, DOMAIN, ESCROW_2, 700))
    assert restored.ledger.state_hash() == world.ledger.state_hash()
    assert restored.ledger.to_bytes() == world.ledger.to_bytes()
