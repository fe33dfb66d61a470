"""Determinism, snapshots and hypothesis properties of the ledger over random event streams."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st
from ledger_world import (
    BLOCK_MS,
    CHARGER,
    CHARGER_201,
    ESCROW_1,
    ESCROW_2,
    ESCROW_201,
    T0_MS,
    World,
    ev,
    iso,
    start16,
    stop16,
    tx_event,
)

from devsen.ledger import (
    BlockContext,
    EscrowSession,
    Ledger,
    LedgerParams,
    SnapshotError,
    Tariff,
    energy_bound,
    id_tag_hash,
    session_token,
)

CHARGERS_16 = [CHARGER] * 4 + ["OFF-1", "NOPE"]  # repeats weight the draw towards what can settle
CHARGERS_201 = [CHARGER_201] * 4 + ["OFF-1", CHARGER]  # CP-1 also speaks 2.0.1: ids must not clash
# RFID tags, and session tokens (remote start) of escrow sessions that exist or that
# `apply_chain_change` may open (n = 1) for each charger, and of one at the other charger
TAGS = ["TAG-OK"] * 4 + ["TAG-NOPAY", "TAG-EXP", "TAG-REV", "TAG-LATER", "NOBODY"] + [
    session_token(sid) for sid in (ESCROW_1, ESCROW_2, ESCROW_201, (CHARGER.encode() + b"\x01" * 32)[:32],
                                   (CHARGER_201.encode() + b"\x01" * 32)[:32])
]
CONNECTORS = [1, 1, 1, 2, 2, 0, 3, -1]
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=8),
                      st.floats(allow_nan=False, allow_infinity=False))
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["value", "connectorId", "transactionId", "idTag", "meterValue", "sampledValue",
                     "evseId", "status", "unit", "timestamp", "idToken", "eventType"]), inner, max_size=3),
    max_leaves=8)
stamp = st.one_of(st.integers(T0_MS - 7_200_000, T0_MS + 7_200_000).map(iso), st.sampled_from(["yesterday", ""]))


@st.composite
def event_16(draw: st.DrawFn) -> Any:
    charger = draw(st.sampled_from(CHARGERS_16))
    connector = draw(st.sampled_from(CONNECTORS))
    tx = draw(st.integers(1, 6))
    meter = draw(st.integers(-10, 40_000))
    tag = draw(st.sampled_from(TAGS))
    kind = draw(st.sampled_from(["start"] * 3 + ["stop"] * 3 + ["meter", "status", "boot", "auth", "beat", "garbage"]))
    if kind == "start":
        payload = {"connectorId": connector, "idTag": tag, "meterStart": meter, "timestamp": draw(stamp)}
        return ev("StartTransaction", payload, charger=charger, raw=True)
    if kind == "stop":
        payload = {"transactionId": tx, "meterStop": meter, "timestamp": draw(stamp)}
        return ev("StopTransaction", payload, charger=charger, raw=True)
    if kind == "meter":
        sample = {"value": str(meter), "unit": draw(st.sampled_from(["Wh", "kWh"]))}
        payload = {"connectorId": connector, "transactionId": tx, "meterValue": [
            {"timestamp": iso(T0_MS), "sampledValue": [sample]}]}
        return ev("MeterValues", payload, charger=charger, raw=True)
    if kind == "status":
        payload = {"connectorId": connector, "errorCode": "NoError", "status": "Available"}
        return ev("StatusNotification", payload, charger=charger, raw=True)
    if kind == "boot":
        return ev("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}, charger=charger)
    if kind == "auth":
        return ev("Authorize", {"idTag": tag}, charger=charger)
    if kind == "beat":
        return ev("Heartbeat", {}, charger=charger)
    action = draw(st.sampled_from(["StartTransaction", "StopTransaction", "MeterValues", "DataTransfer", "Foo"]))
    return ev(action, draw(st.dictionaries(st.sampled_from(["connectorId", "transactionId", "idTag", "meterStart",
              "meterStop", "timestamp", "meterValue", "vendorId"]), json_value, max_size=4)), raw=True)


@st.composite
def event_201(draw: st.DrawFn) -> Any:
    tx = draw(st.sampled_from(["a", "b", "1", "2"]))
    event_type = draw(st.sampled_from(["Started", "Updated", "Ended"]))
    tag = draw(st.one_of(st.none(), st.sampled_from(TAGS)))
    wh = draw(st.one_of(st.none(), st.integers(-5, 40_000), st.floats(0, 40_000)))
    evse = draw(st.sampled_from([None, *CONNECTORS]))
    event = tx_event(event_type, tx, at_ms=draw(st.integers(T0_MS, T0_MS + 3_600_000)), evse=evse, tag=tag, wh=wh)
    charger = draw(st.sampled_from(CHARGERS_201))
    if draw(st.integers(0, 3)):
        return ev("TransactionEvent", event.payload, version="2.0.1", charger=charger)
    payload = dict(event.payload)
    payload[draw(st.sampled_from(["meterValue", "evse", "idToken", "transactionInfo"]))] = draw(json_value)
    return ev("TransactionEvent", payload, version="2.0.1", charger=charger, raw=True)


chain_change = st.tuples(st.sampled_from(["open", "close", "none"]), st.integers(0, 255), st.integers(1, 2),
                         st.sampled_from(TAGS[:2]), st.sampled_from([0, 5_000, 2**200]))
block_strategy = st.tuples(st.lists(st.one_of(event_16(), event_201()), max_size=8), st.booleans(), chain_change)


def apply_chain_change(world: World, change: tuple[str, int, int, str, int]) -> None:
    """Drivers open escrow sessions; the contract closes them (settled or refunded)."""
    what, n, connector, tag, deposit = change
    session_id = bytes([n]) * 32
    if what == "open" and session_id not in world.chain.sessions:
        for charger in (CHARGER, CHARGER_201):
            sid = (charger.encode() + session_id)[:32]
            world.chain.sessions[sid] = EscrowSession(sid, "0x" + "dd" * 20, charger, connector,
                                                      id_tag_hash(tag), deposit, T0_MS // 1000 - 60)
    elif what == "close" and world.chain.sessions:
        victim = sorted(world.chain.sessions)[n % len(world.chain.sessions)]
        world.chain.close_escrow_session(victim)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(block_strategy, min_size=1, max_size=10))
def test_random_streams_never_raise_stay_deterministic_and_within_deposits(blocks: list[Any]) -> None:
    params = LedgerParams(max_open_sessions=3, reply_window_heights=3, max_anomalies=5, max_devices=2,
                          max_closed_transactions=4, max_pending_settlements=3, settlement_checks_per_block=2)
    world, twin = World(params), World(params)
    twin.chain = world.chain  # same chain snapshot for both
    seen: list[Any] = []
    settled: dict[bytes, int] = {}
    deposits = {s.session_id: s.deposit for s in world.chain.sessions.values()}
    for events, replay, change in blocks:
        apply_chain_change(world, change)
        deposits.update({s.session_id: s.deposit for s in world.chain.sessions.values()})
        if replay and seen:
            events = [*events, seen[len(events) % len(seen)]]
        first = world.block(*events)
        second = twin.block(*events)
        assert first == second
        restored = Ledger.from_bytes(world.ledger.to_bytes())
        assert restored.state_hash() == first.state_hash  # incremental digests == recomputed ones
        assert restored.to_bytes() == world.ledger.to_bytes()
        twin.ledger = restored  # the twin continues from the snapshot
        for order in first.settlements:
            note_event("settlement")
            assert order.session_id not in settled, "an escrow session is settled once"
            assert 0 <= order.amount <= deposits[order.session_id]
            settled[order.session_id] = order.amount
        for event, result in zip(events, first.results, strict=True):
            if not result.duplicate:
                seen.append(event)
        note_event(f"open sessions: {len(world.ledger.open_sessions())}")
        connectors = [(s.charger_id, s.connector_id) for s in world.ledger.open_sessions()]
        assert len(connectors) == len(set(connectors))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.one_of(event_16(), event_201()), min_size=1, max_size=10))
def test_replaying_duplicates_changes_nothing_but_counters(events: list[Any]) -> None:
    world = World()
    original = world.block(*events)
    twin = World()
    twin.ledger, twin.now_ms = Ledger.from_bytes(world.ledger.to_bytes()), world.now_ms
    again = world.block(*events)
    twin.block()  # the same block without the duplicates
    assert all(r.duplicate for r in again.results)
    assert [(r.reply, r.error_code) for r in again.results] == [(r.reply, r.error_code) for r in original.results]
    assert again.settlements == ()
    assert world.ledger.table_digests() == twin.ledger.table_digests()
    counters, twin_counters = world.ledger.counters(), twin.ledger.counters()
    assert counters.pop("duplicates") == twin_counters.pop("duplicates") + len(events)
    assert counters == twin_counters


def test_two_ledgers_fed_the_same_blocks_agree_every_block() -> None:
    worlds = [World(), World()]
    script = [
        [ev("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}), start16()],
        [tx_event("Started", "t1", tag="TAG-OK", wh=10)],
        [stop16(1, 5_000, T0_MS + 3_000), tx_event("Ended", "t1", seq=1, wh=910.75)],
    ]
    hashes: list[list[bytes]] = [[], []]
    for index, world in enumerate(worlds):
        for events in script:
            hashes[index].append(world.block(*events).state_hash)
    assert hashes[0] == hashes[1]
    assert len(set(hashes[0])) == len(script)
    assert worlds[0].ledger.to_bytes() == worlds[1].ledger.to_bytes()


def test_snapshot_round_trip_keeps_hash_and_eviction_order() -> None:
    world = World(LedgerParams(max_devices=2))
    world.block(ev("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}), start16())
    world.block(tx_event("Started", "t1", tag="TAG-OK", wh=10), ev("Heartbeat", {}, version="2.0.1"))
    restored = Ledger.from_bytes(world.ledger.to_bytes())
    assert restored.state_hash() == world.ledger.state_hash()
    assert restored.counters() == world.ledger.counters()
    assert restored.open_sessions() == world.ledger.open_sessions()
    # both evict the same device next
    ctx = BlockContext(3, T0_MS + 5_000, 200, b"\x01" * 32)
    boot = ev("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}, charger="OFF-1")
    world.chain.devices["OFF-1"] = world.chain.devices[CHARGER]
    a = world.ledger.apply_block(ctx, world.chain, [boot])
    b = restored.apply_block(ctx, world.chain, [boot])
    assert a == b
    assert world.ledger.device(CHARGER) is None  # least recently touched
    assert world.ledger.device(CHARGER_201) is not None and world.ledger.device("OFF-1") is not None


def test_state_hash_differs_when_state_differs() -> None:
    a, b = World(), World()
    a.block(start16())
    b.block(start16(meter=1_001))
    assert a.ledger.state_hash() != b.ledger.state_hash()
    assert a.ledger.table_digests()["sessions"] != b.ledger.table_digests()["sessions"]
    assert a.ledger.table_digests()["devices"] == b.ledger.table_digests()["devices"]


@settings(max_examples=80, deadline=None)
@given(
    meter_start=st.integers(0, 10**9),
    delta=st.integers(-1_000, 10**8),
    minutes=st.integers(0, 600),
    price=st.integers(0, 10**30),
    fee=st.integers(0, 10**15),
    deposit=st.integers(0, 2**256 - 1),
)
def test_settlement_follows_the_tariff_and_never_exceeds_the_deposit(
    meter_start: int, delta: int, minutes: int, price: int, fee: int, deposit: int
) -> None:
    world = World()
    device = world.chain.devices[CHARGER]
    world.chain.devices[CHARGER] = replace(device, tariff=Tariff(price, fee))
    escrow = world.chain.sessions[ESCROW_1]
    world.chain.sessions[ESCROW_1] = replace(escrow, deposit=deposit)
    assert world.one(start16(meter=meter_start))["idTagInfo"]["status"] == "Accepted"
    world.block(advance_ms=minutes * 60_000)
    stop_ms = T0_MS + minutes * 60_000
    outcome = world.block(stop16(1, max(0, meter_start + delta), stop_ms))
    (order,) = outcome.settlements
    energy = max(0, delta) if meter_start + delta >= 0 else 0
    window_ms = T0_MS + BLOCK_MS + minutes * 60_000 - escrow.opened_at_s * 1000  # escrow opening .. stop block
    energy = min(energy, energy_bound(device.max_power_w, 0, window_ms))  # physics caps what was claimed
    assert order.energy_wh == energy
    assert order.amount == min(energy * price // 1000 + minutes * fee, deposit)
    counters = world.ledger.counters()
    assert counters["settled_amount"] <= counters["settled_deposits"] == deposit


@pytest.mark.parametrize("mutate", [lambda b: b[:-1], lambda b: b"\x93" + b[1:], lambda b: b"", lambda b: b + b"\x00"])
def test_damaged_snapshots_are_refused(mutate: Any) -> None:
    world = World()
    world.block(start16())
    with pytest.raises(SnapshotError):
        Ledger.from_bytes(mutate(world.ledger.to_bytes()))
