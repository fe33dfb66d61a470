"""A small world for ledger tests: one chain snapshot, event builders, a block driver, reply checks."""

from __future__ import annotations

import itertools
from typing import Any

from ocpp.messages import get_validator

from devsen.ledger import (
    BlockContext,
    BlockOutcome,
    DeviceInfo,
    EscrowSession,
    IdTagInfo,
    Ledger,
    LedgerParams,
    StaticChainView,
    Tariff,
    id_tag_hash,
)
from devsen.ledger.reservations import reservation_token
from ocpp_adapter.events import ChargerEvent, tag_hash_of

T0_MS = 1_790_000_000_000  # 2026-09-21, block time of the first block
BLOCK_MS = 1_000
CHARGER = "CP-1"
CHARGER_201 = "CS-2"
TARIFF = Tariff(price_per_kwh=2_000, per_minute_fee=5)
DEPOSIT = 100_000
ESCROW_1 = b"\x01" * 32
ESCROW_2 = b"\x02" * 32
ESCROW_201 = b"\x03" * 32
# the driver's group the ledger names for TAG-OK (and its session tokens) at a charger where it has escrow
DRIVER_GROUP = reservation_token(id_tag_hash("TAG-OK"))
ACCEPTED_16 = {"status": "Accepted", "parentIdTag": DRIVER_GROUP}
ACCEPTED_201 = {"status": "Accepted", "groupIdToken": {"idToken": DRIVER_GROUP, "type": "Central"}}
_ids = itertools.count(1)


def make_chain() -> StaticChainView:
    """CP-1 (1.6, 2 connectors) and CS-2 (2.0.1, 2 EVSEs) registered; OFF-1 registered but inactive."""
    devices = {
        CHARGER: DeviceInfo(b"\x11" * 32, "0x" + "aa" * 20, 2, TARIFF),
        CHARGER_201: DeviceInfo(b"\x22" * 32, "0x" + "bb" * 20, 2, TARIFF),
        "OFF-1": DeviceInfo(b"\x33" * 32, "0x" + "cc" * 20, 2, TARIFF, active=False),
    }
    tags = {
        "TAG-OK": IdTagInfo("0x" + "dd" * 20),
        "TAG-NOPAY": IdTagInfo("0x" + "dd" * 20),
        "TAG-EXP": IdTagInfo("0x" + "dd" * 20, expiry_s=T0_MS // 1000 - 10),
        "TAG-REV": IdTagInfo("0x" + "dd" * 20, revoked=True),
        "TAG-LATER": IdTagInfo("0x" + "dd" * 20, expiry_s=T0_MS // 1000 + 86_400),
    }
    opened = T0_MS // 1000 - 3_600
    sessions = [
        EscrowSession(ESCROW_1, "0x" + "dd" * 20, CHARGER, 1, id_tag_hash("TAG-OK"), DEPOSIT, opened),
        EscrowSession(ESCROW_2, "0x" + "dd" * 20, CHARGER, 2, id_tag_hash("TAG-OK"), DEPOSIT, opened),
        EscrowSession(ESCROW_201, "0x" + "dd" * 20, CHARGER_201, 1, id_tag_hash("TAG-OK"), DEPOSIT, opened),
    ]
    return StaticChainView(devices, tags, sessions)


def ev(action: str, payload: dict[str, Any], *, version: str = "1.6", charger: str | None = None,
       message_id: str | None = None, ingress: str = "0xa1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1", raw: bool = False) -> ChargerEvent:
    """A charger event with a fresh message id unless one is given.

    The payload is checked against the request schema, as the OCPP adapter would, unless `raw`
    (payloads only a faulty proposer could put in a block) or taken from another event (its
    idTags are already hashed, longer than OCPP allows a plaintext; it was checked then).
    """
    charger = charger or (CHARGER if version == "1.6" else CHARGER_201)
    token = payload.get("idToken")
    hashed = tag_hash_of(payload.get("idTag")) or (isinstance(token, dict) and tag_hash_of(token.get("idToken")))
    if not raw and not hashed:
        get_validator(2, action, version).validate(payload)
    return ChargerEvent(charger, version, action, message_id or f"m{next(_ids)}", payload, ingress, T0_MS)


def iso(ms: int) -> str:
    """RFC 3339 text for a ms timestamp (test-side, independent of the ledger's formatter)."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def check_reply(event: ChargerEvent, reply: dict[str, Any] | None) -> None:
    """The reply validates against the ocpp package's call_result schema for the action and version."""
    assert reply is not None, f"{event.action} got no reply"
    get_validator(3, event.action, event.ocpp_version).validate(reply)


class World:
    """A ledger and a chain, driven block by block with a 1 s block clock."""

    def __init__(self, params: LedgerParams | None = None) -> None:
        self.ledger = Ledger(params)
        self.chain = make_chain()
        self.now_ms = T0_MS

    def block(self, *events: ChargerEvent, advance_ms: int = BLOCK_MS) -> BlockOutcome:
        ctx = BlockContext(self.ledger.height + 1, self.now_ms, 100 + self.ledger.height, b"\xee" * 32)
        self.now_ms += advance_ms
        outcome = self.ledger.apply_block(ctx, self.chain, list(events))
        for event, result in zip(events, outcome.results, strict=True):
            if result.error_code is None:
                check_reply(event, result.reply)
        return outcome

    def one(self, event: ChargerEvent, **kwargs: Any) -> dict[str, Any]:
        """Apply one event in its own block and return its (schema-checked) reply."""
        result = self.block(event, **kwargs).results[0]
        assert result.error_code is None, result.error_code
        assert result.reply is not None
        return result.reply


def start16(connector: int = 1, tag: str = "TAG-OK", meter: int = 1_000, at_ms: int = T0_MS) -> ChargerEvent:
    return ev("StartTransaction", {"connectorId": connector, "idTag": tag, "meterStart": meter, "timestamp": iso(at_ms)})


def stop16(tx: int, meter: int, at_ms: int, **extra: Any) -> ChargerEvent:
    return ev("StopTransaction", {"transactionId": tx, "meterStop": meter, "timestamp": iso(at_ms), **extra})


def tx_event(event_type: str, tx: str, *, at_ms: int = T0_MS, seq: int = 0, evse: int | None = 1,
             tag: str | None = None, wh: float | int | None = None, **extra: Any) -> ChargerEvent:
    """A 2.0.1 TransactionEvent."""
    payload: dict[str, Any] = {
        "eventType": event_type,
        "timestamp": iso(at_ms),
        "triggerReason": "Authorized" if tag else "MeterValuePeriodic",
        "seqNo": seq,
        "transactionInfo": {"transactionId": tx},
        **extra,
    }
    if evse is not None:
        payload["evse"] = {"id": evse, "connectorId": 1}
    if tag is not None:
        payload["idToken"] = {"idToken": tag, "type": "ISO14443"}
    if wh is not None:
        payload["meterValue"] = [{"timestamp": iso(at_ms), "sampledValue": [
            {"value": wh, "measurand": "Energy.Active.Import.Register"}]}]
    return ev("TransactionEvent", payload, version="2.0.1")
