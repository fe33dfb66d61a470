"""devsen/ocpi/mapping.py: ledger and chain records -> OCPI 2.2.1 objects, each validated
against the spec's object definitions (devsen/ocpi/schemas.py)."""

from __future__ import annotations

import pytest
from ocpi_world import (
    CHARGER,
    ESCROW,
    LONG_CHARGER,
    PARTY,
    T0_MS,
    TAG_HASH,
    chain_device,
    device_record,
    escrow_view,
    open_session,
)

from devsen.ledger.state import ClosedTransaction
from devsen.ocpi import mapping
from devsen.ocpi.schemas import validator


def test_location_maps_registry_and_live_status() -> None:
    loc = mapping.location(device_record(), chain_device(CHARGER), PARTY)
    assert loc is not None
    validator("Location")(loc)
    assert loc["id"] == CHARGER and loc["name"] == "Depot 4" and loc["city"] == "Berlin"
    assert loc["coordinates"] == {"latitude": "52.520008", "longitude": "13.404954"}
    assert loc["address"] == "Alexanderplatz 1" and loc["postal_code"] == "10178" and loc["country"] == "DEU"
    assert [e["status"] for e in loc["evses"]] == ["AVAILABLE", "CHARGING"]
    assert [e["uid"] for e in loc["evses"]] == [f"{CHARGER}*1", f"{CHARGER}*2"]
    plugs = loc["evses"][0]["connectors"]
    assert [(c["standard"], c["power_type"]) for c in plugs] == [("IEC_62196_T2_COMBO", "DC"),
                                                                 ("IEC_62196_T2", "AC_3_PHASE")]
    assert plugs[1]["max_amperage"] == 32 and plugs[1]["max_voltage"] == 230  # 22 kW over 3 x 230 V
    assert plugs[0]["tariff_ids"] == [CHARGER] and plugs[0]["max_electric_power"] == 22_000
    assert loc["last_updated"] == mapping.ocpi_time(T0_MS + 2_000)


def test_location_without_coordinates_or_registration_is_not_published() -> None:
    assert mapping.location(device_record(), chain_device(CHARGER, "devnet"), PARTY) is None
    assert mapping.location(device_record(), None, PARTY) is None


def test_status_mapping_inactive_unknown_and_charger_level_fault() -> None:
    loc = mapping.location(device_record(statuses=()), chain_device(CHARGER, "1.5,2.5", active=False), PARTY)
    assert loc is not None and {e["status"] for e in loc["evses"]} == {"INOPERATIVE"}
    validator("Location")(loc)
    loc = mapping.location(device_record(statuses=(("1", "Available", 1), ("0", "Faulted", 5), ("2", "Bogus", 1))),
                           chain_device(CHARGER, "-33.9,151.2;connectors=Wankel"), PARTY)
    assert loc is not None and [e["status"] for e in loc["evses"]] == ["OUTOFORDER", "OUTOFORDER"]
    assert loc["evses"][0]["connectors"][0]["standard"] == "IEC_62196_T2"  # unknown type: the default
    assert loc["address"] == "" and loc["coordinates"]["latitude"] == "-33.900000"
    validator("Location")(loc)
    loc = mapping.location(device_record(statuses=(("1/1", "Occupied", 9),)), chain_device(CHARGER, "0,0"), PARTY)
    assert loc is not None and loc["evses"][0]["status"] == "CHARGING" and loc["evses"][1]["status"] == "UNKNOWN"


def test_long_and_odd_ids_get_a_stable_hash_form() -> None:
    for charger in (LONG_CHARGER, "ünïcode", "has space"):
        loc = mapping.location(device_record(charger), chain_device(charger), PARTY)
        assert loc is not None
        validator("Location")(loc)
        assert loc["id"].startswith("h-") and len(loc["id"]) == 36 and loc["id"] == mapping.ocpi_id(charger)
        assert all(len(e["uid"]) <= 36 for e in loc["evses"])


