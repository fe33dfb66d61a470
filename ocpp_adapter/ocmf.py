"""Open Charge Metering Format (OCMF): parse and verify meter-signed documents.

An OCMF document is `OCMF|{payload}|{signature}` (SAFE e.V. specification): the payload is a
JSON object of the meter's identity (MS serial), pagination (PG `T<n>` transaction or
`F<n>` fiscal counter), the identification of the user (IS/IL/IF/IT/ID), the charge point
(CT/CI) and a list of readings RD (TM time, TX reason, RV value, RI OBIS index, RU unit,
ST status); the signature section names the algorithm SA, the encoding SE (hex or base64)
and carries the DER-encoded ECDSA signature SD over the payload's exact bytes.

Pure and strict: bounded sizes (document, strings, readings, numbers), no exponents, NaN or
duplicate keys, exact decimal values; every refusal is an `OcmfError` that says what is
wrong. Public keys are DER SubjectPublicKeyInfo (the hex form meters print on their label).
Supported signature algorithms: ECDSA over secp256r1, secp384r1, brainpool256r1 and
brainpool384r1, with SHA-256 (and SHA-512).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

HEADER = "OCMF"
MAX_DOCUMENT_CHARS = 8_192  # a real document with a dozen readings is ~2 KiB
MAX_READINGS = 32
MAX_TEXT = 256  # any string field
MAX_NUMBER_CHARS = 24  # a JSON number token (RV, LI, ...)
MAX_JSON_DEPTH = 4  # payload object > RD list > reading object > LC/UC object
MAX_SIGNATURE_BYTES = 150  # DER ECDSA over a 384-bit curve is at most 104 bytes
MAX_PUBLIC_KEY_BYTES = 128  # = DeviceFactory.MAX_PUBLIC_KEY_BYTES; P-384 SPKI is 120 bytes
MAX_PAGINATION = 2**32 - 1
TX_CODES = frozenset("BCXELRAPST")  # begin, charging, exception/intermediate, end, power loss, reset, abort, pause, suspend, tariff
END_CODES = frozenset("ELRA")  # a reading that ends the transaction
TIME_STATUS = frozenset("UISR")  # unknown, informative, synchronized, relative
ENERGY_UNITS = {"Wh": 1, "kWh": 1000}
_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "secp256r1": ec.SECP256R1,
    "secp384r1": ec.SECP384R1,
    "brainpool256r1": ec.BrainpoolP256R1,
    "brainpoolP256r1": ec.BrainpoolP256R1,
    "brainpool384r1": ec.BrainpoolP384R1,
    "brainpoolP384r1": ec.BrainpoolP384R1,
}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"SHA256": hashes.SHA256, "SHA512": hashes.SHA512}
DEFAULT_ALGORITHM = "ECDSA-secp256r1-SHA256"
_NUMBER = re.compile(r"-?(?:0|[1-9]\d{0,14})(?:\.\d{1,9})?", re.ASCII)
_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})[,.](\d{3})([+-])(\d{2})(\d{2}) ([UISR])", re.ASCII
)
_PAGINATION = re.compile(r"([TF])(0|[1-9]\d{0,9})", re.ASCII)
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+", re.ASCII)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INHERITED = ("TM", "TX", "RI", "RU", "RT", "ST")  # a later reading may omit these (spec: inherited)


class OcmfError(ValueError):
    """Not an OCMF document within our bounds, or a signature that does not verify."""


@dataclass(frozen=True, slots=True)
class Reading:
    """One entry of RD: `value` exact (Decimal of the JSON number), `time_ms` UTC."""

    time_ms: int
    time_status: str
    tx: str
    value: Decimal
    index: str
    unit: str
    status: str

    @property
    def is_import_energy(self) -> bool:
        """Whether this is the active import energy register (OBIS 1.8.x) in Wh or kWh."""
        return self.unit in ENERGY_UNITS and (self.index == "" or _is_import_obis(self.index))

    def wh(self) -> int | None:
        """The value in whole Wh (rounded down); None if not an import energy register."""
        if not self.is_import_energy or self.value < 0:
            return None
        return int(Fraction(self.value) * ENERGY_UNITS[self.unit])


@dataclass(frozen=True, slots=True)
class Document:
    """A parsed OCMF document. `signed_bytes` are the payload's exact bytes (what SD signs)."""

    signed_bytes: bytes
    version: str
    gateway_id: str
    gateway_serial: str
    meter_vendor: str
    meter_model: str
    meter_serial: str
    pagination_kind: str  # "T" transaction counter, "F" fiscal counter
    pagination: int
    identified: bool
    id_level: str
    id_flags: tuple[str, ...]
    id_type: str
    id_data: str
    charge_point_type: str
    charge_point_id: str
    readings: tuple[Reading, ...]
    algorithm: str
    encoding: str
    signature: bytes

    def import_readings(self) -> tuple[Reading, ...]:
        """The readings of the import energy register, in document order."""
        return tuple(r for r in self.readings if r.is_import_energy)


