"""Issue 10: no chain data and no payload can make `apply_block` raise, and money stays
bounded by physics. Each test is an attack that crashed or robbed the ledger at 1667371."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_world import (
    CHARGER,
    CHARGER_201,
    DEPOSIT,
    ESCROW_1,
    T0_MS,
    TARIFF,
    World,
    ev,
    iso,
    start16,
    stop16,
    tx_event,
)

from devsen.ledger import (
    BlockContext,
    ChainReservation,
    DeviceInfo,
    EscrowSession,
    IdTagInfo,
    Ledger,
    LedgerParams,
    energy_bound,
    id_tag_hash,
)
from ocpp_adapter import ocmf
from ocpp_adapter.events import ChargerEvent

_METER = ec.generate_private_key(ec.SECP256R1())
METER_DER = _METER.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)


def _forged(value: Any, **fields: Any) -> Any:
    """A frozen record with fields its constructor would refuse (what a buggy view might return)."""
    copy = replace(value)
    for name, field_value in fields.items():
        object.__setattr__(copy, name, field_value)
    return copy


def test_a_255_connector_device_from_the_view_is_a_deterministic_refusal() -> None:
    """At 1667371 DeviceInfo raised on 255 connectors inside apply: every node halted."""
    outcomes = []
    for _ in range(2):
        world = World()
        world.chain.devices[CHARGER] = _forged(world.chain.devices[CHARGER], connector_count=255)
        boot = ev("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}, message_id="boot")
        start = start16(connector=200)
        start = ChargerEvent(start.charger_id, "1.6", start.action, "start", start.payload, "0x" + "a1" * 20, T0_MS)
        outcome = world.block(boot, start)
        assert outcome.results[0].reply is not None and outcome.results[0].reply["status"] == "Rejected"
        assert "bad_chain_data" in outcome.results[0].anomalies
        assert "unregistered_device" in outcome.results[0].anomalies
        assert outcome.results[1].reply is not None
        assert outcome.results[1].reply["idTagInfo"]["status"] == "Invalid"
        outcomes.append(outcome.state_hash)
    assert outcomes[0] == outcomes[1]


def test_meter_stop_2_pow_62_is_capped_by_physics_and_names_the_voucher() -> None:
    """At 1667371 a forged stop with meterStop = 2^62 settled the full deposit."""
    world = World()
    power = 22_000
    world.chain.devices[CHARGER] = replace(world.chain.devices[CHARGER], max_power_w=power)
    assert world.one(start16(meter=0))["idTagInfo"]["status"] == "Accepted"
    forged = stop16(1, 2**62, T0_MS + 1_000)
    forged = ChargerEvent(CHARGER, "1.6", forged.action, "forged-stop", forged.payload, "0x" + "ab" * 20, T0_MS)
    stop_block_ms = world.now_ms
    outcome = world.block(forged)
    (order,) = outcome.settlements
    escrow = world.chain.sessions[ESCROW_1]
    cap = energy_bound(power, escrow.opened_at_s * 1000, stop_block_ms)
    assert order.energy_wh == cap == power * (stop_block_ms - escrow.opened_at_s * 1000) // 3_600_000
    assert order.amount == min(cap * TARIFF.price_per_kwh // 1000, DEPOSIT) < DEPOSIT  # 0 minutes charged
    assert "energy_capped" in outcome.results[0].anomalies
    (anomaly,) = [a for a in world.ledger.anomalies() if a.kind == "energy_capped"]
    assert "vouched by 0x" + "ab" * 20 in anomaly.detail


def test_a_zero_length_session_settles_no_energy() -> None:
    """The escrow opens at the stop block's time: no time, so no energy can have flowed."""
    world = World()
    escrow = world.chain.sessions[ESCROW_1]
    world.chain.sessions[ESCROW_1] = replace(escrow, opened_at_s=world.now_ms // 1000 + 1)
    stop_ms = world.now_ms + 1_000  # the second block's time == the escrow opening
    assert world.one(start16(meter=0))["idTagInfo"]["status"] == "Accepted"
    outcome = world.block(stop16(1, 5_000, stop_ms))
    (order,) = outcome.settlements
    assert order.energy_wh == 0 and order.amount == 0
    assert "energy_capped" in outcome.results[0].anomalies


def test_stop_below_start_and_absurd_stops_settle_nothing_beyond_the_cap() -> None:
    for meter_stop in (-5, 10, 2**63 - 1, 2**63, 10**30):
        world = World()
        assert world.one(start16(meter=1_000))["idTagInfo"]["status"] == "Accepted"
        event = stop16(1, 0, T0_MS + 1_000)
        event = ChargerEvent(CHARGER, "1.6", event.action, f"stop-{meter_stop}",
                             {**event.payload, "meterStop": meter_stop}, "0x" + "cc" * 20, T0_MS)
        outcome = world.ledger.apply_block(BlockContext(2, world.now_ms, 200, b"\x00" * 32), world.chain, [event])
        cap = energy_bound(world.chain.devices[CHARGER].max_power_w,
                           world.chain.sessions[ESCROW_1].opened_at_s * 1000, world.now_ms)
        if meter_stop >= 2**63:  # not a 64-bit integer: a malformed stop, the session stays open
            assert outcome.settlements == () and outcome.results[0].error_code == "FormationViolation"
            continue
        (order,) = outcome.settlements
        assert order.energy_wh <= cap
        if meter_stop < 1_000:  # below the start: nothing
            assert order.energy_wh == 0


def test_five_thousand_digit_meter_stop_is_malformed_not_a_crash() -> None:
    """Python refuses to print ints beyond 4,300 digits: f-strings in anomalies raised."""
    world = World()
    world.one(start16(meter=0))
    payload = {"transactionId": 10**5000, "meterStop": 10**5000, "timestamp": iso(T0_MS)}
    event = ChargerEvent(CHARGER, "1.6", "StopTransaction", "huge", payload, "0x" + "a1" * 20, T0_MS)
    outcome = world.ledger.apply_block(BlockContext(2, world.now_ms, 200, b"\x00" * 32), world.chain, [event])
    assert outcome.results[0].error_code == "FormationViolation" and outcome.settlements == ()


# ---- property: hostile chain views and hostile payloads never make apply raise ---------------

HUGE = st.one_of(st.sampled_from([2**62, 2**63, 2**64, 2**256, 2**300, -1, -(2**63) - 1]),
                 st.integers(4_999, 5_001).map(lambda digits: 10**digits),  # unprintable by default in 3.11
                 st.integers(4_999, 5_001).map(lambda digits: -(10**digits)))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), HUGE, st.floats(allow_nan=True),
                    st.text(max_size=30), st.sampled_from(["Wh", "kWh", "Started", "Ended", "Updated", "TAG-OK",
                                                           "keccak256:" + id_tag_hash("TAG-OK").hex(),
                                                           "keccak256:" + "0" * 63,
                                                           "Energy.Active.Import.Register", iso(T0_MS)]))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(
        ["value", "unit", "multiplier", "sampledValue", "measurand", "format", "unitOfMeasure", "id",
         "connectorId", "idToken", "type", "transactionId"]), inner, max_size=4)), max_leaves=12)
