"""The auditor's recomputation (devsen/session_audit.py `recompute`) from the events a node
serves: exact on honest events; a tampered reading, another meter's key or another
charger's event makes it refuse (no amount), whatever the node claims."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from devsen.demo_charger import demo_meter_key, meter_public_key_der
from devsen.session_audit import Terms, recompute
from ocpp_adapter import ocmf
from ocpp_adapter.events import ChargerEvent

KEY = demo_meter_key("audit-test")
T = 1_790_000_000_000


def _event(action: str, field: str, text: str, charger: str = "CP-1") -> ChargerEvent:
    payload: dict[str, Any] = {"transactionId": 1, field: [{"timestamp": "2026-09-21T00:00:00Z", "sampledValue": [
        {"value": text, "format": "SignedData"}]}]}
    return ChargerEvent(charger, "1.6", action, "m1", payload, "0x" + "a1" * 20, T)


def _doc(pg: int, tx: str, wh: int, at: int, key: ec.EllipticCurvePrivateKey = KEY) -> str:
    return ocmf.sign(ocmf.payload_json(meter_serial="M", pagination=pg, readings=[(at, tx, wh)]), key)


TERMS = Terms("CP-1", meter_public_key_der(KEY), price_per_kwh=2_000, per_minute_fee=5, deposit=10**9,
              opened_at_s=T // 1000 - 60)


def test_recompute_is_exact_on_honest_events() -> None:
    start = _event("MeterValues", "meterValue", _doc(1, "B", 1_000, T))
    stop = _event("StopTransaction", "transactionData", _doc(2, "E", 8_500, T + 600_000))
    result = recompute(start, stop, T + 601_000, TERMS)
    assert (result.energy_wh, result.amount, result.reasons) == (7_500, 7_500 * 2 + 10 * 5, [])


def test_tampered_wrong_key_or_other_charger_is_refused() -> None:
    start = _event("MeterValues", "meterValue", _doc(1, "B", 1_000, T))
    tampered = _event("StopTransaction", "transactionData",
                      _doc(2, "E", 8_500, T + 600_000).replace('"RV":8500', '"RV":98500'))
    other_key = _event("StopTransaction", "transactionData",
                       _doc(2, "E", 98_500, T + 600_000, ec.generate_private_key(ec.SECP256R1())))
    for stop in (tampered, other_key):
        assert recompute(start, stop, T + 601_000, TERMS).amount is None
    elsewhere = _event("StopTransaction", "transactionData", _doc(2, "E", 8_500, T + 600_000), charger="CP-9")
    result = recompute(start, elsewhere, T + 601_000, TERMS)
    assert result.amount is None and "charger" in result.reasons[0]
