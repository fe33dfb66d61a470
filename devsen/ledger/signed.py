"""Charger-signed meter values (OCMF) in the ledger: which signed readings a session accepts.

A charger sends OCMF documents (ocpp_adapter/ocmf.py) in OCPP 1.6 `sampledValue`s with
`format: "SignedData"` (MeterValues, StopTransaction.transactionData) and in OCPP 2.0.1
`signedMeterValue.signedMeterData` (TransactionEvent, MeterValues). Every document is
checked at the block's agreed Ethereum block, all-or-nothing per document:
- signature: verifies with the device's on-chain `chargerPublicKey` (DER SubjectPublicKeyInfo);
- meter: the serial (MS) is the session's first signed serial; the pagination counter is above
  the one of the session's last document and above every document this meter had accepted
  before (so a document from another session, even of the same meter, is refused). Those
  floors live on the device record, in the ledger's LRU of devices; when a record with floors
  is evicted, the ledger keeps only the latest block time at which an evicted floor changed
  (`paginations_forgotten_ms`), and a meter without a remembered floor has its documents
  refused unless every reading is later than that time plus the clock skew (any document
  accepted before the eviction has a reading no later than that: it cannot be replayed);
- transaction binding: the session is bound to an escrow session; an identification (ID), if
  given, is the session's idTag (or token); every reading lies between the escrow's opening
  and the block time (5 minutes' clock skew allowed), in time order; exactly one begin
  reading (TX=B) first, nothing after an end reading (TX=E/L/R/A); the import register never
  decreases.
A document that fails is ignored with an anomaly naming why. A device whose on-chain policy
`requireSignedMeter` was set at binding settles only on signed readings: energy = last
accepted signed reading - signed begin reading, minutes from their signed times (no signed
stop: the last accepted one; no signed begin: nothing). Verification is bounded: at most
MAX_SIGNED_PER_EVENT documents per event and MAX_SIGNED_PER_BLOCK per block are checked.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import replace
from typing import TYPE_CHECKING

from devsen.ledger.kinds import (
    BAD_SIGNATURE,
    BAD_SIGNED_METER,
    METER_BACKWARDS,
    METER_SERIAL_MISMATCH,
    PAGINATION_NOT_INCREASING,
    READING_NOT_BOUND,
    SIGNED_BUDGET,
)
from devsen.ledger.parse import MAX_METER_WH
from devsen.ledger.state import Session
from ocpp_adapter import ocmf
from primitives.hashing import id_tag_hash

if TYPE_CHECKING:
    from devsen.ledger.ledger import Ledger, _Step

MAX_SIGNED_PER_EVENT = 8
MAX_SIGNED_PER_BLOCK = 2_048  # ~0.3 ms each (P-256): < 1 s of verification per block
MAX_SAMPLES_SCANNED = 256
CLOCK_SKEW_MS = 300_000
MAX_METERS_REMEMBERED = 64  # per device: one meter per connector at most


def signed_documents(meter_values: object) -> list[object]:
    """The OCMF texts in a 1.6 or 2.0.1 meterValue list (anything else is skipped, never raised).

    1.6: `sampledValue.value` where `format` is "SignedData". 2.0.1: `signedMeterValue` whose
    `encodingMethod` is OCMF (or absent) and whose `signedMeterData` is the document, as text
    or base64 of it. Entries that are not of these shapes are returned as-is for the caller to
    refuse (so a garbage signed value is an anomaly, not silence).
    """
    found: list[object] = []
    if not isinstance(meter_values, list):
        return found
    seen = 0
    for meter_value in meter_values:
        samples = meter_value.get("sampledValue") if isinstance(meter_value, dict) else None
        if not isinstance(samples, list):
            continue
        for sample in samples:
            seen += 1
            if seen > MAX_SAMPLES_SCANNED:
                return found
            if not isinstance(sample, dict):
                continue
            if sample.get("format") == "SignedData":
                found.append(sample.get("value"))
            signed = sample.get("signedMeterValue")
            if signed is not None:
                found.append(_v201_document(signed))
    return found


def _v201_document(signed: object) -> object:
    if not isinstance(signed, dict):
        return signed
    method = signed.get("encodingMethod", "OCMF")
    data = signed.get("signedMeterData")
    if not isinstance(method, str) or method.upper() != "OCMF" or not isinstance(data, str):
        return signed
    if data.startswith(ocmf.HEADER + "|") or len(data) > 2 * ocmf.MAX_DOCUMENT_CHARS:
        return data
    try:
        return base64.b64decode(data, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return data


def apply_signed(ledger: Ledger, step: _Step, key: tuple[str, str], documents: list[object]) -> None:
    """Check each document against the session `key` and accept it or record why not."""
    for index, text in enumerate(documents):
        if index >= MAX_SIGNED_PER_EVENT or ledger._signed_in_block >= MAX_SIGNED_PER_BLOCK:
            ledger._anomaly(step, SIGNED_BUDGET, f"{len(documents) - index} signed documents not checked "
                            f"(at most {MAX_SIGNED_PER_EVENT} per event, {MAX_SIGNED_PER_BLOCK} per block)")
            return
        ledger._signed_in_block += 1
        session = ledger._sessions.get(key)
        if session is None:
            return
        problem = _accept(ledger, step, session, text)
        if problem is not None:
            ledger._anomaly(step, problem[0], f"signed reading ignored: {problem[1]}")


def _accept(ledger: Ledger, step: _Step, session: Session, text: object) -> tuple[str, str] | None:
    """Accept one document into the session (and the device's meter record); else (kind, why)."""
    if not session.bound:
        return READING_NOT_BOUND, "the transaction is not authorized (no escrow session bound)"
    device = step.chain.device(session.charger_id)
    if device is None:
        return BAD_SIGNED_METER, "device not registered"
    if not device.meter_public_key:
        return BAD_SIGNED_METER, "no chargerPublicKey on chain for this device (set it with devsen wallet meter-key)"
    try:
        document = ocmf.parse(text)
    except ocmf.OcmfError as exc:
        return BAD_SIGNED_METER, str(exc)
    try:
        ocmf.verify(document, device.meter_public_key)
    except ocmf.OcmfError as exc:
        return BAD_SIGNATURE, str(exc)
    except Exception as exc:  # noqa: BLE001 - a key the crypto library cannot use: same refusal everywhere
        return BAD_SIGNATURE, f"meter key unusable: {type(exc).__name__}"
    serial = document.meter_serial
    if session.signed_serial and serial != session.signed_serial:
        return METER_SERIAL_MISMATCH, f"meter {serial[:32]!r}, the session's is {session.signed_serial[:32]!r}"
    high_water = dict(ledger._device_record(session.charger_id).meter_paginations).get(serial, -1)
    floor = max(session.signed_pagination, high_water)
    if document.pagination <= floor:
        return PAGINATION_NOT_INCREASING, f"pagination {document.pagination} not above {floor} (replayed document)"
    forgotten = ledger._c.paginations_forgotten_ms
    if high_water < 0 and forgotten and any(r.time_ms <= forgotten + CLOCK_SKEW_MS for r in document.readings):
        # this meter's floor may have been evicted with its device record: a reading no later than
        # the newest forgotten floor could have been accepted before, so it is refused
        return PAGINATION_NOT_INCREASING, (f"reading time not after {forgotten + CLOCK_SKEW_MS} ms, when a "
                                           "forgotten pagination floor may cover it (replayed document)")
    if document.id_data and not _same_identity(document.id_data, session.id_tag_hash):
        return READING_NOT_BOUND, f"identification {document.id_data[:24]!r} is not this transaction's idTag"
    readings = document.import_readings()
    if not readings:
        return BAD_SIGNED_METER, "no import energy reading (Wh/kWh, OBIS 1.8)"
    updated = session
    low = session.escrow_opened_at_s * 1000 - CLOCK_SKEW_MS
    high = ledger._c.block_ms + CLOCK_SKEW_MS
    for reading in readings:
        wh = reading.wh()
        if wh is None or wh > MAX_METER_WH:
            return BAD_SIGNED_METER, "reading out of range"
        if not low <= reading.time_ms <= high:
            return READING_NOT_BOUND, f"reading time {reading.time_ms} outside this session ({low}..{high})"
        if updated.signed_stopped:
            return READING_NOT_BOUND, "reading after the transaction's signed end reading"
        if reading.tx == "B":
            if updated.signed_start_wh is not None:
                return READING_NOT_BOUND, "a second begin reading"
            updated = replace(updated, signed_start_wh=wh, signed_start_ms=reading.time_ms,
                              signed_start_event=step.event.event_id)
        elif updated.signed_start_wh is None:
            return READING_NOT_BOUND, f"reading TX={reading.tx or '-'} before the signed begin reading"
        last = updated.signed_last_wh
        if last is not None and wh < last:
            return METER_BACKWARDS, f"signed register {wh} Wh below {last} Wh"
        if last is not None and reading.time_ms < updated.signed_last_ms:
            return READING_NOT_BOUND, "reading earlier than the previous signed reading"
        updated = replace(updated, signed_last_wh=wh, signed_last_ms=reading.time_ms,
                          signed_last_event=step.event.event_id, signed_stopped=reading.tx in ocmf.END_CODES)
    updated = replace(updated, signed_serial=serial, signed_pagination=document.pagination)
    ledger._sessions.put((session.charger_id, session.tx_ref), updated)
    _remember_pagination(ledger, step, serial, document.pagination)
    return None


def _same_identity(id_data: str, tag_hash: bytes) -> bool:
    """Whether the OCMF identification is the idTag whose hash the session holds (hex case-insensitive)."""
    return any(id_tag_hash(v) == tag_hash for v in {id_data, id_data.upper(), id_data.lower()})


def _remember_pagination(ledger: Ledger, step: _Step, serial: str, pagination: int) -> None:
    record = ledger._device_record(step.event.charger_id)
    pairs = [(s, p) for s, p in record.meter_paginations if s != serial]
    pairs.append((serial[: ocmf.MAX_TEXT], pagination))
    ledger._update_device(step, meter_paginations=tuple(pairs[-MAX_METERS_REMEMBERED:]), paginations_ms=ledger._c.block_ms)


def settlement_terms(session: Session) -> tuple[int | None, int, int, str]:
    """For a signed-meter session: (energy Wh or None, begin ms, end ms, what is missing or "")."""
    start, last = session.signed_start_wh, session.signed_last_wh
    if start is None or last is None:
        return None, 0, 0, "no signed begin reading: nothing to settle on"
    note = "" if session.signed_stopped else "no signed end reading: settled at the last signed reading"
    return last - start, session.signed_start_ms, session.signed_last_ms, note