FIELDS = ["connectorId", "idTag", "meterStart", "meterStop", "timestamp", "transactionId", "meterValue", "evseId",
          "eventType", "transactionInfo", "evse", "idToken", "status", "errorCode", "connectorStatus", "vendorId",
          "chargePointVendor", "chargePointModel", "chargingStation", "type", "seqNo", "triggerReason"]
ACTIONS = ["BootNotification", "Heartbeat", "StatusNotification", "Authorize", "StartTransaction", "StopTransaction",
           "MeterValues", "DataTransfer", "TransactionEvent", "SecurityEventNotification", "NotifyReport"]


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"meterValue": [value]}
    return value


def _signed(pg: int, tx: str, wh: int, at_ms: int) -> str:
    body = ocmf.payload_json(meter_serial="M1", pagination=pg, id_data="TAG-OK", readings=[(at_ms, tx, wh)])
    return ocmf.sign(body, _METER)


VALID_OCMF = [_signed(1, "B", 1_000, T0_MS + 60_000), _signed(2, "X", 900, T0_MS + 90_000),
              _signed(3, "E", 10**14, T0_MS + 120_000), _signed(2, "E", 5_000, T0_MS + 120_000)]
OCMF_GARBAGE = st.one_of(
    st.sampled_from(VALID_OCMF),
    st.builds(lambda doc, i, ch: doc[:i] + ch + doc[i + 1:], st.sampled_from(VALID_OCMF), st.integers(0, 700),
              st.sampled_from(list('|{}[]",:0123456789eE-.\\x') + ["\u0000", "NaN", "1e999"])),
    st.text(max_size=40).map(lambda t: "OCMF|" + t),
    st.integers(1, 3000).map(lambda d: "OCMF|" + "[" * d + "|{}"),
    st.sampled_from(["OCMF|{}|{}", "OCMF||", "x" * 9000, 'OCMF|{"RD":[{"RV":1e400}]}|{"SD":"00"}']),
    JSON,
)
hostile_payloads = st.one_of(
    st.builds(lambda tx, docs: {"connectorId": 1, "transactionId": tx, "meterValue": [
        {"timestamp": iso(T0_MS), "sampledValue": [{"format": "SignedData", "value": d} for d in docs]}]},
        st.sampled_from([1, 2]), st.lists(OCMF_GARBAGE, max_size=10)),
    st.builds(lambda p, docs: {**p.payload, "transactionData": [{"timestamp": iso(T0_MS), "sampledValue": [
        {"format": "SignedData", "value": d} for d in docs]}]}, st.sampled_from([stop16(1, 5, T0_MS)]),
        st.lists(OCMF_GARBAGE, max_size=3)),
    st.builds(lambda kind, docs, enc: tx_event(kind, "T1", tag="TAG-OK").payload | {"meterValue": [
        {"timestamp": iso(T0_MS), "sampledValue": [{"value": 1, "signedMeterValue": {
            "signedMeterData": d, "signingMethod": "", "encodingMethod": enc, "publicKey": ""}} for d in docs]}]},
        st.sampled_from(["Started", "Updated", "Ended"]), st.lists(OCMF_GARBAGE, max_size=3),
        st.sampled_from(["OCMF", "ocmf", "EDL", 5])),
    st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6),
    st.builds(lambda p, k, v: {**p.payload, k: v}, st.sampled_from([start16(), stop16(1, 5, T0_MS)]),
              st.sampled_from(["meterStart", "meterStop", "connectorId", "transactionId", "timestamp", "idTag"]),
              JSON),
    st.builds(lambda v: tx_event("Ended", "T1", wh=1).payload | {"meterValue": v}, JSON),
    st.integers(1, 3000).map(lambda d: {"connectorId": 1, "meterValue": [_deep(d)]}),
)
hostile_events = st.builds(
    lambda action, version, charger, payload, ingress, i: ChargerEvent(
        charger, version, action, f"h{i}", payload, ingress, T0_MS),
    st.sampled_from(ACTIONS), st.sampled_from(["1.6", "2.0.1"]), st.sampled_from([CHARGER, CHARGER_201, "ODD", "x" * 60]),
    hostile_payloads, st.sampled_from(["0x" + "a1" * 20, "0x" + "ab" * 20, ""]), st.integers(0, 5),
)