def _is_import_obis(index: str) -> bool:
    """False only for an OBIS code whose C.D is not 1.8 (active import energy): 1-0:1.8.0,
    1-b:1.8.e, 01-0B:01.08.00*FF and short forms such as "1-b" count as import; 1-0:2.8.0 does not."""
    match = re.fullmatch(r"[0-9A-Za-z]{1,3}-[0-9A-Za-z]{1,3}:([0-9A-Za-z]{1,3})\.([0-9A-Za-z]{1,3})\..*", index)
    if match is None:
        return True
    return match.group(1).lstrip("0") == "1" and match.group(2).lstrip("0") == "8"


def parse_time(text: str) -> tuple[int, str]:
    """(ms since the epoch, time status) for an OCMF time `YYYY-MM-DDThh:mm:ss,fff+zzzz S`."""
    match = _TIME.fullmatch(text)
    if match is None:
        raise OcmfError(f"TM {text[:40]!r} is not YYYY-MM-DDThh:mm:ss,fff+zzzz followed by U/I/S/R")
    y, mo, d, h, mi, s, ms = (int(match.group(i)) for i in range(1, 8))
    sign, oh, om, status = match.group(8), int(match.group(9)), int(match.group(10)), match.group(11)
    if oh > 23 or om > 59:
        raise OcmfError(f"TM {text[:40]!r} has an impossible UTC offset")
    try:
        moment = datetime(y, mo, d, h, mi, s, tzinfo=UTC)
    except ValueError as exc:
        raise OcmfError(f"TM {text[:40]!r} is not a calendar time") from exc
    moment -= (1 if sign == "+" else -1) * timedelta(hours=oh, minutes=om)
    millis = (moment - _EPOCH) // timedelta(milliseconds=1) + ms
    if millis < 0:
        raise OcmfError(f"TM {text[:40]!r} is before 1970")
    return millis, status


