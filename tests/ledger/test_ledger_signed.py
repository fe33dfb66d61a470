"""Charger-signed meter values (OCMF) in the ledger: what a signed-meter device settles, and
every forgery a charger or a Byzantine ingress validator could try, ignored and recorded."""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from ledger_world import CHARGER, CHARGER_201, T0_MS, TARIFF, World, ev, start16, stop16, tx_event

from devsen.ledger import Ledger
from ocpp_adapter import ocmf

METER_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())


def der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def doc(pg: int, *readings: tuple[int, str, int], serial: str = "MTR-1", key: ec.EllipticCurvePrivateKey = METER_KEY,
        id_data: str = "TAG-OK") -> str:
    body = ocmf.payload_json(meter_serial=serial, pagination=pg, readings=list(readings), id_data=id_data)
    return ocmf.sign(body, key)


def signed16(text: str) -> list[dict[str, Any]]:
    return [{"timestamp": "2026-09-21T00:00:00Z", "sampledValue": [{"value": text, "format": "SignedData"}]}]


def meter16(tx: int, text: str) -> Any:
    return ev("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": signed16(text)})


def signed_world(*, require: bool = True, key: bytes | None = None) -> World:
    world = World()
    for charger in (CHARGER, CHARGER_201):
        device = world.chain.devices[charger]
        world.chain.devices[charger] = replace(
            device, meter_public_key=der(METER_KEY) if key is None else key, require_signed_meter=require)
    return world


def kinds(world: World) -> list[str]:
    return [a.kind for a in world.ledger.anomalies()]


def run16(world: World, *documents: str, meter_stop: int = 999_999, stop_doc: str | None = None) -> Any:
    """A 1.6 session on connector 1: start, the signed documents, a stop (inflated unsigned meterStop)."""
    tx = world.one(start16(meter=1_000))["transactionId"]
    for text in documents:
        world.block(meter16(tx, text))
    extra = {} if stop_doc is None else {"transactionData": signed16(stop_doc)}
    world.now_ms = max(world.now_ms, T0_MS + 3_601_000)  # the stop block comes an hour later
    outcome = world.block(stop16(tx, meter_stop, T0_MS + 3_600_000, **extra))
    return outcome.settlements


A = T0_MS + 1_000
B = T0_MS + 1_801_000  # 30 minutes later


def test_signed_device_settles_exactly_the_signed_energy() -> None:
    world = signed_world()
    orders = run16(world, doc(1, (A, "B", 10_000)), stop_doc=doc(2, (B, "E", 15_000)))
    assert [(o.energy_wh, o.amount) for o in orders] == [(5_000, 5_000 * TARIFF.price_per_kwh // 1000 + 30 * 5)]
    closed = world.ledger.closed_for_escrow(orders[0].session_id)
    assert closed is not None and closed.signed_start_event and closed.signed_last_event
    assert "unsigned_reading" not in kinds(world)


def test_tampered_value_is_ignored_and_settles_at_the_last_valid_reading() -> None:
    world = signed_world()
    tampered = doc(3, (B, "E", 15_000)).replace('"RV":15000', '"RV":95000')
    orders = run16(world, doc(1, (A, "B", 10_000)), doc(2, (A + 60_000, "X", 12_000)), stop_doc=tampered)
    assert orders[0].energy_wh == 2_000
    assert "bad_signature" in kinds(world) and "unsigned_reading" in kinds(world)


def test_wrong_key_is_ignored() -> None:
    world = signed_world()
    orders = run16(world, doc(1, (A, "B", 10_000)), stop_doc=doc(2, (B, "E", 99_000), key=OTHER_KEY))
    assert orders[0].energy_wh == 0  # settled at the begin reading
    assert "bad_signature" in kinds(world)


def test_no_signed_begin_settles_nothing() -> None:
    world = signed_world()
    orders = run16(world, stop_doc=doc(2, (B, "E", 15_000)))
    assert orders[0].energy_wh == 0 and orders[0].amount == 0
    assert "reading_not_bound" in kinds(world)


def test_reading_replayed_from_another_session_is_refused() -> None:
    world = signed_world()
    begin = doc(1, (A, "B", 10_000))
    run16(world, begin, stop_doc=doc(2, (B, "E", 15_000)))
    # The same meter's documents shown again in a new session on the same connector's next escrow.
    world.chain.sessions[b"\x09" * 32] = replace(world.chain.sessions[b"\x02" * 32], session_id=b"\x09" * 32,
                                                  connector_id=1)
    orders = run16(world, begin, stop_doc=doc(2, (B, "E", 15_000)))
    assert orders[0].energy_wh == 0
    assert kinds(world).count("pagination_not_increasing") == 2


def test_reading_from_before_the_escrow_opened_is_refused() -> None:
    world = signed_world()
    old = T0_MS - 7_200_000  # the escrow opened one hour before T0
    orders = run16(world, doc(1, (old, "B", 1_000)), stop_doc=doc(2, (B, "E", 15_000)))
    assert orders[0].energy_wh == 0
    assert "reading_not_bound" in kinds(world)


def test_non_monotonic_and_wrong_serial_are_refused() -> None:
    world = signed_world()
    orders = run16(world, doc(1, (A, "B", 10_000)), doc(2, (A + 1_000, "X", 9_000)),
                   doc(3, (A + 2_000, "X", 11_000), serial="MTR-OTHER"), stop_doc=doc(4, (B, "E", 12_000)))
    assert orders[0].energy_wh == 2_000
    assert "meter_backwards" in kinds(world) and "meter_serial_mismatch" in kinds(world)


def test_identification_of_another_driver_is_refused() -> None:
    world = signed_world()
    orders = run16(world, doc(1, (A, "B", 10_000), id_data="SOMEONE-ELSE"), stop_doc=doc(2, (B, "E", 12_000)))
    assert orders[0].energy_wh == 0
    assert "reading_not_bound" in kinds(world)


def test_garbage_signed_values_are_anomalies_never_errors() -> None:
    world = signed_world()
    tx = world.one(start16(meter=1_000))["transactionId"]
    for junk in ("OCMF|{|}", "x" * 20_000, "OCMF|{\"PG\":\"T1\"}|{\"SD\":\"00\"}"):
        result = world.block(meter16(tx, junk)).results[0]
        assert result.error_code is None and "bad_signed_meter" in result.anomalies
    raw = ev("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [
        {"timestamp": "x", "sampledValue": [{"format": "SignedData", "value": 7}]}]}, raw=True)
    assert world.block(raw).results[0].error_code is None