def _unhashed(event: ChargerEvent, payload: Any) -> ChargerEvent:
    """`event` holding `payload` as given, bypassing the constructor's idTag hashing (plaintext tags)."""
    object.__setattr__(event, "payload", payload)
    return event


hostile_events = st.one_of(hostile_events, st.builds(_unhashed, hostile_events, hostile_payloads))
honest_events = st.sampled_from([
    start16(), start16(connector=2), stop16(1, 50_000, T0_MS + 60_000), stop16(2, 2**62, T0_MS + 60_000),
    tx_event("Started", "T1", tag="TAG-OK", wh=0), tx_event("Ended", "T1", wh=10**12),
    *(ev("MeterValues", {"connectorId": 1, "transactionId": 1, "meterValue": [{"timestamp": iso(T0_MS),
        "sampledValue": [{"format": "SignedData", "value": d}]}]}) for d in VALID_OCMF),
])

bad_values = {
    "connector_count": st.sampled_from([-1, 65, 255, 2**64, True, "2"]),
    "max_power_w": st.sampled_from([0, -1, 4_000_001, 2**300, None]),
    "active": st.sampled_from([1, "yes", None]),
    "meter_public_key": st.sampled_from([b"\x30" * 200, "3059", None, b"\x30\x03abc"]),
    "require_signed_meter": st.sampled_from([1, "yes", None]),
}


@st.composite
def hostile_device(draw: Any) -> Any:
    base = DeviceInfo(b"\x11" * 32, "0x" + "aa" * 20, draw(st.sampled_from([2, 2, 0, 1, 64])), TARIFF,
                      max_power_w=draw(st.integers(1, 4_000_000)),
                      meter_public_key=draw(st.sampled_from([b"", METER_DER, METER_DER, b"\x30\x03abc"])),
                      require_signed_meter=draw(st.booleans()))
    if draw(st.booleans()):
        name = draw(st.sampled_from(sorted(bad_values)))
        return _forged(base, **{name: draw(bad_values[name])})
    return draw(st.sampled_from([base, base, base, None, "not a device", 42]))