def format_time(ms: int, status: str = "S") -> str:
    """The OCMF form of a UTC instant: `2026-01-02T03:04:05,678+0000 S`."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S,") + f"{ms % 1000:03d}+0000 {status}"


def _json_depth_ok(text: str, limit: int) -> bool:
    """Whether the JSON text nests at most `limit` containers (strings skipped); no recursion."""
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _number(token: str) -> Decimal:
    if len(token) > MAX_NUMBER_CHARS or _NUMBER.fullmatch(token) is None:
        raise OcmfError(f"number {token[:30]!r} is not a plain decimal of at most 15 integer and 9 fraction digits")
    return Decimal(token)


def _constant(token: str) -> Any:
    raise OcmfError(f"{token} is not a number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise OcmfError(f"duplicate key {key[:20]!r}")
        out[key] = value
    return out


def _load_object(text: str, section: str) -> dict[str, Any]:
    if not _json_depth_ok(text, MAX_JSON_DEPTH):
        raise OcmfError(f"{section} section nests deeper than {MAX_JSON_DEPTH}")
    try:
        value = json.loads(
            text, parse_float=_number, parse_int=_number, parse_constant=_constant, object_pairs_hook=_no_duplicates
        )
    except json.JSONDecodeError as exc:
        raise OcmfError(f"{section} section is not JSON: {exc.msg} at {exc.pos}") from exc
    if not isinstance(value, dict):
        raise OcmfError(f"{section} section must be a JSON object")
    return value


def _text(obj: dict[str, Any], key: str, *, required: bool = False, default: str = "") -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise OcmfError(f"{key} is required")
        return default
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise OcmfError(f"{key} must be a string of at most {MAX_TEXT} characters")
    return value


def _readings(payload: dict[str, Any]) -> tuple[Reading, ...]:
    raw = payload.get("RD")
    if not isinstance(raw, list) or not raw:
        raise OcmfError("RD must be a non-empty list of readings")
    if len(raw) > MAX_READINGS:
        raise OcmfError(f"RD has {len(raw)} readings, at most {MAX_READINGS} allowed")
    out: list[Reading] = []
    inherited: dict[str, Any] = {}
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise OcmfError(f"RD[{i}] must be an object")
        fields = {**inherited, **{k: v for k, v in entry.items() if k in _INHERITED}}
        inherited = fields
        value = entry.get("RV")
        if not isinstance(value, Decimal):
            raise OcmfError(f"RD[{i}].RV must be a number")
        time_ms, time_status = parse_time(_text(fields, "TM", required=True))
        tx = _text(fields, "TX")
        if tx and tx not in TX_CODES:
            raise OcmfError(f"RD[{i}].TX {tx[:4]!r} is not one of {''.join(sorted(TX_CODES))}")
        unit = _text(fields, "RU", required=True)
        out.append(Reading(time_ms, time_status, tx, value, _text(fields, "RI"), unit, _text(fields, "ST")))
    return tuple(out)


def _signature_bytes(sig: dict[str, Any]) -> tuple[str, bytes]:
    encoding = _text(sig, "SE", default="hex")
    mime = _text(sig, "SM", default="application/x-der")
    if mime != "application/x-der":
        raise OcmfError(f"SM {mime[:40]!r} is not application/x-der")
    data = _text(sig, "SD", required=True)
    if encoding == "hex":
        if _HEX.fullmatch(data) is None:
            raise OcmfError("SD is not hex")
        raw = bytes.fromhex(data)
    elif encoding == "base64":
        try:
            raw = base64.b64decode(data, validate=True)
        except binascii.Error as exc:
            raise OcmfError("SD is not base64") from exc
    else:
        raise OcmfError(f"SE {encoding[:20]!r} is not hex or base64")
    if not raw or len(raw) > MAX_SIGNATURE_BYTES:
        raise OcmfError(f"SD must be 1..{MAX_SIGNATURE_BYTES} bytes")
    return encoding, raw


def parse(text: object) -> Document:
    """Parse an OCMF document; raises OcmfError naming the first problem."""
    if not isinstance(text, str):
        raise OcmfError("an OCMF document is a string")
    if len(text) > MAX_DOCUMENT_CHARS:
        raise OcmfError(f"document is {len(text)} characters, at most {MAX_DOCUMENT_CHARS} allowed")
    if not text.startswith(HEADER + "|"):
        raise OcmfError("document must start with 'OCMF|'")
    cut = text.rfind("|")
    if cut <= len(HEADER):
        raise OcmfError("document must be OCMF|{payload}|{signature}")
    payload_text, signature_text = text[len(HEADER) + 1:cut], text[cut + 1:]
    payload = _load_object(payload_text, "payload")
    sig = _load_object(signature_text, "signature")
    match = _PAGINATION.fullmatch(_text(payload, "PG", required=True))
    if match is None or int(match.group(2)) > MAX_PAGINATION:
        raise OcmfError("PG must be T or F followed by a counter 0..2^32-1")
    identified = payload.get("IS", False)
    if type(identified) is not bool:
        raise OcmfError("IS must be true or false")
    flags = payload.get("IF", [])
    if not isinstance(flags, list) or len(flags) > 4 or not all(isinstance(f, str) and len(f) <= 64 for f in flags):
        raise OcmfError("IF must be a list of at most 4 short strings")
    version = payload.get("FV", "")
    if isinstance(version, Decimal):
        version = str(version)  # some meters send FV as a number
    if not isinstance(version, str) or len(version) > 16:
        raise OcmfError("FV must be a short string")
    algorithm = _text(sig, "SA", default=DEFAULT_ALGORITHM)
    encoding, signature = _signature_bytes(sig)
    return Document(
        signed_bytes=payload_text.encode("utf-8"),
        version=version,
        gateway_id=_text(payload, "GI"),
        gateway_serial=_text(payload, "GS"),
        meter_vendor=_text(payload, "MV"),
        meter_model=_text(payload, "MM"),
        meter_serial=_text(payload, "MS"),
        pagination_kind=match.group(1),
        pagination=int(match.group(2)),
        identified=identified,
        id_level=_text(payload, "IL"),
        id_flags=tuple(flags),
        id_type=_text(payload, "IT"),
        id_data=_text(payload, "ID"),
        charge_point_type=_text(payload, "CT"),
        charge_point_id=_text(payload, "CI"),
        readings=_readings(payload),
        algorithm=algorithm,
        encoding=encoding,
        signature=signature,
    )


def _algorithm(name: str) -> tuple[type[ec.EllipticCurve], type[hashes.HashAlgorithm]]:
    parts = name.split("-")
    if len(parts) != 3 or parts[0] != "ECDSA" or parts[1] not in _CURVES or parts[2] not in _HASHES:
        raise OcmfError(f"signature algorithm {name[:40]!r} is not supported (ECDSA-<secp256r1|secp384r1|"
                        "brainpool256r1|brainpool384r1>-<SHA256|SHA512>)")
    return _CURVES[parts[1]], _HASHES[parts[2]]


_KEY_CACHE: OrderedDict[bytes, ec.EllipticCurvePublicKey] = OrderedDict()
_KEY_CACHE_MAX = 1_024


def load_public_key(der: bytes) -> ec.EllipticCurvePublicKey:
    """An EC public key from DER SubjectPublicKeyInfo bytes (cached, at most 1,024 keys)."""
    cached = _KEY_CACHE.get(der)
    if cached is not None:
        _KEY_CACHE.move_to_end(der)
        return cached
    if not der or len(der) > MAX_PUBLIC_KEY_BYTES:
        raise OcmfError(f"public key must be 1..{MAX_PUBLIC_KEY_BYTES} bytes of DER SubjectPublicKeyInfo")
    try:
        key = load_der_public_key(der)
    except (ValueError, TypeError) as exc:
        raise OcmfError("public key is not DER SubjectPublicKeyInfo") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise OcmfError("public key is not an elliptic-curve key")
    _KEY_CACHE[der] = key
    while len(_KEY_CACHE) > _KEY_CACHE_MAX:
        _KEY_CACHE.popitem(last=False)
    return key


def public_key_from_hex(text: str) -> bytes:
    """DER bytes from the hex form (spaces and a 0x prefix tolerated) a meter's label shows."""
    compact = text.strip().removeprefix("0x").replace(" ", "")
    if _HEX.fullmatch(compact) is None:
        raise OcmfError("public key must be hex")
    return bytes.fromhex(compact)