def test_unsigned_device_keeps_the_unsigned_path() -> None:
    world = signed_world(require=False)
    orders = run16(world, doc(1, (A, "B", 10_000)), meter_stop=5_000, stop_doc=doc(2, (B, "E", 15_000)))
    assert orders[0].energy_wh == 4_000  # meterStop - meterStart, as before


def test_v201_signed_meter_value() -> None:
    world = signed_world()

    def signed201(text: str, b64: bool) -> list[dict[str, Any]]:
        data = base64.b64encode(text.encode()).decode() if b64 else text
        return [{"timestamp": "2026-09-21T00:00:00Z", "sampledValue": [{"value": 1.0, "signedMeterValue": {
            "signedMeterData": data, "signingMethod": "ECDSA-secp256r1-SHA256", "encodingMethod": "OCMF",
            "publicKey": ""}}]}]

    world.one(tx_event("Started", "T-1", tag="TAG-OK", meterValue=signed201(doc(1, (A, "B", 10_000)), True)))
    world.now_ms = T0_MS + 3_601_000
    outcome = world.block(tx_event("Ended", "T-1", at_ms=B, meterValue=signed201(doc(2, (B, "E", 13_500)), False)))
    assert [o.energy_wh for o in outcome.settlements] == [3_500]


def test_byzantine_ingress_inflating_energy_gains_nothing() -> None:
    """Two ledgers: one applies what the charger sent, the other what a Byzantine ingress
    validator vouched for instead (inflated unsigned registers, an OCMF value raised, a document
    signed with its own key). The forged run pays the owner no more than the honest one."""
    honest, forged = signed_world(), signed_world()
    good = run16(honest, doc(1, (A, "B", 10_000)), doc(2, (A + 60_000, "X", 12_000)), meter_stop=15_000,
                 stop_doc=doc(3, (B, "E", 15_000)))
    inflated = doc(3, (B, "E", 15_000)).replace('"RV":15000', '"RV":900000')
    bad = run16(forged, doc(1, (A, "B", 10_000)), doc(2, (A + 60_000, "X", 12_000)),
                doc(9, (A + 90_000, "X", 800_000), key=OTHER_KEY), meter_stop=2**40, stop_doc=inflated)
    assert good[0].energy_wh == 5_000
    assert bad[0].energy_wh <= good[0].energy_wh and bad[0].amount <= good[0].amount
    assert Ledger.from_bytes(forged.ledger.to_bytes()).state_hash() == forged.ledger.state_hash()


def test_signed_documents_per_event_are_bounded() -> None:
    world = signed_world()
    tx = world.one(start16(meter=1_000))["transactionId"]
    many = [{"timestamp": "2026-09-21T00:00:00Z", "sampledValue": [
        {"value": doc(i + 1, (A, "B" if i == 0 else "X", 10_000 + i)), "format": "SignedData"}]} for i in range(12)]
    result = world.block(ev("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": many})).results[0]
    assert "signed_budget" in result.anomalies
    session = world.ledger.open_sessions()[0]
    assert session.signed_pagination == 8 and session.signed_last_wh == 10_007  # the first 8 were checked


