"""Pure, version-stable readers for OCPP payload fields, timestamps and meter registers.

The ledger never trusts that a payload passed schema validation (a faulty proposer can put
anything in a block), so every read here checks its type and bound and raises
`MalformedPayload` instead of failing somewhere deeper. Nothing here uses floats in a result:
meter readings become integer watt-hours with exact rational arithmetic, rounded down.
Timestamps are parsed by a strict RFC 3339 reader of our own, so that nodes on different
Python versions parse them identically.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from ocpp_adapter.events import TAG_HASH_PREFIX, tag_hash_of

MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last RFC 3339 instant
MAX_METER_WH = 2**63 - 1  # a register beyond this is not a meter reading
MAX_PAYLOAD_INT = 2**63 - 1  # |integer field| beyond this is malformed (no OCPP field is larger)
ENERGY_REGISTER = "Energy.Active.Import.Register"
MAX_SAMPLES_READ = 256  # sampled values inspected per message; the rest are ignored
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})?",
    re.ASCII,
)
_DECIMAL_TEXT = re.compile(r"[+-]?\d{1,20}(?:\.\d{1,9})?", re.ASCII)


class MalformedPayload(ValueError):
    """A payload field is missing, of the wrong type, or out of bounds."""


def get_str(payload: dict[str, Any], key: str, *, max_len: int = 1000, required: bool = True) -> str | None:
    """A string field, or None when optional and absent."""
    value = payload.get(key)
    if value is None:
        if required:
            raise MalformedPayload(f"{key} is required")
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise MalformedPayload(f"{key} must be a string of at most {max_len} characters")
    return value


def req_str(payload: dict[str, Any], key: str, *, max_len: int = 1000) -> str:
    """A required string field."""
    value = get_str(payload, key, max_len=max_len)
    assert value is not None
    return value


def get_tag_hash(payload: dict[str, Any], key: str, *, required: bool = True) -> bytes | None:
    """The 32-byte keccak-256 an idTag field names, or None when optional and absent.

    Events carry idTags only in hashed form ("keccak256:" + 64 lowercase hex, see
    ocpp_adapter/events.py); a plaintext or otherwise shaped value is malformed.
    """
    value = payload.get(key)
    if value is None:
        if required:
            raise MalformedPayload(f"{key} is required")
        return None
    tag_hash = tag_hash_of(value)
    if tag_hash is None:
        raise MalformedPayload(f"{key} must be a hashed idTag ({TAG_HASH_PREFIX}<64 lowercase hex>), never plaintext")
    return tag_hash


def get_int(payload: dict[str, Any], key: str, *, required: bool = True) -> int | None:
    """An integer field (JSON booleans are not integers), or None when optional and absent."""
    value = payload.get(key)
    if value is None:
        if required:
            raise MalformedPayload(f"{key} is required")
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedPayload(f"{key} must be an integer")
    if not -MAX_PAYLOAD_INT <= value <= MAX_PAYLOAD_INT:
        raise MalformedPayload(f"{key} must be within +-(2^63 - 1)")
    return value


def req_int(payload: dict[str, Any], key: str) -> int:
    """A required integer field."""
    value = get_int(payload, key)
    assert value is not None
    return value


def get_obj(payload: dict[str, Any], key: str, *, required: bool = False) -> dict[str, Any] | None:
    """A JSON-object field, or None when optional and absent."""
    value = payload.get(key)
    if value is None:
        if required:
            raise MalformedPayload(f"{key} is required")
        return None
    if not isinstance(value, dict):
        raise MalformedPayload(f"{key} must be an object")
    return value


def get_list(payload: dict[str, Any], key: str) -> list[Any]:
    """A JSON-array field; absent means empty."""
    value = payload.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedPayload(f"{key} must be an array")
    return value


def parse_timestamp_ms(text: str) -> int | None:
    """Milliseconds since the Unix epoch for an RFC 3339 date-time, or None if it is not one.

    A missing offset means UTC. Sub-millisecond digits are truncated.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction, offset = match.group(7), match.group(8)
    try:
        moment = datetime(year, month, day, hour, minute, min(second, 59), tzinfo=UTC)
    except ValueError:
        return None
    millis = int((fraction or "0").ljust(3, "0")[:3])
    if offset and offset not in ("Z", "z"):
        sign = 1 if offset[0] == "+" else -1
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or minutes > 59:
            return None
        moment -= sign * timedelta(hours=hours, minutes=minutes)
    return (moment - _EPOCH) // timedelta(milliseconds=1) + millis


