"""The ledger's per-action handlers: one function per OCPP action and version.

Each handler takes the ledger, the event's working context and its payload, and returns the
CALLRESULT payload. It reads and changes the ledger only through the ledger's helpers
(devices, sessions, authorization) and raises only `MalformedPayload`, which the driver
(`Ledger._apply_event` in ledger.py) turns into a CALLERROR. `HANDLERS` maps
(OCPP version, action) to its handler; an action absent from it is answered NotSupported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from devsen.ledger.kinds import (
    BAD_METER,
    CAPACITY,
    CONNECTOR_OUT_OF_RANGE,
    DUPLICATE_TRANSACTION_ID,
    MAX_TRANSACTION_ID,
)
from devsen.ledger.parse import (
    MAX_METER_WH,
    MAX_TIMESTAMP_MS,
    MalformedPayload,
    format_timestamp_ms,
    get_int,
    get_list,
    get_obj,
    get_str,
    get_tag_hash,
    register_wh_v16,
    register_wh_v201,
    req_int,
    req_str,
)
from devsen.ledger.reservations import RESERVED_STATUS, reservation_token
from devsen.ledger.signed import apply_signed, signed_documents
from devsen.ledger.state import ClosedTransaction, ConnectorStatus, Session

if TYPE_CHECKING:
    from devsen.ledger.ledger import Ledger, _Step

MAX_CONNECTORS_PER_EVSE = 8  # 2.0.1 connector statuses kept per EVSE
MAX_TEXT_KEPT = 50  # longest free text (vendor, model, event type...) kept in state

Handler = Callable[["Ledger", "_Step", dict[str, Any]], dict[str, Any]]


# ----------------------------------------------------------------- both versions


def _heartbeat(ledger: Ledger, step: _Step, payload: dict[str, Any]) -> dict[str, Any]:
    device = step.chain.device(step.event.charger_id)
    if device is not None and device.active:
        ledger._update_device(step, last_heartbeat_ms=ledger._c.block_ms)
    return {"currentTime": format_timestamp_ms(ledger._c.block_ms)}


def _boot(ledger: Ledger, step: _Step, payload: dict[str, Any]) -> dict[str, Any]:
    if step.event.ocpp_version == "1.6":
        vendor = req_str(payload, "chargePointVendor", max_len=MAX_TEXT_KEPT)
        model = req_str(payload, "chargePointModel", max_len=MAX_TEXT_KEPT)
        firmware = get_str(payload, "firmwareVersion", max_len=MAX_TEXT_KEPT, required=False)
    else:
        station = get_obj(payload, "chargingStation", required=True)
        assert station is not None
        vendor = req_str(station, "vendorName", max_len=MAX_TEXT_KEPT)
        model = req_str(station, "model", max_len=MAX_TEXT_KEPT)
        firmware = get_str(station, "firmwareVersion", max_len=MAX_TEXT_KEPT, required=False)
    now = format_timestamp_ms(ledger._c.block_ms)
    if ledger._registered(step) is None:
        return {"status": "Rejected", "currentTime": now, "interval": ledger.params.boot_retry_interval_s}
    ledger._update_device(
        step,
        boot_status="Accepted",
        vendor=vendor,
        model=model,
        firmware_version=firmware or "",
        last_boot_ms=ledger._c.block_ms,
    )
    return {"status": "Accepted", "currentTime": now, "interval": ledger.params.heartbeat_interval_s}


def _status(ledger: Ledger, step: _Step, payload: dict[str, Any]) -> dict[str, Any]:
    if step.event.ocpp_version == "1.6":
        number = req_int(payload, "connectorId")
        status = req_str(payload, "status", max_len=MAX_TEXT_KEPT)
        error_code = req_str(payload, "errorCode", max_len=MAX_TEXT_KEPT)
        label, sub = str(number), 0
    else:
        number = req_int(payload, "evseId")
        sub = req_int(payload, "connectorId")
        status = req_str(payload, "connectorStatus", max_len=MAX_TEXT_KEPT)
        error_code = ""
        label = f"{number}/{sub}"
    device = ledger._registered(step)
    if device is None:
        return {}
    if not 0 <= number <= device.connector_count or not 0 <= sub <= MAX_CONNECTORS_PER_EVSE:
        ledger._anomaly(step, CONNECTOR_OUT_OF_RANGE, f"connector {label} of {device.connector_count}")
        return {}
    entry = ConnectorStatus(label, status, error_code, ledger._c.block_ms)
    others = [c for c in ledger._device_record(step.event.charger_id).connectors if c.connector != label]
    connectors = tuple(sorted([*others, entry], key=lambda c: c.connector))
    ledger._update_device(step, connectors=connectors)
    return {}


def _authorize(ledger: Ledger, step: _Step, payload: dict[str, Any]) -> dict[str, Any]:
    tag = _id_tag(ledger, step, payload)
    assert tag is not None
    status, expiry_s = ledger._tag_status(step, tag)
    device = ledger._registered(step)
    if device is None:
        status = "Invalid"
    elif status == "Accepted" and ledger._all_reserved_for_others(step, device, tag):
        status = RESERVED_STATUS
    return _tag_info(ledger, step, status, expiry_s, tag=tag)


def _id_tag(ledger: Ledger, step: _Step, payload: dict[str, Any], *, required: bool = True) -> bytes | None:
    """The hash of the idTag (1.6) or idToken.idToken (2.0.1) of a payload: events carry
    idTags only in hashed form (ocpp_adapter/events.py), anything else is malformed."""
    if step.event.ocpp_version == "1.6":
        return get_tag_hash(payload, "idTag", required=required)
    token = get_obj(payload, "idToken", required=required)
    return None if token is None else get_tag_hash(token, "idToken")


def _tag_info(ledger: Ledger, step: _Step, status: str, expiry_s: int = 0, *,
              tag: bytes | None = None) -> dict[str, Any]:
    """{"idTagInfo": ...} (1.6) or {"idTokenInfo": ...} (2.0.1).

    An Accepted `tag` (its hash) with a driver's group at this charger (`Ledger._driver_group`:
    a session token, or the card of an open escrow session or reservation here) gets the
    group's token as parentIdTag (1.6) / groupIdToken (2.0.1): the charger then lets the
    card stop a transaction its session token started, and the token one the card started."""
    if expiry_s * 1000 > MAX_TIMESTAMP_MS:
        expiry_s = 0  # beyond year 9999: as good as never
    group = ledger._driver_group(step, tag) if tag is not None and status == "Accepted" else None
    token = None if group is None else reservation_token(group)
    if step.event.ocpp_version == "1.6":
        info: dict[str, Any] = {"status": status}
        if expiry_s:
            info["expiryDate"] = format_timestamp_ms(expiry_s * 1000)
        if token is not None:
            info["parentIdTag"] = token
        return {"idTagInfo": info}
    info = {"status": status}
    if expiry_s:
        info["cacheExpiryDateTime"] = format_timestamp_ms(expiry_s * 1000)
    if token is not None:
        info["groupIdToken"] = {"idToken": token, "type": "Central"}
    return {"idTokenInfo": info}


def _data_transfer(ledger: Ledger, step: _Step, payload: dict[str, Any]) -> dict[str, Any]:
    vendor = req_str(payload, "vendorId", max_len=255)
    if ledger._registered(step) is not None:
        record = ledger._device_record(step.event.charger_id)
        ledger._update_device(step, data_transfers=record.data_transfers + 1)
    accepted = vendor in ledger.params.data_transfer_vendor_ids
    return {"status": "Accepted" if accepted else "UnknownVendorId"}


def _meter_values(ledger: Ledger, step: _Step, payload: dict[str, Any]) -> dict[str, Any]:
    if step.event.ocpp_version == "1.6":
        connector = req_int(payload, "connectorId")
        tx = get_int(payload, "transactionId", required=False)
        wh = register_wh_v16(get_list(payload, "meterValue"))
    else:
        connector = req_int(payload, "evseId")
        tx = None
        wh = register_wh_v201(get_list(payload, "meterValue"))
    if ledger._registered(step) is None:
        return {}
    charger = step.event.charger_id
    tx_ref = str(tx) if tx is not None else ledger._by_connector.get((charger, connector))
    if tx_ref is None:
        return {}  # readings outside a transaction (e.g. clock-aligned main meter) are not billed
    key = (charger, tx_ref)
    if not ledger._is_open(step, key):
        ledger._transaction_unknown(step, key)
        return {}
    ledger._record_meter(step, key, wh)
    apply_signed(ledger, step, key, signed_documents(payload.get("meterValue")))
    return {}


# ----------------------------------------------------------------- OCPP 1.6 transactions


def _start_transaction(ledger: Ledger, step: _Step, payload: dict[str, Any]) -> dict[str, Any]:
    connector = req_int(payload, "connectorId")
    tag = get_tag_hash(payload, "idTag")
    assert tag is not None
    meter_start = req_int(payload, "meterStart")
    start_text = req_str(payload, "timestamp", max_len=64)
    assert ledger._c.next_transaction_id <= MAX_TRANSACTION_ID
    tx = ledger._c.next_transaction_id
    ledger._c.next_transaction_id += 1
    key = (step.event.charger_id, str(tx))
    if key in ledger._sessions or key in ledger._closed:  # the charger used this id under 2.0.1
        ledger._anomaly(step, DUPLICATE_TRANSACTION_ID, f"transaction {tx} already exists")
        return {"idTagInfo": {"status": "Invalid"}, "transactionId": tx}
    status, expiry_s = _open_transaction(ledger, step, key, connector, tag, meter_start, start_text)
    if status != "Accepted":
        ledger._remember_closed(key, ClosedTransaction(ledger._next_seq(), "rejected"))
    reply = _tag_info(ledger, step, status, expiry_s, tag=tag)
    reply["transactionId"] = tx
    return reply


def _open_transaction(
    ledger: Ledger, step: _Step, key: tuple[str, str], connector: int, tag: bytes, meter_wh: int, start_text: str
) -> tuple[str, int]:
    """Open (and, if paid for, bind) a session; the idTag status to answer, and its expiry."""
    device = ledger._registered(step)
    if device is None:
        return "Invalid", 0
    if not 1 <= connector <= device.connector_count:
        ledger._anomaly(step, CONNECTOR_OUT_OF_RANGE, f"connector {connector} of {device.connector_count}")
        return "Invalid", 0
    if not 0 <= meter_wh <= MAX_METER_WH:
        ledger._anomaly(step, BAD_METER, f"meter reading {meter_wh} Wh out of range")
        return "Invalid", 0
    status, expiry_s = ledger._tag_status(step, tag, connector)
    if status != "Accepted":
        return status, expiry_s
    if ledger._reservation_for_other(step, connector, tag) is not None:
        return RESERVED_STATUS, expiry_s
    if ledger._connector_busy(step, connector):
        return "ConcurrentTx", expiry_s
    problem = ledger._capacity_problem()
    if problem is not None:
        ledger._anomaly(step, CAPACITY, problem)
        return "Blocked", expiry_s
    escrow = ledger._find_escrow(step, connector, tag)
    if escrow is None:
        return "Blocked", expiry_s  # no prepayment: 1.6 has no NoCredit status
    ledger._open_session(
        Session(
            key[0], key[1], "1.6", connector, ledger._next_seq(), ledger._c.block_ms,
            meter_start_wh=meter_wh, meter_last_wh=meter_wh, last_block_ms=ledger._c.block_ms,
        )
    )
    ledger._consume_reservation(step, connector, tag)
    ledger._bind(key, escrow, device, tag, ledger._event_time_ms(step, start_text))
    return "Accepted", expiry_s


def _stop_transaction(ledger: Ledger, step: _Step, payload: dict[str, Any]) -> dict[str, Any]:
    tx = req_int(payload, "transactionId")
    meter_stop = req_int(payload, "meterStop")
    stop_text = req_str(payload, "timestamp", max_len=64)
    tag = get_tag_hash(payload, "idTag", required=False)
    reply = {} if tag is None else _tag_info(ledger, step, *ledger._tag_status(step, tag), tag=tag)
    key = (step.event.charger_id, str(tx))
    if not ledger._is_open(step, key):
        ledger._transaction_unknown(step, key)
        return reply
    stop_wh: int | None = meter_stop
    if not 0 <= meter_stop <= MAX_METER_WH:
        ledger._anomaly(step, BAD_METER, f"meterStop {meter_stop} Wh out of range")
        stop_wh = None
    apply_signed(ledger, step, key, signed_documents(payload.get("transactionData")))
    ledger._close(step, key, stop_wh, ledger._event_time_ms(step, stop_text))
    return reply


# ----------------------------------------------------------------- OCPP 2.0.1 transactions


def _transaction_event(ledger: Ledger, step: _Step, payload: dict[str, Any]) -> dict[str, Any]:
    event_type = req_str(payload, "eventType", max_len=20)
    time_text = req_str(payload, "timestamp", max_len=64)
    info = get_obj(payload, "transactionInfo", required=True)
    assert info is not None
    tx_ref = req_str(info, "transactionId", max_len=36)
    evse = get_obj(payload, "evse")
    evse_id = None if evse is None else req_int(evse, "id")
    tag = _id_tag(ledger, step, payload, required=False)
    wh = register_wh_v201(get_list(payload, "meterValue"))
    if event_type not in ("Started", "Updated", "Ended"):
        raise MalformedPayload("eventType must be Started, Updated or Ended")
    key = (step.event.charger_id, tx_ref)
    if event_type == "Started":
        return _transaction_started(ledger, step, key, evse_id, tag, wh, time_text, payload.get("meterValue"))
    if not ledger._is_open(step, key):
        ledger._transaction_unknown(step, key)
        return {} if tag is None else _tag_info(ledger, step, "Invalid")
    ledger._record_meter(step, key, wh)
    reply: dict[str, Any] = {}
    if tag is not None:
        reply = _tag_info(ledger, step, _authorize_session(ledger, step, key, tag, time_text), tag=tag)
    apply_signed(ledger, step, key, signed_documents(payload.get("meterValue")))
    if event_type == "Ended":
        session = ledger._sessions.get(key)
        assert session is not None
        ledger._close(step, key, session.meter_last_wh, ledger._event_time_ms(step, time_text))
    return reply


def _transaction_started(
    ledger: Ledger, step: _Step, key: tuple[str, str], evse_id: int | None, tag: bytes | None, wh: int | None, time_text: str,
    meter_values: object = None,
) -> dict[str, Any]:
    refused = {} if tag is None else _tag_info(ledger, step, "Invalid")
    if key in ledger._sessions or key in ledger._closed:
        ledger._anomaly(step, DUPLICATE_TRANSACTION_ID, f"transaction {key[1]} already started")
        return refused
    device = ledger._registered(step)
    if device is None:
        return refused
    if evse_id is None or not 1 <= evse_id <= device.connector_count:
        ledger._anomaly(step, CONNECTOR_OUT_OF_RANGE, f"evse {evse_id} of {device.connector_count}")
        return refused
    if ledger._connector_busy(step, evse_id):
        return {} if tag is None else _tag_info(ledger, step, "ConcurrentTx")
    problem = ledger._capacity_problem()
    if problem is not None:
        ledger._anomaly(step, CAPACITY, problem)
        return {} if tag is None else _tag_info(ledger, step, "Blocked")
    ledger._open_session(
        Session(
            key[0], key[1], "2.0.1", evse_id, ledger._next_seq(), ledger._c.block_ms,
            meter_last_wh=wh, last_block_ms=ledger._c.block_ms,
        )
    )
    if tag is None:
        return {}
    reply = _tag_info(ledger, step, _authorize_session(ledger, step, key, tag, time_text), tag=tag)
    apply_signed(ledger, step, key, signed_documents(meter_values))
    return reply


def _authorize_session(ledger: Ledger, step: _Step, key: tuple[str, str], tag_hash: bytes, time_text: str) -> str:
    """Authorize an open 2.0.1 session with an idToken (its hash), binding its escrow; the status to answer."""
    session = ledger._sessions.get(key)
    assert session is not None
    status, _ = ledger._tag_status(step, tag_hash, session.connector_id)
    if session.bound:
        return status if session.id_tag_hash != tag_hash else "Accepted"
    if status != "Accepted":
        return status
    if ledger._reservation_for_other(step, session.connector_id, tag_hash) is not None:
        return RESERVED_STATUS
    device = step.chain.device(key[0])
    escrow = ledger._find_escrow(step, session.connector_id, tag_hash)
    if device is None or escrow is None:
        return "NoCredit"
    ledger._consume_reservation(step, session.connector_id, tag_hash)
    ledger._bind(key, escrow, device, tag_hash, ledger._event_time_ms(step, time_text))
    return "Accepted"


def _notification(field_name: str, payload_key: str | None) -> Handler:
    """A handler that records a status text (or bumps a counter) on the device record and replies {}."""

    def handle(ledger: Ledger, step: _Step, payload: dict[str, Any]) -> dict[str, Any]:
        text = "" if payload_key is None else req_str(payload, payload_key, max_len=1000)[:MAX_TEXT_KEPT]
        if ledger._registered(step) is not None:
            record = ledger._device_record(step.event.charger_id)
            current = getattr(record, field_name)
            changes: dict[str, Any] = {field_name: current + 1 if isinstance(current, int) else text}
            if field_name == "security_events":
                changes["last_security_event"] = text
            ledger._update_device(step, **changes)
        return {}

    return handle


HANDLERS: dict[tuple[str, str], Handler] = {}
for _version in ("1.6", "2.0.1"):
    HANDLERS[(_version, "BootNotification")] = _boot
    HANDLERS[(_version, "Heartbeat")] = _heartbeat
    HANDLERS[(_version, "StatusNotification")] = _status
    HANDLERS[(_version, "Authorize")] = _authorize
    HANDLERS[(_version, "MeterValues")] = _meter_values
    HANDLERS[(_version, "DataTransfer")] = _data_transfer
    HANDLERS[(_version, "FirmwareStatusNotification")] = _notification("firmware_status", "status")
    HANDLERS[(_version, "SecurityEventNotification")] = _notification("security_events", "type")
    HANDLERS[(_version, "LogStatusNotification")] = _notification("log_status", "status")
HANDLERS[("1.6", "StartTransaction")] = _start_transaction
HANDLERS[("1.6", "StopTransaction")] = _stop_transaction
HANDLERS[("1.6", "DiagnosticsStatusNotification")] = _notification("diagnostics_status", "status")
HANDLERS[("1.6", "SignedFirmwareStatusNotification")] = _notification("firmware_status", "status")
HANDLERS[("2.0.1", "TransactionEvent")] = _transaction_event
HANDLERS[("2.0.1", "NotifyReport")] = _notification("reports", None)
HANDLERS[("2.0.1", "NotifyEvent")] = _notification("notify_events", None)