def verify(document: Document, public_key_der: bytes) -> None:
    """Check the document's signature with this key; raises OcmfError if it does not verify."""
    curve, digest = _algorithm(document.algorithm)
    key = load_public_key(public_key_der)
    if key.curve.name != curve().name:
        raise OcmfError(f"key is on {key.curve.name}, the document says {document.algorithm}")
    try:
        key.verify(document.signature, document.signed_bytes, ec.ECDSA(digest()))
    except InvalidSignature as exc:
        raise OcmfError("signature does not verify with the registered meter key") from exc


def parse_and_verify(text: object, public_key_der: bytes) -> Document:
    """`parse` then `verify`."""
    document = parse(text)
    verify(document, public_key_der)
    return document


def sign(payload_json: str, private_key: ec.EllipticCurvePrivateKey, algorithm: str = DEFAULT_ALGORITHM) -> str:
    """An OCMF document over `payload_json` (exact text) signed with `private_key` (chargers, tests)."""
    curve, digest = _algorithm(algorithm)
    if private_key.curve.name != curve().name:
        raise OcmfError(f"private key is on {private_key.curve.name}, not for {algorithm}")
    signature = private_key.sign(payload_json.encode("utf-8"), ec.ECDSA(digest()))
    sig = json.dumps({"SA": algorithm, "SD": signature.hex().upper()}, separators=(",", ":"))
    text = f"{HEADER}|{payload_json}|{sig}"
    parse(text)  # what we sign must be something we accept
    return text


def payload_json(
    *, meter_serial: str, pagination: int, readings: list[tuple[int, str, int]], id_data: str = "",
    id_type: str = "ISO14443", charge_point_id: str = "", gateway_id: str = "DEVSEN", vendor: str = "DEVSEN",
    model: str = "demo-meter",
) -> str:
    """The payload text of a transaction document: `readings` are (time_ms, TX code, Wh)."""
    fields: dict[str, Any] = {
        "FV": "1.0", "GI": gateway_id, "GS": meter_serial, "GV": "1.0", "PG": f"T{pagination}",
        "MV": vendor, "MM": model, "MS": meter_serial, "IS": bool(id_data), "IT": id_type if id_data else "NONE",
        "ID": id_data, "CT": "CBIDC" if charge_point_id else "", "CI": charge_point_id,
        "RD": [
            {"TM": format_time(ms), "TX": tx, "RV": wh, "RI": "1-0:1.8.0", "RU": "Wh", "ST": "G"}
            for ms, tx, wh in readings
        ],
    }
    return json.dumps(fields, separators=(",", ":"))