def format_timestamp_ms(ms: int) -> str:
    """ISO 8601 UTC with milliseconds, e.g. 2026-01-02T03:04:05.678Z."""
    assert 0 <= ms <= MAX_TIMESTAMP_MS
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _to_wh(amount: Fraction) -> int | None:
    """Round a reading in Wh down to an integer; None if negative or absurd."""
    wh = amount.numerator // amount.denominator
    if wh < 0 or wh > MAX_METER_WH:
        return None
    return wh


def register_wh_v16(meter_values: list[Any]) -> int | None:
    """The last Energy.Active.Import.Register reading (all phases, raw format) of a 1.6 meterValue list.

    1.6 sends values as decimal strings; the unit is Wh unless it says kWh. Returns None if
    there is no such reading; raises MalformedPayload for a reading that is not a number.
    """
    found: int | None = None
    for sample in _energy_samples(meter_values):
        if sample.get("format", "Raw") != "Raw":
            continue
        text = sample.get("value")
        if not isinstance(text, str) or _DECIMAL_TEXT.fullmatch(text) is None:
            raise MalformedPayload("sampledValue.value must be a decimal number")
        scale = _unit_scale(sample.get("unit", "Wh"))
        if scale is None:
            raise MalformedPayload("energy register unit must be Wh or kWh")
        wh = _to_wh(Fraction(Decimal(text)) * scale)
        if wh is None:
            raise MalformedPayload("energy register out of range")
        found = wh
    return found


def register_wh_v201(meter_values: list[Any]) -> int | None:
    """The last Energy.Active.Import.Register reading of a 2.0.1 meterValue list, in Wh.

    2.0.1 sends JSON numbers with unitOfMeasure {unit (Wh/kWh), multiplier (power of ten)}.
    Floats are converted exactly (binary value -> rational), then rounded down.
    """
    found: int | None = None
    for sample in _energy_samples(meter_values):
        value = sample.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise MalformedPayload("sampledValue.value must be a number")
        if isinstance(value, float) and value in (float("inf"), float("-inf")):
            raise MalformedPayload("sampledValue.value must be finite")
        unit = sample.get("unitOfMeasure") or {}
        if not isinstance(unit, dict):
            raise MalformedPayload("unitOfMeasure must be an object")
        scale = _unit_scale(unit.get("unit", "Wh"))
        multiplier = unit.get("multiplier", 0)
        if scale is None or type(multiplier) is not int or not -9 <= multiplier <= 9:
            raise MalformedPayload("energy register unit must be Wh or kWh, multiplier -9..9")
        wh = _to_wh(Fraction(value) * scale * Fraction(10) ** multiplier)
        if wh is None:
            raise MalformedPayload("energy register out of range")
        found = wh
    return found


def _unit_scale(unit: Any) -> int | None:
    """Wh per unit for "Wh" / "kWh"; None for anything else (including non-strings)."""
    if unit == "Wh" and type(unit) is str:
        return 1
    if unit == "kWh" and type(unit) is str:
        return 1000
    return None


def _energy_samples(meter_values: list[Any]) -> list[dict[str, Any]]:
    """Sampled values that are the whole-device import energy register, in message order."""
    out: list[dict[str, Any]] = []
    seen = 0
    for meter_value in meter_values:
        if not isinstance(meter_value, dict):
            raise MalformedPayload("meterValue entries must be objects")
        for sample in get_list(meter_value, "sampledValue"):
            seen += 1
            if seen > MAX_SAMPLES_READ:
                return out
            if not isinstance(sample, dict):
                raise MalformedPayload("sampledValue entries must be objects")
            if sample.get("measurand", ENERGY_REGISTER) == ENERGY_REGISTER and "phase" not in sample:
                out.append(sample)
    return out