def test_tariff_from_on_chain_prices() -> None:
    tariff = mapping.tariff(device_record(), chain_device(CHARGER), PARTY)
    validator("Tariff")(tariff)
    assert tariff["currency"] == "EUR" and tariff["id"] == CHARGER
    assert tariff["elements"][0]["price_components"] == [
        {"type": "ENERGY", "price": 0.3, "step_size": 1}, {"type": "TIME", "price": 0.6, "step_size": 60}]
    free = mapping.tariff(device_record(), chain_device(CHARGER, price_per_kwh=0, per_minute_fee=0), PARTY)
    validator("Tariff")(free)
    assert free["elements"][0]["price_components"][0]["type"] == "FLAT"


def test_sessions_open_and_closed() -> None:
    active = mapping.open_session(open_session(), PARTY)
    validator("Session")(active)
    assert active["status"] == "ACTIVE" and active["kwh"] == 3.5 and active["evse_uid"] == f"{CHARGER}*2"
    assert active["cdr_token"]["uid"] == TAG_HASH.hex()[:36]  # the idTag's hash, never the idTag
    pending = mapping.open_session(open_session(bound=False), PARTY)
    validator("Session")(pending)
    assert pending["status"] == "PENDING"
    closed = ClosedTransaction(5, "settled", 12_000, 3_600_000, ESCROW)
    done = mapping.closed_session(CHARGER, "6", closed, escrow_view(ESCROW), PARTY)
    validator("Session")(done)
    assert done["status"] == "COMPLETED" and done["total_cost"] == {"excl_vat": 3.6} and done["kwh"] == 12.0
    unsettled = mapping.closed_session(CHARGER, "6", closed, escrow_view(ESCROW, "open", settled_s=None), PARTY)
    validator("Session")(unsettled)
    assert unsettled["status"] == "INVALID" and "end_date_time" not in unsettled
    assert done["id"] == mapping.session_id(CHARGER, "6") != active["id"]


def test_cdr_of_a_settled_session() -> None:
    closed = ClosedTransaction(5, "settled", 12_000, 3_600_000, ESCROW)
    cdr = mapping.cdr(CHARGER, "6", closed, escrow_view(ESCROW), chain_device(CHARGER), PARTY)
    assert cdr is not None
    validator("CDR")(cdr)
    assert cdr["total_energy"] == 12.0 and cdr["total_cost"] == {"excl_vat": 3.6} and cdr["total_time"] == 0.5
    assert cdr["start_date_time"] == mapping.ocpi_time(T0_MS) and cdr["id"] == cdr["session_id"]
    assert cdr["cdr_location"]["connector_standard"] == "IEC_62196_T2_COMBO"
    assert cdr["tariffs"][0]["elements"][0]["price_components"] == [{"type": "ENERGY", "price": 0.3, "step_size": 1}]
    assert "0x" + ESCROW.hex() in cdr["remark"]
    assert mapping.cdr(CHARGER, "6", closed, escrow_view(ESCROW, "open", settled_s=None), chain_device(CHARGER),
                       PARTY) is None
    assert mapping.cdr(CHARGER, "6", closed, escrow_view(ESCROW), chain_device(CHARGER, "devnet"), PARTY) is None


@pytest.mark.parametrize("text,ms", [("2026-12-02T10:00:00Z", 1_796_205_600_000),
                                     ("2026-12-02T10:00:00", 1_796_205_600_000),
                                     ("2026-12-02T10:00:00.250+00:00", 1_796_205_600_250)])
def test_times(text: str, ms: int) -> None:
    assert mapping.parse_ocpi_time(text) == ms
    assert mapping.ocpi_time(ms) == "2026-12-02T10:00:00Z"


@pytest.mark.parametrize("text", ["", "yesterday", "2026-12-02", "2026-12-02T10:00:00+02:00", "2026-13-02T10:00:00Z",
                                  "2026-12-02T10:00:00Z' OR 1=1 --", "9" * 100])
def test_bad_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        mapping.parse_ocpi_time(text)