def test_malformed_der_signature_is_a_bad_signature() -> None:
    world = signed_world()
    begin = doc(1, (A, "B", 10_000))
    broken = begin[: begin.rindex("|")] + '|{"SA":"ECDSA-secp256r1-SHA256","SD":"3006020100020100"}'
    orders = run16(world, broken, stop_doc=doc(2, (B, "E", 15_000)))
    assert orders[0].energy_wh == 0 and "bad_signature" in kinds(world)


def test_cost_of_a_signed_meter_values_event(capsys: Any) -> None:
    """Figure: ledger apply time of a MeterValues event carrying one P-256 OCMF document."""
    import time

    world = signed_world()
    tx = world.one(start16(meter=1_000))["transactionId"]
    n = 100
    events = [meter16(tx, doc(i + 1, (A, "B" if i == 0 else "X", 10_000 + i))) for i in range(n)]
    began = time.perf_counter()
    for event in events:
        world.block(event)
    per_event = (time.perf_counter() - began) / n * 1e6
    with capsys.disabled():
        print(f"\nledger: {per_event:.0f} us per signed MeterValues event (block of one, P-256)")
    assert world.ledger.open_sessions()[0].signed_pagination == n


def test_a_replay_after_the_device_record_was_evicted_is_still_refused() -> None:
    """The meter's pagination floor lived on its device record, evicted from the LRU of devices:
    the ledger remembers when the newest evicted floor changed, so the old documents are still
    refused (deterministically, across a snapshot), and a fresh document after it still counts."""
    from devsen.ledger import DeviceInfo, LedgerParams
    from devsen.ledger.signed import CLOCK_SKEW_MS

    CP = CHARGER

    def evicting_world() -> World:
        world = signed_world()
        world.ledger = Ledger(LedgerParams(max_devices=2))
        world.chain.devices["CP-X"] = DeviceInfo(b"\x44" * 32, "0x" + "ee" * 20, 1, TARIFF)
        return world

    world, twin = evicting_world(), evicting_world()
    begin, end = doc(1, (A, "B", 10_000)), doc(2, (B, "E", 15_000))
    for w in (world, twin):
        assert run16(w, begin, stop_doc=end)[0].energy_wh == 5_000
        floor_at = w.ledger._device_record(CP).paginations_ms
        assert floor_at > 0 and w.ledger._device_record(CP).meter_paginations == (("MTR-1", 2),)
        for charger in (CHARGER_201, "CP-X"):  # two other devices: CP-1's record is evicted
            w.block(ev("Heartbeat", {}, charger=charger, version="2.0.1" if charger == CHARGER_201 else "1.6"))
        assert w.ledger._device_record(CP).meter_paginations == ()
        assert w.ledger._c.paginations_forgotten_ms == floor_at
    # (the twins' message ids differ, so compare the device table and the counter, not the whole state)
    assert world.ledger.table_digests()["devices"] == twin.ledger.table_digests()["devices"]
    world.ledger = Ledger.from_bytes(world.ledger.to_bytes())  # a restart keeps the forgotten floor
    assert world.ledger._c.paginations_forgotten_ms == twin.ledger._c.paginations_forgotten_ms

    world.chain.sessions[b"\x09" * 32] = replace(world.chain.sessions[b"\x02" * 32], session_id=b"\x09" * 32,
                                                  connector_id=1)
    before = kinds(world).count("pagination_not_increasing")
    assert run16(world, begin, stop_doc=end)[0].energy_wh == 0  # the replayed pair counts for nothing
    assert kinds(world).count("pagination_not_increasing") == before + 2
    assert sum("forgotten pagination floor" in a.detail for a in world.ledger.anomalies()) == 2

    later = world.ledger._c.paginations_forgotten_ms + CLOCK_SKEW_MS + 60_000
    world.chain.sessions[b"\x0a" * 32] = replace(world.chain.sessions[b"\x02" * 32], session_id=b"\x0a" * 32,
                                                  connector_id=1, opened_at_s=later // 1000)
    world.now_ms = later + 1_000
    tx = world.one(start16(meter=1_000, at_ms=later + 1_000))["transactionId"]
    world.block(meter16(tx, doc(3, (later + 2_000, "B", 20_000))))
    world.now_ms = later + 600_000
    orders = world.block(stop16(tx, 999_999, later + 590_000,
                                transactionData=signed16(doc(4, (later + 590_000, "E", 21_000))))).settlements
    assert orders[0].energy_wh == 1_000  # fresh documents (later than the forgotten floor) count