@st.composite
def hostile_session(draw: Any) -> Any:
    session = EscrowSession(
        draw(st.sampled_from([ESCROW_1, b"\x02" * 32, b"\x09" * 32])), "0x" + "dd" * 20,
        draw(st.sampled_from([CHARGER, CHARGER_201, "OTHER"])), draw(st.sampled_from([1, 1, 2, 0, 255])),
        id_tag_hash(draw(st.sampled_from(["TAG-OK", "TAG-X"]))), draw(st.integers(0, 2**256 - 1)),
        draw(st.integers(0, T0_MS // 1000 + 10)))
    if draw(st.booleans()):
        name, value = draw(st.sampled_from([("deposit", 2**300), ("deposit", -1), ("opened_at_s", 10**20),
                                            ("session_id", b"short"), ("connector_id", 2**64), ("charge_box_id", 5)]))
        return _forged(session, **{name: value})
    return session


@st.composite
def hostile_reservation(draw: Any) -> Any:
    reservation = ChainReservation(
        draw(st.sampled_from([1, 2, 7])), draw(st.sampled_from([CHARGER, CHARGER_201, "OTHER"])),
        draw(st.sampled_from([1, 1, 2, 64])), id_tag_hash(draw(st.sampled_from(["TAG-OK", "TAG-X"]))),
        draw(st.sampled_from([0, T0_MS // 1000 + 30, T0_MS // 1000 + 10**6])))
    if draw(st.booleans()):
        name, value = draw(st.sampled_from([("reservation_id", 0), ("reservation_id", 2**40), ("connector_id", 0),
                                            ("connector_id", 300), ("id_tag_hash", "x"), ("expires_at_s", -1),
                                            ("expires_at_s", 10**20), ("charge_box_id", None)]))
        return _forged(reservation, **{name: value})
    return draw(st.sampled_from([reservation, reservation, "not a reservation", None]))


class HostileView:
    """A ChainView answering with whatever it was given (duplicates, other chargers, garbage)."""

    def __init__(self, devices: dict[str, Any], sessions: list[Any], tag: Any, reserved: list[Any]) -> None:
        self.devices, self.sessions, self.tag, self.reserved = devices, sessions, tag, reserved

    def reservations(self, charge_box_id: str) -> Sequence[Any]:
        return self.reserved

    def device(self, charge_box_id: str) -> Any:
        return self.devices.get(charge_box_id)

    def id_tag(self, tag_hash: bytes) -> Any:
        return self.tag

    def open_escrow_sessions(self, charge_box_id: str) -> Sequence[Any]:
        return self.sessions

    def escrow_session(self, session_id: bytes) -> Any:
        return next((s for s in self.sessions if getattr(s, "session_id", None) == session_id), None)


views = st.builds(
    HostileView,
    st.fixed_dictionaries({CHARGER: hostile_device(), CHARGER_201: hostile_device(), "ODD": hostile_device()}),
    st.lists(hostile_session(), max_size=6),
    st.one_of(st.just(IdTagInfo("0x" + "dd" * 20)), st.sampled_from([None, _forged(IdTagInfo("0x1"), expiry_s=-5),
                               _forged(IdTagInfo("0x1"), revoked="no"), "tag"]),
              HUGE.map(lambda value: _forged(IdTagInfo("0x1"), expiry_s=value))),
    st.lists(hostile_reservation(), max_size=4),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(blocks=st.lists(st.tuples(views, st.lists(st.one_of(hostile_events, honest_events), max_size=6)),
                       min_size=1, max_size=4))
def test_apply_block_is_total_and_deterministic_over_hostile_views_and_payloads(blocks: list[Any]) -> None:
    ledgers = [Ledger(LedgerParams(reply_window_heights=2, max_anomalies=8)) for _ in range(2)]
    for height, (view, events) in enumerate(blocks, start=1):
        ctx = BlockContext(height, T0_MS + height * 60_000, 100 + height, b"\x00" * 32)
        outcomes = [ledger.apply_block(ctx, view, events) for ledger in ledgers]
        assert outcomes[0] == outcomes[1]
        for order in outcomes[0].settlements:
            assert 0 <= order.energy_wh < 2**64 and order.amount >= 0
    assert ledgers[0].state_hash() == ledgers[1].state_hash()
    restored = Ledger.from_bytes(ledgers[0].to_bytes())
    assert restored.state_hash() == ledgers[0].state_hash()


def test_out_of_bound_escrow_sessions_are_ignored_not_bound() -> None:
    """A view reporting a session with a negative or > uint256 deposit, or an opening after
    year 9999: the session is ignored (bad_chain_data); nothing is bound, nothing raises."""
    for name, value in (("deposit", -1), ("deposit", 2**300), ("opened_at_s", 10**20), ("session_id", b"x")):
        world = World()
        world.chain.sessions[ESCROW_1] = _forged(world.chain.sessions[ESCROW_1], **{name: value})
        outcome = world.block(start16(meter=0), stop16(1, 10_000, T0_MS + 1_000))
        assert outcome.results[0].reply is not None
        assert outcome.results[0].reply["idTagInfo"]["status"] == "Blocked", name  # no prepayment found
        assert "bad_chain_data" in outcome.results[0].anomalies
        assert outcome.settlements == ()
