"""The ledger's pure readers: RFC 3339 timestamps and energy registers, with exact integer results."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devsen.ledger.parse import (
    MAX_SAMPLES_READ,
    MalformedPayload,
    format_timestamp_ms,
    parse_timestamp_ms,
    register_wh_v16,
    register_wh_v201,
)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2026-09-21T14:13:20Z", 1_790_000_000_000),
        ("2026-09-21T14:13:20.5Z", 1_790_000_000_500),
        ("2026-09-21T14:13:20.123456789Z", 1_790_000_000_123),
        ("2026-09-21T16:13:20+02:00", 1_790_000_000_000),
        ("2026-09-21T12:13:20-02:00", 1_790_000_000_000),
        ("2026-09-21T14:13:20", 1_790_000_000_000),  # no offset: UTC
        ("2026-09-21 14:13:20z", 1_790_000_000_000),
    ],
)
def test_parse_timestamp(text: str, ms: int) -> None:
    assert parse_timestamp_ms(text) == ms


@pytest.mark.parametrize(
    "text",
    ["yesterday", "", "2026-02-30T00:00:00Z", "2026-13-01T00:00:00Z", "2026-09-21T25:00:00Z",
     "2026-09-21T14:13:20+24:00", "2026-09-21T14:13:20.Z", "2026-09-21", "٢٠٢٦-09-21T14:13:20Z"],
)
def test_unreadable_timestamps_are_none(text: str) -> None:
    assert parse_timestamp_ms(text) is None


@given(st.integers(0, 253_402_300_799_999))
def test_format_and_parse_round_trip(ms: int) -> None:
    text = format_timestamp_ms(ms)
    assert text.endswith("Z") and len(text) == 24
    assert parse_timestamp_ms(text) == ms
    assert datetime.fromisoformat(text) == datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=ms % 1000 * 1000)


def mv(*samples: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"timestamp": "2026-09-21T14:13:20Z", "sampledValue": list(samples)}]


def test_v16_register_units_phases_and_last_value() -> None:
    assert register_wh_v16(mv({"value": "1234"})) == 1234
    assert register_wh_v16(mv({"value": "1.2345", "unit": "kWh"})) == 1234  # rounded down
    assert register_wh_v16(mv({"value": "10", "phase": "L1"}, {"value": "9", "measurand": "Voltage"})) is None
    assert register_wh_v16(mv({"value": "abcd", "format": "SignedData"})) is None
    assert register_wh_v16(mv({"value": "5"}) + mv({"value": "7"})) == 7
    assert register_wh_v16([]) is None


@pytest.mark.parametrize(
    "samples",
    [[{"value": "1e9"}], [{"value": "-1"}], [{"value": "NaN"}], [{"value": "5", "unit": "W"}], ["x"], [{"value": 5}],
     [{"value": "9" * 20}]],
)
def test_v16_bad_registers_are_malformed(samples: list[Any]) -> None:
    with pytest.raises(MalformedPayload):
        register_wh_v16(mv(*samples))


def test_v201_register_numbers_units_and_multipliers() -> None:
    assert register_wh_v201(mv({"value": 1500})) == 1500
    assert register_wh_v201(mv({"value": 0.1 + 0.2, "unitOfMeasure": {"unit": "kWh"}})) == 300
    assert register_wh_v201(mv({"value": 1.5, "unitOfMeasure": {"unit": "Wh", "multiplier": 3}})) == 1500
    assert register_wh_v201(mv({"value": 2999.9999})) == 2999
    assert register_wh_v201(mv({"value": 7, "measurand": "SoC"})) is None


@pytest.mark.parametrize(
    "sample",
    [{"value": True}, {"value": "1"}, {"value": -0.5}, {"value": 1, "unitOfMeasure": {"multiplier": 99}},
     {"value": 1, "unitOfMeasure": "Wh"}, {"value": 1e300}],
)
def test_v201_bad_registers_are_malformed(sample: dict[str, Any]) -> None:
    with pytest.raises(MalformedPayload):
        register_wh_v201(mv(sample))


def test_only_a_bounded_number_of_samples_is_read() -> None:
    samples = [{"value": str(i)} for i in range(MAX_SAMPLES_READ + 10)]
    assert register_wh_v16(mv(*samples)) == MAX_SAMPLES_READ - 1
