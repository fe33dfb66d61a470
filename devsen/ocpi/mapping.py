"""Pure mapping of ledger and chain records to OCPI 2.2.1 objects (no I/O, deterministic).

Identifiers: OCPI ids are at most 36 characters; a charger id that fits (printable ASCII) is
its Location id, else `h-` + 34 hex digits of its SHA-256. An EVSE's uid is `<location>*<n>`
(n = the OCPP connector, 2.0.1 EVSE) under the same rule. A session's and its CDR's id is the
hash form of (charger id, transaction ref), stable from open to settled.
idTags appear only as hashes: a token's `uid` and `contract_id` are the first 36 hex digits
of the idTag's keccak hash (the ledger never sees the idTag itself).
Money: ChargeToken base units (6 decimals) as a number of `currency` units; energy in kWh;
times as RFC 3339 UTC from block or chain time, never from a node's clock.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from anchoring.chain.client import DeviceRecord as ChainDevice
from devsen.api_routes import parse_location
from devsen.fmt import TOKEN_DECIMALS
from devsen.ledger.state import ClosedTransaction, DeviceRecord, Session

OCPI_VERSION = "2.2.1"
MAX_ID = 36
AC_VOLTAGE = 230  # line to neutral (OCPI: for AC_3_PHASE the voltage per phase)
DC_VOLTAGE = 920  # no DC voltage is on chain: the CCS/CHAdeMO upper bound is given
_PRINTABLE = re.compile(r"[\x21-\x7e]{1,36}")
_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(Z|[+-]00:00)?")

# The location string's `connectors=` names -> (OCPI ConnectorType, ConnectorFormat, PowerType).
CONNECTOR_TYPES: dict[str, tuple[str, str, str]] = {
    "ccs2": ("IEC_62196_T2_COMBO", "CABLE", "DC"),
    "ccs1": ("IEC_62196_T1_COMBO", "CABLE", "DC"),
    "ccs": ("IEC_62196_T2_COMBO", "CABLE", "DC"),
    "chademo": ("CHADEMO", "CABLE", "DC"),
    "type2": ("IEC_62196_T2", "SOCKET", "AC_3_PHASE"),
    "type1": ("IEC_62196_T1", "CABLE", "AC_1_PHASE"),
    "schuko": ("DOMESTIC_F", "SOCKET", "AC_1_PHASE"),
    "gbt-ac": ("GBT_AC", "SOCKET", "AC_3_PHASE"),
    "gbt-dc": ("GBT_DC", "CABLE", "DC"),
    "nacs": ("TESLA_S", "CABLE", "DC"),
}
DEFAULT_CONNECTOR = "type2"  # no (known) type on chain: the EU's mandated AC socket

# OCPP 1.6 ChargePointStatus / 2.0.1 ConnectorStatus -> OCPI EVSE Status.
EVSE_STATUS = {
    "Available": "AVAILABLE", "Preparing": "CHARGING", "Charging": "CHARGING", "SuspendedEVSE": "CHARGING",
    "SuspendedEV": "CHARGING", "Finishing": "CHARGING", "Occupied": "CHARGING", "Reserved": "RESERVED",
    "Unavailable": "INOPERATIVE", "Faulted": "OUTOFORDER",
}


@dataclass(frozen=True, slots=True)
class Party:
    """Who this CPO is (the `[ocpi]` config section)."""

    country_code: str = "DE"
    party_id: str = "DVS"
    currency: str = "EUR"
    country: str = "DEU"
    time_zone: str = "Europe/Berlin"
    business_name: str = "DEVSEN"


def ocpi_time(ms: int) -> str:
    """Milliseconds since the epoch as OCPI DateTime (UTC, whole seconds, `Z`)."""
    moment = datetime.datetime.fromtimestamp(max(0, ms) // 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_ocpi_time(text: str) -> int:
    """An OCPI DateTime (UTC; `Z` or no zone) as milliseconds; ValueError if it is not one."""
    match = _TIME.fullmatch(text.strip()) if len(text) <= 40 else None
    if match is None:
        raise ValueError("expected an RFC 3339 UTC time like 2026-12-02T10:00:00Z")
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    moment = datetime.datetime(year, month, day, hour, minute, second, tzinfo=datetime.UTC)
    fraction = match.group(7)
    ms = int(float(fraction) * 1000) if fraction else 0
    return int(moment.timestamp()) * 1000 + ms


def ocpi_id(text: str) -> str:
    """`text` if it is a valid OCPI id (1..36 printable ASCII), else its `h-` hash form."""
    if _PRINTABLE.fullmatch(text):
        return text
    return "h-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:MAX_ID - 2]


def session_id(charger_id: str, tx_ref: str) -> str:
    return "h-" + hashlib.sha256(f"{charger_id}\n{tx_ref}".encode()).hexdigest()[:MAX_ID - 2]


def evse_uid(charger_id: str, evse: int) -> str:
    return ocpi_id(f"{ocpi_id(charger_id)}*{evse}")


def token_uid(id_tag_hash: bytes) -> str:
    """The hash form an OCPI Token uid takes here (idTags never leave the charger unhashed)."""
    return id_tag_hash.hex()[:MAX_ID] if id_tag_hash else "unknown"


def money(units: int) -> float:
    """ChargeToken base units as a number of currency units (exact to the token's 6 decimals)."""
    return float(Decimal(units) / Decimal(10**TOKEN_DECIMALS))


def kwh(wh: int) -> float:
    return float(Decimal(wh) / Decimal(1000))


def hours(seconds: int) -> float:
    return round(max(0, seconds) / 3600, 4)


def _coordinate(value: float, integer_digits: int) -> str:
    text = f"{value:.6f}"
    whole = text.lstrip("-").split(".")[0]
    return text if len(whole) <= integer_digits else f"{math.copysign(10**integer_digits - 1e-6, value):.6f}"


@functools.lru_cache(maxsize=4_096)
def _site(text: str, default_country: str) -> tuple[tuple[tuple[str, Any], ...] | None, tuple[tuple[str, str, str], ...]]:
    """(address fields or None without coordinates, plug kinds) of an on-chain location string
    (pure; cached: a registry holds few distinct strings and this runs per charger per height)."""
    parsed = parse_location(text)
    fields: dict[str, str] = {}
    for item in text.split(";")[1:]:
        name, _, value = item.partition("=")
        if value.strip():
            fields.setdefault(name.strip(), value.strip())
    names = parsed["connector_types"]
    kinds = tuple(CONNECTOR_TYPES[n.lower()] for n in names if n.lower() in CONNECTOR_TYPES)
    kinds = kinds or (CONNECTOR_TYPES[DEFAULT_CONNECTOR],)
    if parsed["lat"] is None:
        return None, kinds
    country = fields.get("country")
    out: dict[str, Any] = {
        "address": fields.get("address", "")[:45],
        "city": fields.get("city", "")[:45],
        "country": country if country and re.fullmatch(r"[A-Z]{3}", country) else default_country,
        "coordinates": (("latitude", _coordinate(parsed["lat"], 2)), ("longitude", _coordinate(parsed["lon"], 3))),
    }
    if fields.get("postal_code"):
        out["postal_code"] = fields["postal_code"][:10]
    if parsed.get("name"):
        out["name"] = str(parsed["name"])[:255]
    return tuple(out.items()), kinds


def place(device: ChainDevice | None, party: Party) -> dict[str, Any] | None:
    """The address fields of a registered charger, or None when it has no coordinates on chain
    (OCPI requires them: such a charger is not published).

    The on-chain location string may carry `address=`, `city=`, `postal_code=`, `country=`
    (alpha-3) and `name=` fields after `lat,lon`."""
    if device is None:
        return None
    fields, _ = _site(device.location, party.country)
    if fields is None:
        return None
    out = dict(fields)
    out["coordinates"] = dict(out["coordinates"])
    return out


def connector_kinds(device: ChainDevice) -> list[tuple[str, str, str]]:
    """(standard, format, power type) of each plug an EVSE of this charger offers."""
    return list(_site(device.location, "")[1])


def _connector(index: int, kind: tuple[str, str, str], device: ChainDevice, tariff: str, updated: str) -> dict[str, Any]:
    standard, fmt, power_type = kind
    voltage = DC_VOLTAGE if power_type == "DC" else AC_VOLTAGE
    phases = 3 if power_type == "AC_3_PHASE" else 1
    amperage = math.ceil(device.max_power_w / (voltage * phases)) if device.max_power_w else 0
    out: dict[str, Any] = {"id": str(index), "standard": standard, "format": fmt, "power_type": power_type,
                           "max_voltage": voltage, "max_amperage": amperage, "tariff_ids": [tariff],
                           "last_updated": updated}
    if device.max_power_w:
        out["max_electric_power"] = device.max_power_w
    return out


def record_updated_ms(record: DeviceRecord) -> int:
    """When the ledger last saw this charger change (boot or a connector status), block time."""
    return max([record.last_boot_ms, *(c.block_ms for c in record.connectors)])


def evse_status(record: DeviceRecord, evse: int, active: bool) -> tuple[str, int]:
    """(OCPI status, block ms it was reported) of EVSE `evse` from the ledger's connector statuses."""
    if not active:
        return "INOPERATIVE", record_updated_ms(record)
    mine = [c for c in record.connectors if c.connector.split("/")[0] == str(evse)]
    whole = [c for c in record.connectors if c.connector.split("/")[0] == "0"]
    newest = max(mine, key=lambda c: c.block_ms, default=None)
    if whole and whole[-1].status in ("Unavailable", "Faulted") and (newest is None or whole[-1].block_ms > newest.block_ms):
        newest = whole[-1]
    if newest is None:
        return "UNKNOWN", record_updated_ms(record)
    return EVSE_STATUS.get(newest.status, "UNKNOWN"), newest.block_ms


def location(record: DeviceRecord, device: ChainDevice | None, party: Party) -> dict[str, Any] | None:
    """The OCPI Location of a charger the ledger knows, or None if it is not publishable."""
    where = place(device, party)
    if where is None or device is None:
        return None
    loc_id = ocpi_id(record.charger_id)
    updated_ms = record_updated_ms(record)
    evses: list[dict[str, Any]] = []
    kinds = connector_kinds(device)
    newest = updated_ms
    for n in range(1, device.connector_count + 1):
        status, since = evse_status(record, n, device.active)
        newest = max(newest, since)
        updated = ocpi_time(max(since, updated_ms))
        evses.append({"uid": evse_uid(record.charger_id, n), "status": status, "physical_reference": str(n),
                      "connectors": [_connector(i, kind, device, loc_id, updated)
                                     for i, kind in enumerate(kinds, start=1)],
                      "last_updated": updated})
    return {"country_code": party.country_code, "party_id": party.party_id, "id": loc_id, "publish": True,
            **where, "time_zone": party.time_zone, "evses": evses,
            "operator": {"name": party.business_name},
            "last_updated": ocpi_time(newest)}


def _tariff(charger_id: str, price_per_kwh: int, per_minute_fee: int, updated_ms: int, party: Party) -> dict[str, Any]:
    """An OCPI Tariff from a price per kWh and per minute in token base units (excl. VAT).
    The ledger charges energy rounded down and whole minutes: ENERGY step 1 Wh, TIME step 60 s."""
    components: list[dict[str, Any]] = []
    if price_per_kwh:
        components.append({"type": "ENERGY", "price": money(price_per_kwh), "step_size": 1})
    if per_minute_fee:
        components.append({"type": "TIME", "price": money(per_minute_fee * 60), "step_size": 60})
    if not components:
        components.append({"type": "FLAT", "price": 0, "step_size": 1})
    return {"country_code": party.country_code, "party_id": party.party_id, "id": ocpi_id(charger_id),
            "currency": party.currency, "elements": [{"price_components": components}],
            "last_updated": ocpi_time(updated_ms)}


def tariff(record: DeviceRecord, device: ChainDevice, party: Party) -> dict[str, Any]:
    """A charger's OCPI Tariff: its on-chain price per kWh and per minute."""
    return _tariff(record.charger_id, device.price_per_kwh, device.per_minute_fee, record_updated_ms(record), party)


def cdr_token(id_tag_hash: bytes, party: Party) -> dict[str, Any]:
    uid = token_uid(id_tag_hash)
    return {"country_code": party.country_code, "party_id": party.party_id, "uid": uid, "type": "RFID",
            "contract_id": uid}


def _evse_number(connector_id: int) -> int:
    return max(1, connector_id)


def open_session(session: Session, party: Party) -> dict[str, Any]:
    """An open ledger session: ACTIVE once bound to an escrow session, else PENDING."""
    energy = 0
    if session.meter_start_wh is not None and session.meter_last_wh is not None:
        energy = max(0, session.meter_last_wh - session.meter_start_wh)
    start = session.charge_start_ms or session.opened_block_ms
    return {"country_code": party.country_code, "party_id": party.party_id,
            "id": session_id(session.charger_id, session.tx_ref), "start_date_time": ocpi_time(start),
            "kwh": kwh(energy), "cdr_token": cdr_token(session.id_tag_hash, party), "auth_method": "AUTH_REQUEST",
            "location_id": ocpi_id(session.charger_id),
            "evse_uid": evse_uid(session.charger_id, _evse_number(session.connector_id)),
            "connector_id": "1", "currency": party.currency,
            "status": "ACTIVE" if session.bound else "PENDING",
            "last_updated": ocpi_time(max(session.last_block_ms, session.opened_block_ms))}


def closed_session(charger_id: str, tx_ref: str, closed: ClosedTransaction, chain: dict[str, Any],
                   party: Party) -> dict[str, Any]:
    """A closed transaction bound to an escrow session, with the Escrow contract's view `chain`
    (devsen/api_routes.py chain_session_reader): COMPLETED once settled on chain, else INVALID."""
    start_ms = int(chain["opened_at_s"]) * 1000
    settled = closed.outcome == "settled" and chain["state"] == "settled" and chain.get("settled_at_s")
    end_ms = int(chain["settled_at_s"]) * 1000 if settled else start_ms
    out: dict[str, Any] = {
        "country_code": party.country_code, "party_id": party.party_id, "id": session_id(charger_id, tx_ref),
        "start_date_time": ocpi_time(start_ms), "kwh": kwh(closed.energy_wh),
        "cdr_token": cdr_token(bytes.fromhex(str(chain["id_tag_hash"])[2:]), party), "auth_method": "AUTH_REQUEST",
        "location_id": ocpi_id(charger_id), "evse_uid": evse_uid(charger_id, _evse_number(int(chain["connector_id"]))),
        "connector_id": "1", "currency": party.currency, "status": "COMPLETED" if settled else "INVALID",
        "last_updated": ocpi_time(end_ms)}
    if settled:
        out["end_date_time"] = ocpi_time(end_ms)
        out["total_cost"] = {"excl_vat": money(closed.amount)}
    return out


def cdr(charger_id: str, tx_ref: str, closed: ClosedTransaction, chain: dict[str, Any],
        device: ChainDevice | None, party: Party) -> dict[str, Any] | None:
    """The CDR of a transaction settled on chain, or None (not settled, or its charger has no
    coordinates on chain). Start: the escrow opening; end: the settlement's block time (the
    ledger keeps no stop time of closed transactions). Cost: the amount the Escrow paid."""
    if closed.outcome != "settled" or chain.get("state") != "settled" or not chain.get("settled_at_s"):
        return None
    where = place(device, party)
    if where is None or device is None:
        return None
    start_s, end_s = int(chain["opened_at_s"]), int(chain["settled_at_s"])
    evse = _evse_number(int(chain["connector_id"]))
    standard, fmt, power_type = connector_kinds(device)[0]
    loc: dict[str, Any] = {"id": ocpi_id(charger_id), **where, "evse_uid": evse_uid(charger_id, evse),
                           "evse_id": evse_uid(charger_id, evse), "connector_id": "1",
                           "connector_standard": standard, "connector_format": fmt,
                           "connector_power_type": power_type}
    return {
        "country_code": party.country_code, "party_id": party.party_id, "id": session_id(charger_id, tx_ref),
        "start_date_time": ocpi_time(start_s * 1000), "end_date_time": ocpi_time(end_s * 1000),
        "session_id": session_id(charger_id, tx_ref),
        "cdr_token": cdr_token(bytes.fromhex(str(chain["id_tag_hash"])[2:]), party),
        "auth_method": "AUTH_REQUEST", "cdr_location": loc, "currency": party.currency,
        "tariffs": [tariff_of_session(charger_id, chain, party, end_s)],
        "charging_periods": [{"start_date_time": ocpi_time(start_s * 1000), "tariff_id": ocpi_id(charger_id),
                              "dimensions": [{"type": "ENERGY", "volume": kwh(closed.energy_wh)},
                                             {"type": "TIME", "volume": hours(end_s - start_s)}]}],
        "total_cost": {"excl_vat": money(closed.amount)},
        "total_energy": kwh(closed.energy_wh), "total_time": hours(end_s - start_s),
        "remark": f"escrow session {chain['escrow_session_id']}"[:255],
        "last_updated": ocpi_time(end_s * 1000),
    }


def tariff_of_session(charger_id: str, chain: dict[str, Any], party: Party, at_s: int) -> dict[str, Any]:
    """The tariff the Escrow copied when the session opened (its terms, not today's device tariff)."""
    return _tariff(charger_id, int(chain.get("price_per_kwh") or 0), int(chain.get("per_minute_fee") or 0),
                   at_s * 1000, party)
