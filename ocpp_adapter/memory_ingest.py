"""An in-memory `Ingest`: decides replies locally, for running the adapter alone and tests.

It answers every charger-initiated action the adapter handles with a schema-valid reply:
boot accepted with a heartbeat interval, current time, idTag authorization against a
configured list, increasing transaction ids. Idempotent by `event.dedup_key` (bounded).
The node replaces it with its ledger-backed Ingest, which answers only after commit.
"""

from __future__ import annotations

import datetime
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from ocpp_adapter.bounded import LruMap
from ocpp_adapter.events import ChargerEvent, hashed_id_tag
from ocpp_adapter.ingest import IngestRejected, IngestResult


def utc_timestamp(now: datetime.datetime | None = None) -> str:
    """RFC 3339 UTC time with milliseconds, e.g. 2026-01-02T03:04:05.678Z."""
    moment = now or datetime.datetime.now(datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class MemoryIngest:
    """Replies decided in memory. `id_tags=None` accepts every idTag (development)."""

    def __init__(
        self,
        *,
        id_tags: Iterable[str] | None = None,
        heartbeat_interval: int = 300,
        max_remembered: int = 100_000,
        keep_events: int = 10_000,
        clock: Callable[[], str] = utc_timestamp,
    ) -> None:
        # events carry idTags only in hashed form (ocpp_adapter/events.py): compare those
        self.id_tags = None if id_tags is None else frozenset(hashed_id_tag(tag) for tag in id_tags)
        self.heartbeat_interval = heartbeat_interval
        self.clock = clock
        self._replies: LruMap[bytes, IngestResult] = LruMap(max_remembered)
        self._transaction_ids = itertools.count(1)
        self.events: deque[ChargerEvent] = deque(maxlen=keep_events)
        self.submitted = 0
        self.applied = 0
        self._handlers: dict[tuple[str, str], Callable[[dict[str, Any]], dict[str, Any]]] = {
            ("1.6", "BootNotification"): self._boot,
            ("1.6", "Heartbeat"): self._heartbeat,
            ("1.6", "Authorize"): lambda p: {"idTagInfo": self._id_tag_info(p["idTag"])},
            ("1.6", "StartTransaction"): self._start_transaction,
            ("1.6", "StopTransaction"): self._stop_transaction,
            ("1.6", "DataTransfer"): lambda p: {"status": "UnknownVendorId"},
            ("2.0.1", "BootNotification"): self._boot,
            ("2.0.1", "Heartbeat"): self._heartbeat,
            ("2.0.1", "Authorize"): lambda p: {"idTokenInfo": self._id_token_info(p["idToken"])},
            ("2.0.1", "TransactionEvent"): self._transaction_event,
        }
        for version, action in (
            ("1.6", "StatusNotification"), ("1.6", "MeterValues"),
            ("1.6", "FirmwareStatusNotification"), ("1.6", "DiagnosticsStatusNotification"),
            ("2.0.1", "StatusNotification"), ("2.0.1", "MeterValues"), ("2.0.1", "NotifyReport"),
            ("2.0.1", "NotifyEvent"), ("2.0.1", "FirmwareStatusNotification"),
            ("2.0.1", "SecurityEventNotification"),
        ):
            self._handlers[(version, action)] = lambda p: {}

    def handles(self, version: str, action: str) -> bool:
        return (version, action) in self._handlers

    async def submit(self, event: ChargerEvent) -> IngestResult:
        """Decide the reply for `event`; a repeat of the same charger message gets the same."""
        self.submitted += 1
        key = event.dedup_key
        known = self._replies.get(key)
        if known is not None:
            return IngestResult(known.reply, known.event_id, None, True, known.notes)
        handler = self._handlers.get((event.ocpp_version, event.action))
        if handler is None:
            raise IngestRejected(f"no rule for OCPP {event.ocpp_version} {event.action}")
        reply = handler(event.payload)
        result = IngestResult(reply=reply, event_id=event.event_id)
        self._replies.put(key, result)
        self.events.append(event)
        self.applied += 1
        return result

    def _accepted(self, token: str) -> bool:
        return self.id_tags is None or token in self.id_tags

    def _id_tag_info(self, id_tag: str) -> dict[str, Any]:
        return {"status": "Accepted" if self._accepted(id_tag) else "Invalid"}

    def _id_token_info(self, id_token: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Accepted" if self._accepted(id_token["idToken"]) else "Invalid"}

    def _boot(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Accepted", "currentTime": self.clock(), "interval": self.heartbeat_interval}

    def _heartbeat(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"currentTime": self.clock()}

    def _start_transaction(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"transactionId": next(self._transaction_ids), "idTagInfo": self._id_tag_info(payload["idTag"])}

    def _stop_transaction(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"idTagInfo": self._id_tag_info(payload["idTag"])} if "idTag" in payload else {}

    def _transaction_event(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"idTokenInfo": self._id_token_info(payload["idToken"])} if "idToken" in payload else {}
