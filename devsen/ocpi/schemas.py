"""JSON Schemas (draft-07) of the OCPI 2.2.1 objects this interface sends, written from the
OCPI 2.2.1 specification text (types.asciidoc, mod_locations, mod_tariffs, mod_sessions,
mod_cdrs, credentials, version_information_endpoint), independently of devsen/ocpi/mapping.py.

Tests validate every module's output with them (`validator("Location")(obj)`); the node does
not use them to build answers. Objects are closed (`additionalProperties: false`) so a
misspelt field fails; optional fields we never send are listed all the same.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import fastjsonschema


def ci(n: int) -> dict[str, Any]:
    """CiString(n): printable ASCII, at most n characters."""
    return {"type": "string", "maxLength": n, "pattern": r"^[\x20-\x7e]*$"}


def text(n: int) -> dict[str, Any]:
    return {"type": "string", "maxLength": n}


def enum(*values: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/definitions/{name}"}


def many(item: dict[str, Any], minimum: int = 0) -> dict[str, Any]:
    return {"type": "array", "items": item, "minItems": minimum}


def obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "object", "required": sorted(required), "additionalProperties": False,
            "properties": {**required, **(optional or {})}}


DATETIME = {"type": "string", "maxLength": 25, "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z?$"}
URL = text(255)
NUMBER = {"type": "number"}
INT = {"type": "integer"}

CONNECTOR_TYPES = (
    "CHADEMO", "CHAOJI", *(f"DOMESTIC_{c}" for c in "ABCDEFGHIJKLMNO"), "GBT_AC", "GBT_DC",
    "IEC_60309_2_single_16", "IEC_60309_2_three_16", "IEC_60309_2_three_32", "IEC_60309_2_three_64",
    "IEC_62196_T1", "IEC_62196_T1_COMBO", "IEC_62196_T2", "IEC_62196_T2_COMBO", "IEC_62196_T3A", "IEC_62196_T3C",
    "NEMA_5_20", "NEMA_6_30", "NEMA_6_50", "NEMA_10_30", "NEMA_10_50", "NEMA_14_30", "NEMA_14_50",
    "PANTOGRAPH_BOTTOM_UP", "PANTOGRAPH_TOP_DOWN", "TESLA_R", "TESLA_S",
)
FORMAT = enum("SOCKET", "CABLE")
POWER_TYPE = enum("AC_1_PHASE", "AC_2_PHASE", "AC_2_PHASE_SPLIT", "AC_3_PHASE", "DC")
AUTH_METHOD = enum("AUTH_REQUEST", "COMMAND", "WHITELIST")

DEFINITIONS: dict[str, dict[str, Any]] = {
    "DisplayText": obj({"language": text(2), "text": text(512)}),
    "GeoLocation": obj({"latitude": {"type": "string", "maxLength": 10, "pattern": r"^-?[0-9]{1,2}\.[0-9]{5,7}$"},
                        "longitude": {"type": "string", "maxLength": 11,
                                      "pattern": r"^-?[0-9]{1,3}\.[0-9]{5,7}$"}}),
    "BusinessDetails": obj({"name": text(100)}, {"website": URL}),
    "Price": obj({"excl_vat": NUMBER}, {"incl_vat": NUMBER}),
    "Connector": obj(
        {"id": ci(36), "standard": enum(*CONNECTOR_TYPES), "format": FORMAT, "power_type": POWER_TYPE,
         "max_voltage": INT, "max_amperage": INT, "last_updated": DATETIME},
        {"max_electric_power": INT, "tariff_ids": many(ci(36)), "terms_and_conditions": URL}),
    "EVSE": obj(
        {"uid": ci(36), "status": enum("AVAILABLE", "BLOCKED", "CHARGING", "INOPERATIVE", "OUTOFORDER", "PLANNED",
                                       "REMOVED", "RESERVED", "UNKNOWN"),
         "connectors": many(ref("Connector"), 1), "last_updated": DATETIME},
        {"evse_id": ci(48), "capabilities": many(text(64)), "floor_level": text(4), "coordinates": ref("GeoLocation"),
         "physical_reference": text(16), "directions": many(ref("DisplayText")), "parking_restrictions": many(text(32))}),
    "Location": obj(
        {"country_code": ci(2), "party_id": ci(3), "id": ci(36), "publish": {"type": "boolean"},
         "address": text(45), "city": text(45), "country": text(3), "coordinates": ref("GeoLocation"),
         "time_zone": text(255), "last_updated": DATETIME},
        {"name": text(255), "postal_code": text(10), "state": text(20), "evses": many(ref("EVSE")),
         "directions": many(ref("DisplayText")), "operator": ref("BusinessDetails"),
         "suboperator": ref("BusinessDetails"), "owner": ref("BusinessDetails"), "facilities": many(text(32)),
         "charging_when_closed": {"type": "boolean"}, "parking_type": text(32)}),
    "PriceComponent": obj({"type": enum("ENERGY", "FLAT", "PARKING_TIME", "TIME"), "price": NUMBER,
                           "step_size": INT}, {"vat": NUMBER}),
    "TariffElement": obj({"price_components": many(ref("PriceComponent"), 1)}, {"restrictions": {"type": "object"}}),
    "Tariff": obj(
        {"country_code": ci(2), "party_id": ci(3), "id": ci(36), "currency": text(3),
         "elements": many(ref("TariffElement"), 1), "last_updated": DATETIME},
        {"type": enum("AD_HOC_PAYMENT", "PROFILE_CHEAP", "PROFILE_FAST", "PROFILE_GREEN", "REGULAR"),
         "tariff_alt_text": many(ref("DisplayText")), "tariff_alt_url": URL, "min_price": ref("Price"),
         "max_price": ref("Price"), "start_date_time": DATETIME, "end_date_time": DATETIME}),
    "CdrToken": obj({"country_code": ci(2), "party_id": ci(3), "uid": ci(36),
                     "type": enum("AD_HOC_USER", "APP_USER", "OTHER", "RFID"), "contract_id": ci(36)}),
    "CdrDimension": obj({"type": enum("CURRENT", "ENERGY", "ENERGY_EXPORT", "ENERGY_IMPORT", "MAX_CURRENT",
                                      "MIN_CURRENT", "MAX_POWER", "MIN_POWER", "PARKING_TIME", "POWER",
                                      "RESERVATION_TIME", "STATE_OF_CHARGE", "TIME"), "volume": NUMBER}),
    "ChargingPeriod": obj({"start_date_time": DATETIME, "dimensions": many(ref("CdrDimension"), 1)},
                          {"tariff_id": ci(36)}),
    "Session": obj(
        {"country_code": ci(2), "party_id": ci(3), "id": ci(36), "start_date_time": DATETIME, "kwh": NUMBER,
         "cdr_token": ref("CdrToken"), "auth_method": AUTH_METHOD, "location_id": ci(36), "evse_uid": ci(36),
         "connector_id": ci(36), "currency": text(3),
         "status": enum("ACTIVE", "COMPLETED", "INVALID", "PENDING", "RESERVATION"), "last_updated": DATETIME},
        {"end_date_time": DATETIME, "authorization_reference": ci(36), "meter_id": text(255),
         "charging_periods": many(ref("ChargingPeriod")), "total_cost": ref("Price")}),
    "CdrLocation": obj(
        {"id": ci(36), "address": text(45), "city": text(45), "country": text(3), "coordinates": ref("GeoLocation"),
         "evse_uid": ci(36), "evse_id": ci(48), "connector_id": ci(36), "connector_standard": enum(*CONNECTOR_TYPES),
         "connector_format": FORMAT, "connector_power_type": POWER_TYPE},
        {"name": text(255), "postal_code": text(10), "state": text(20)}),
    "CDR": obj(
        {"country_code": ci(2), "party_id": ci(3), "id": ci(39), "start_date_time": DATETIME,
         "end_date_time": DATETIME, "cdr_token": ref("CdrToken"), "auth_method": AUTH_METHOD,
         "cdr_location": ref("CdrLocation"), "currency": text(3), "charging_periods": many(ref("ChargingPeriod"), 1),
         "total_cost": ref("Price"), "total_energy": NUMBER, "total_time": NUMBER, "last_updated": DATETIME},
        {"session_id": ci(36), "authorization_reference": ci(36), "meter_id": text(255), "tariffs": many(ref("Tariff")),
         "total_fixed_cost": ref("Price"), "total_energy_cost": ref("Price"), "total_time_cost": ref("Price"),
         "total_parking_time": NUMBER, "total_parking_cost": ref("Price"), "total_reservation_cost": ref("Price"),
         "remark": text(255), "invoice_reference_id": ci(39), "credit": {"type": "boolean"},
         "credit_reference_id": ci(39), "home_charging_compensation": {"type": "boolean"}}),
    "CredentialsRole": obj({"role": enum("CPO", "EMSP", "HUB", "NAP", "NSP", "OTHER", "SCSP"),
                            "business_details": ref("BusinessDetails"), "party_id": ci(3), "country_code": ci(2)}),
    "Credentials": obj({"token": ci(64), "url": URL, "roles": many(ref("CredentialsRole"), 1)}),
    "Version": obj({"version": enum("2.0", "2.1", "2.1.1", "2.2", "2.2.1"), "url": URL}),
    "Endpoint": obj({"identifier": enum("cdrs", "chargingprofiles", "commands", "credentials", "hubclientinfo",
                                        "locations", "sessions", "tariffs", "tokens"),
                     "role": enum("SENDER", "RECEIVER"), "url": URL}),
    "VersionDetails": obj({"version": enum("2.0", "2.1", "2.1.1", "2.2", "2.2.1"),
                           "endpoints": many(ref("Endpoint"), 1)}),
    "Response": obj({"status_code": {"type": "integer", "minimum": 1000, "maximum": 4999}, "timestamp": DATETIME},
                    {"data": {}, "status_message": text(255)}),
}


@cache
def validator(name: str) -> Callable[[Any], Any]:
    """A compiled validator of the OCPI 2.2.1 object `name` (raises JsonSchemaException)."""
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "definitions": DEFINITIONS, **ref(name)}
    compiled: Callable[[Any], Any] = fastjsonschema.compile(schema)
    return compiled
